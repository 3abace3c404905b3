//! `[auth]`: who may call without a key, and which routes such a caller may use.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::check::route_set;
use super::error::ConfigError;
use crate::routes::{Route, RouteTable};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AuthConfig {
    pub(crate) allow_anonymous: bool,
    /// With `allow_anonymous` and `[[clients]]`: the only routes a caller without a key may use.
    pub(crate) anonymous_routes: Vec<String>,
}

impl AuthConfig {
    /// `anonymous_routes` as routes of `table`; an unknown name is an error naming it.
    pub(super) fn resolve(&self, table: &RouteTable) -> Result<BTreeSet<Route>, ConfigError> {
        route_set(table, "auth.anonymous_routes", &self.anonymous_routes)
    }
}
