//! One route's cache policy as the config file writes it (`[cache.routes."disk.info"]`): plain
//! data, apart from `policy` (which resolves it against the route table) so that the route table
//! can carry a route's written policy without depending on the cache's resolution of it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration;

/// One route's policy as written; every field falls back to the route's built-in default.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoutePolicyConfig {
    pub(crate) enabled: Option<bool>,
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) ttl: Option<Duration>,
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) stale_while_revalidate: Option<Duration>,
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) stale_if_error: Option<Duration>,
    /// `disk.info` only: a shorter TTL for disks in these states, e.g. `{ "1" = "1s" }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) status_ttl: Option<BTreeMap<String, String>>,
}

mod opt_duration {
    use super::{Duration, duration};

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        duration::deserialize(d).map(Some)
    }

    pub(super) fn serialize<S: serde::Serializer>(
        v: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }
}
