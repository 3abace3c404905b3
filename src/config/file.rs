//! The config file's shape, section by section, as it is read (before the environment and the
//! flags are applied), and where it is looked for by default.

use serde::{Deserialize, Serialize};

use super::accounts::AccountConfig;
use super::admin::AdminConfig;
use super::auth::AuthConfig;
use super::clients::ClientConfig;
use super::ledger::LedgerConfig;
use super::log::LogConfig;
use super::redis::RedisConfig;
use super::server::ServerConfig;
use super::telemetry::TelemetryConfig;
use super::token::TokenConfig;
use super::upstream::UpstreamConfig;
use super::webhooks::WebhookConfig;
use crate::cache::policy::CacheConfig;
use crate::protect::policy::CreateConfig;
use crate::routes::RouteConfig;

/// Where `serve` and `check-config` look when no `--config` is given.
pub const DEFAULT_CONFIG_PATH: &str = "config/gateway.toml";

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub(crate) auth: AuthConfig,
    pub(crate) token: TokenConfig,
    pub(crate) log: LogConfig,
    pub(crate) admin: AdminConfig,
    pub(crate) cache: CacheConfig,
    pub(crate) create: CreateConfig,
    pub(crate) ledger: LedgerConfig,
    pub(crate) telemetry: TelemetryConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) redis: Option<RedisConfig>,
    pub clients: Vec<ClientConfig>,
    pub(crate) accounts: Vec<AccountConfig>,
    /// Upstream endpoints added by configuration (`[[routes]]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) routes: Vec<RouteConfig>,
    /// Receivers of the gateway's notifications (`[[webhooks]]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) webhooks: Vec<WebhookConfig>,
}
