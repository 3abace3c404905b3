//! Typed settings: the TOML file, then the environment, then command-line flags.
//!
//! Everything is parsed once, at start, into the types below; unknown keys and bad values are errors
//! that name the key. Secrets (upstream uuid, secret and token) live in [`Secret`], whose `Debug` and
//! `Serialize` print a mask, so `check-config` and logs can never show them.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cache::policy::{CacheConfig, CacheSettings};
use crate::protect::policy::{CreateConfig, CreateSettings};
use crate::routes::{Route, RouteConfig, RouteTable};
use crate::tls::TlsFiles;

/// The environment variables of the default account's credentials (CONTRACT.md, "Configuration").
pub const ENV_UUID: &str = "FINOVY_UUID";
pub const ENV_SECRET: &str = "FINOVY_SECRET";
pub(crate) const ENV_TOKEN: &str = "FINOVY_TOKEN";
/// The same credentials read from files (Kubernetes Secret volumes), re-read on reload.
pub(crate) const ENV_UUID_FILE: &str = "FINOVY_UUID_FILE";
pub(crate) const ENV_SECRET_FILE: &str = "FINOVY_SECRET_FILE";
pub(crate) const ENV_TOKEN_FILE: &str = "FINOVY_TOKEN_FILE";
pub(crate) const ENV_REDIS_URL: &str = "FGW_REDIS_URL";
/// A file holding the Redis password (a mounted Secret), put into `[redis] url` at load.
pub(crate) const ENV_REDIS_PASSWORD_FILE: &str = "FGW_REDIS_PASSWORD_FILE";

/// Where `serve` and `check-config` look when no `--config` is given.
pub const DEFAULT_CONFIG_PATH: &str = "config/gateway.toml";

pub(crate) use crate::config_error::ConfigError;
use crate::config_error::invalid;
pub(crate) use crate::duration;
pub(crate) use crate::secret::Secret;

// === the file's shape ===

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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) redis: Option<RedisConfig>,
    pub clients: Vec<ClientConfig>,
    pub(crate) accounts: Vec<AccountConfig>,
    /// Upstream endpoints added by configuration (`[[routes]]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Largest request body accepted, in bytes (413 beyond).
    pub(crate) max_body_bytes: usize,
    /// Largest request head (request line and headers), in bytes (431 beyond).
    pub(crate) max_header_bytes: usize,
    /// Whole-request deadline, upstream call included (504 beyond).
    #[serde(with = "duration")]
    pub(crate) request_timeout: Duration,
    /// Requests handled at once; more are answered 503 at once instead of queueing.
    pub(crate) max_concurrency: usize,
    /// How long a SIGTERM waits for in-flight requests before exiting anyway.
    #[serde(with = "duration")]
    pub(crate) drain_timeout: Duration,
    /// A request body must arrive within this once its head is accepted (408 beyond).
    #[serde(with = "duration")]
    pub(crate) body_timeout: Duration,
    /// One client's share of the requests in flight (503 beyond); default in
    /// [`Settings::max_inflight_per_client`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_inflight_per_client: Option<usize>,
    /// Open data-plane connections; at the cap a new one takes the place of the longest-idle one.
    pub(crate) max_connections: usize,
    /// One source address's (an IPv6 /64's) share of the open connections, on either listener.
    pub(crate) max_connections_per_ip: usize,
    /// A connection must complete its TLS handshake and its first request head within this.
    #[serde(with = "duration")]
    pub(crate) handshake_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/1 and h2).
    #[serde(with = "duration")]
    pub(crate) idle_timeout: Duration,
    /// h2: streams a client may open at once on one connection.
    pub(crate) h2_max_concurrent_streams: u32,
    /// h2: how often an idle connection is pinged, and how long the answer may take.
    #[serde(with = "duration")]
    pub(crate) h2_keep_alive_interval: Duration,
    #[serde(with = "duration")]
    pub(crate) h2_keep_alive_timeout: Duration,
    /// TLS on `listen`: certificate chain and private key (PEM); unset = plain HTTP and h2c.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tls_cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tls_key_file: Option<PathBuf>,
    /// With TLS: clients must present a certificate signed by a CA of this PEM file (mTLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tls_client_ca_file: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: ([0, 0, 0, 0], 8080).into(),
            admin_listen: ([0, 0, 0, 0], 9090).into(),
            max_body_bytes: 64 * 1024,
            max_header_bytes: 16 * 1024,
            request_timeout: Duration::from_secs(30),
            max_concurrency: 1024,
            drain_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(10),
            max_inflight_per_client: None,
            max_connections: 10_000,
            max_connections_per_ip: 256,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            h2_max_concurrent_streams: 100,
            h2_keep_alive_interval: Duration::from_secs(20),
            h2_keep_alive_timeout: Duration::from_secs(20),
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    pub base_url: String,
    #[serde(with = "duration")]
    pub(crate) connect_timeout: Duration,
    /// From sending the request to the end of the answer's body.
    #[serde(with = "duration")]
    pub(crate) timeout: Duration,
    #[serde(with = "duration")]
    pub(crate) pool_idle_timeout: Duration,
    pub(crate) pool_max_idle_per_host: usize,
    /// Largest upstream answer body read, in bytes; a larger one is refused (502, code 503).
    pub(crate) max_answer_bytes: usize,
    /// Egress proxy (`http://[user:pass@]host:port`), reached with HTTP CONNECT; unset =
    /// `HTTPS_PROXY` / `NO_PROXY` from the environment; `""` = direct, whatever the environment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) proxy: Option<ProxyUrl>,
    /// PEM file of extra CA certificates trusted for the upstream, beside the public roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ca_file: Option<PathBuf>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            base_url: "https://client.xuandashi.com".into(),
            connect_timeout: Duration::from_secs(3),
            timeout: Duration::from_secs(15),
            pool_idle_timeout: Duration::from_secs(60),
            pool_max_idle_per_host: 64,
            max_answer_bytes: 1024 * 1024,
            proxy: None,
            ca_file: None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AuthConfig {
    pub(crate) allow_anonymous: bool,
    /// With `allow_anonymous` and `[[clients]]`: the only routes a caller without a key may use.
    pub(crate) anonymous_routes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct TokenConfig {
    /// Refresh this long before the token expires (at most a quarter of its lifetime).
    #[serde(with = "duration")]
    pub(crate) refresh_before: Duration,
    /// First wait after a failed `getToken`; doubles up to `retry_max`, with jitter.
    #[serde(with = "duration")]
    pub(crate) retry_min: Duration,
    #[serde(with = "duration")]
    pub(crate) retry_max: Duration,
    /// At most one `getToken` per account in this interval, whatever the upstream answers.
    #[serde(with = "duration")]
    pub(crate) min_refresh_interval: Duration,
    /// The upstream's `effectiveTime` is clamped to `[min_lifetime, max_lifetime]`.
    #[serde(with = "duration")]
    pub(crate) min_lifetime: Duration,
    #[serde(with = "duration")]
    pub(crate) max_lifetime: Duration,
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            refresh_before: Duration::from_secs(5 * 60),
            retry_min: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
            min_refresh_interval: Duration::from_secs(5),
            min_lifetime: Duration::from_secs(60),
            max_lifetime: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter such as `info` or `finovy_gateway=debug`; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AdminConfig {
    /// SHA-256 (hex) of the admin key guarding `/admin/*`; unset = those endpoints are disabled.
    pub(crate) key_sha256: Option<String>,
    /// TLS on `admin_listen`, as the data plane's `[server] tls_*` keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tls_cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tls_key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tls_client_ca_file: Option<PathBuf>,
}

/// Shared mode: replicas share the token, the cache, the create limits and records through Redis.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    #[serde(serialize_with = "mask_url_password")]
    pub url: String,
    /// Every key and channel of the gateway starts with this (several fleets can share one Redis).
    pub prefix: String,
    /// Longest wait for one Redis command; past it the command counts as failed.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Lifetime of a fleet lock (cache fill, token refresh): a dead holder's lock frees itself after it.
    #[serde(with = "duration")]
    pub lock_ttl: Duration,
    /// What creates do while Redis is down: `refuse` (503) or `local` (this replica's own protection).
    pub creates_when_down: CreatesWhenDown,
    /// PEM file of the CA that signed the Redis server's certificate (`rediss://`, a private CA);
    /// unset = the public web roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// A file holding the password of the URL's user (a mounted Secret), so that the URL itself
    /// holds none; `FGW_REDIS_PASSWORD_FILE` wins over it. Read at start and on reload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Whether `/readyz` fails while Redis does not answer. Off, a fleet whose Redis died stays
    /// in its load balancer and goes on serving reads from each replica's own state.
    pub required_for_readiness: bool,
    /// Whether creates go on while Redis's `maxmemory-policy` could evict records (anything but
    /// `noeviction`). Off, they are refused: an evicted record makes its retry a new purchase.
    pub allow_eviction_policy: bool,
}

/// The URL may hold a password: `Debug` shows it masked, as `check-config` does.
impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &mask_url(&self.url))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("lock_ttl", &self.lock_ttl)
            .field("creates_when_down", &self.creates_when_down)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("password_file", &self.password_file)
            .field("required_for_readiness", &self.required_for_readiness)
            .field("allow_eviction_policy", &self.allow_eviction_policy)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CreatesWhenDown {
    /// 503: without the shared records a duplicate purchase cannot be ruled out.
    Refuse,
    /// Fall back to this replica's own records and limits.
    Local,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: String::new(),
            prefix: "fgw:".into(),
            timeout: Duration::from_millis(250),
            lock_ttl: Duration::from_secs(10),
            creates_when_down: CreatesWhenDown::Refuse,
            tls_ca_file: None,
            password_file: None,
            required_for_readiness: true,
            allow_eviction_policy: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub name: String,
    pub key_sha256: String,
    #[serde(default = "default_account_name")]
    pub account: String,
    /// Route names this client may call (`disk.info`, ...); absent = every route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<String>>,
    /// May lease the account's upstream token at `GET /_gateway/token`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub token_lease: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccountConfig {
    pub(crate) name: String,
    pub(crate) base_url: Option<String>,
    pub(crate) uuid_env: Option<String>,
    pub(crate) secret_env: Option<String>,
    pub(crate) token_env: Option<String>,
    /// Files holding the credentials instead (a mounted Secret); re-read on reload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) uuid_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) secret_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) token_file: Option<PathBuf>,
    /// This account's egress proxy and extra CAs, instead of `[upstream] proxy` / `ca_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) proxy: Option<ProxyUrl>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ca_file: Option<PathBuf>,
}

/// A proxy URL, which may carry credentials: `Debug` and `Serialize` mask its password.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub(crate) struct ProxyUrl(String);

impl ProxyUrl {
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", mask_url(&self.0))
    }
}

impl Serialize for ProxyUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&mask_url(&self.0))
    }
}

/// The conventional proxy environment (curl's names), read when the file names no proxy.
const ENV_HTTPS_PROXY: [&str; 2] = ["HTTPS_PROXY", "https_proxy"];
const ENV_NO_PROXY: [&str; 2] = ["NO_PROXY", "no_proxy"];

/// How an account's upstream calls leave this host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Egress {
    /// Every upstream connection goes through this proxy, with HTTP CONNECT.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) proxy: Option<ProxyUrl>,
    /// The proxy came from the environment: it serves `https://` upstreams only, except the
    /// hosts of `no_proxy`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) from_env: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) no_proxy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ca_file: Option<PathBuf>,
}

fn default_account_name() -> String {
    DEFAULT_ACCOUNT.into()
}

pub const DEFAULT_ACCOUNT: &str = "default";

/// The name anonymous calls carry in the access log.
pub(crate) const ANONYMOUS: &str = "anonymous";

/// Whether `name` may name a client or an account: letters, digits, `.`, `_` and `-`, at least
/// one. Record keys join names with `|` (`idem|account|client|route|key`), so a name holding
/// one could reach another client's records.
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `name` as a client's or an account's name; the error names `key`.
fn check_name(key: String, name: &str) -> Result<(), ConfigError> {
    if is_name(name) {
        return Ok(());
    }
    let shown: String = name.chars().take(64).collect();
    Err(invalid(
        key,
        format!("{shown:?}: expected a name of letters, digits, `.`, `_` and `-`"),
    ))
}

fn mask_url_password<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&mask_url(url))
}

/// `redis://user:pass@host` → `redis://user:***@host`; a lone user part (`http://TOKEN@proxy`,
/// which some proxies take as the credential) → `http://***@proxy`.
pub(crate) fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The userinfo ends at the authority's last `@`: a password may hold `@` itself.
    let authority = rest.find('/').map_or(rest, |i| &rest[..i]);
    match authority.rsplit_once('@') {
        Some((userinfo, _)) => {
            let shown = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => "***".to_string(),
            };
            format!("{scheme}://{shown}@{}", &rest[userinfo.len() + 1..])
        }
        None => url.to_string(),
    }
}

// === the resolved settings ===

/// How an account gets its upstream token.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub(crate) enum Credentials {
    /// Trade uuid and secret at `getToken`.
    Exchange { uuid: Secret, secret: Secret },
    /// A token kept by another system.
    Fixed { token: Secret },
    /// None set: `serve` refuses to start.
    Missing { hint: String },
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Account {
    pub(crate) name: String,
    pub(crate) base_url: String,
    pub(crate) credentials: Credentials,
    pub(crate) egress: Egress,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Client {
    pub(crate) name: String,
    #[serde(serialize_with = "hex_digest")]
    pub(crate) key_sha256: [u8; 32],
    pub(crate) account: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) routes: Option<BTreeSet<Route>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) token_lease: bool,
}

fn hex_digest<S: serde::Serializer>(d: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(d))
}

/// Everything the gateway runs with, validated.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub(crate) server: ServerConfig,
    pub(crate) upstream: UpstreamConfig,
    pub(crate) auth: AuthConfig,
    pub(crate) token: TokenConfig,
    pub log: LogConfig,
    pub(crate) cache: CacheSettings,
    pub(crate) create: CreateSettings,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "mask_opt")]
    pub(crate) admin_key_sha256: Option<[u8; 32]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) redis: Option<RedisConfig>,
    pub(crate) accounts: Vec<Account>,
    pub(crate) clients: Vec<Client>,
    /// Every route: the compiled ones and `[[routes]]`.
    #[serde(
        skip_serializing_if = "crate::routes::no_configured",
        serialize_with = "crate::routes::serialize_configured"
    )]
    pub(crate) routes: Arc<RouteTable>,
    /// `[auth] anonymous_routes`, checked against the route table.
    #[serde(skip)]
    pub(crate) anonymous_routes: BTreeSet<Route>,
    /// TLS of the data-plane and admin listeners (`[server] tls_*`, `[admin] tls_*`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) listen_tls: Option<TlsFiles>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) admin_tls: Option<TlsFiles>,
}

fn mask_opt<S: serde::Serializer>(_: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("*** (set)")
}

/// Command-line values that override the file.
#[derive(Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub upstream: Option<String>,
    pub redis: Option<String>,
    pub log_format: Option<LogFormat>,
}

impl fmt::Debug for Overrides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Overrides")
            .field("listen", &self.listen)
            .field("admin_listen", &self.admin_listen)
            .field("upstream", &self.upstream)
            .field("redis", &self.redis.as_deref().map(mask_url))
            .field("log_format", &self.log_format)
            .finish()
    }
}

/// Reads the environment; a trait-free function pointer so tests can pass their own.
pub(crate) type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// ` at line L, column C (table.key)` for a byte offset into a config file's text: the key is
/// what stands before `=` on that line, under the last table header above it.
fn place(text: &str, offset: usize) -> String {
    let offset = (0..=offset.min(text.len()))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let (line, column) = (before.matches('\n').count() + 1, offset - line_start + 1);
    let this_line = text[line_start..].lines().next().unwrap_or("");
    let key = this_line
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim());
    match (table, key) {
        (Some(t), Some(k)) => format!(" at line {line}, column {column} ({t}.{k})"),
        (None, Some(k)) => format!(" at line {line}, column {column} ({k})"),
        _ => format!(" at line {line}, column {column}"),
    }
}

impl FileConfig {
    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        // The parser's own text quotes the offending line, which may hold a password (a Redis
        // or proxy URL): say where it is and which key, never the value.
        toml::from_str(text).map_err(|e: toml::de::Error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: format!(
                "TOML error{}: {}",
                e.span().map_or(String::new(), |s| place(text, s.start)),
                e.message().trim_end()
            ),
        })
    }

    /// `Some(path)`: that file must exist. `None`: `config/gateway.toml` when present, else defaults.
    pub fn load(path: Option<&Path>) -> Result<FileConfig, ConfigError> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        match crate::files::read_text(&path, crate::files::CONFIG_FILE_MAX) {
            Ok(text) => FileConfig::parse(&text, &path),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                Ok(FileConfig::default())
            }
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }
}

impl Settings {
    /// Validates the file, then applies the environment and the flags.
    pub fn resolve(
        file: FileConfig,
        overrides: &Overrides,
        env: EnvLookup<'_>,
    ) -> Result<Settings, ConfigError> {
        Settings::resolve_with(file, overrides, env, true)
    }

    /// [`Settings::resolve`] for a reload: the listeners' certificate files are not loaded here
    /// (a reload loads them itself and keeps the old certificate when they do not load), so a
    /// half-done certificate rotation does not hold back the rest of the file.
    pub(crate) fn resolve_for_reload(
        file: FileConfig,
        overrides: &Overrides,
        env: EnvLookup<'_>,
    ) -> Result<Settings, ConfigError> {
        Settings::resolve_with(file, overrides, env, false)
    }

    fn resolve_with(
        file: FileConfig,
        overrides: &Overrides,
        env: EnvLookup<'_>,
        load_tls: bool,
    ) -> Result<Settings, ConfigError> {
        let mut server = file.server;
        if let Some(a) = overrides.listen {
            server.listen = a;
        }
        if let Some(a) = overrides.admin_listen {
            server.admin_listen = a;
        }
        let mut upstream = file.upstream;
        if let Some(u) = &overrides.upstream {
            upstream.base_url.clone_from(u);
        }
        let mut log = file.log;
        if let Some(f) = overrides.log_format {
            log.format = f;
        }
        check_positive("server.max_body_bytes", server.max_body_bytes)?;
        check_positive("server.max_concurrency", server.max_concurrency)?;
        if server.max_header_bytes < 8192 {
            return Err(invalid(
                "server.max_header_bytes",
                "expected at least 8192 bytes",
            ));
        }
        check_nonzero("server.request_timeout", server.request_timeout)?;
        check_nonzero("server.body_timeout", server.body_timeout)?;
        check_nonzero("server.idle_timeout", server.idle_timeout)?;
        check_nonzero("server.handshake_timeout", server.handshake_timeout)?;
        check_positive(
            "server.max_connections_per_ip",
            server.max_connections_per_ip,
        )?;
        check_nonzero(
            "server.h2_keep_alive_interval",
            server.h2_keep_alive_interval,
        )?;
        check_nonzero("server.h2_keep_alive_timeout", server.h2_keep_alive_timeout)?;
        check_positive(
            "server.h2_max_concurrent_streams",
            server.h2_max_concurrent_streams as usize,
        )?;
        if let Some(n) = server.max_inflight_per_client {
            check_positive("server.max_inflight_per_client", n)?;
        }
        // The drain takes every connection permit at once, which tokio counts in a u32.
        if !(1..=1_000_000).contains(&server.max_connections) {
            return Err(invalid(
                "server.max_connections",
                "expected a number from 1 to 1000000",
            ));
        }
        check_nonzero("upstream.connect_timeout", upstream.connect_timeout)?;
        check_nonzero("upstream.timeout", upstream.timeout)?;
        check_positive("upstream.max_answer_bytes", upstream.max_answer_bytes)?;
        if file.token.retry_min > file.token.retry_max {
            return Err(invalid(
                "token.retry_min",
                "must not exceed token.retry_max",
            ));
        }
        if file.token.min_lifetime > file.token.max_lifetime {
            return Err(invalid(
                "token.min_lifetime",
                "must not exceed token.max_lifetime",
            ));
        }
        check_base_url("upstream.base_url", &upstream.base_url)?;
        tracing_subscriber::EnvFilter::try_new(&log.level).map_err(|e| {
            invalid(
                "log.level",
                format!("expected a filter such as \"info\": {e}"),
            )
        })?;

        let redis = resolve_redis(file.redis, overrides, env)?;

        let admin_key_sha256 = file
            .admin
            .key_sha256
            .as_deref()
            .map(|d| parse_digest("admin.key_sha256", d))
            .transpose()?;

        let listen_tls = resolve_tls(
            "server",
            &server.tls_cert_file,
            &server.tls_key_file,
            &server.tls_client_ca_file,
            load_tls,
        )?;
        let admin_tls = resolve_tls(
            "admin",
            &file.admin.tls_cert_file,
            &file.admin.tls_key_file,
            &file.admin.tls_client_ca_file,
            load_tls,
        )?;

        let routes = Arc::new(RouteTable::with_configured(&file.routes)?);
        let cache = file.cache.resolve(&routes)?;
        let create = file.create.resolve(&routes)?;
        let accounts = resolve_accounts(&file.accounts, &upstream, env)?;
        let clients = resolve_clients(&file.clients, &accounts, &routes)?;
        let anonymous_routes = route_set(
            &routes,
            "auth.anonymous_routes",
            &file.auth.anonymous_routes,
        )?;

        Ok(Settings {
            server,
            upstream,
            auth: file.auth,
            token: file.token,
            log,
            cache,
            create,
            admin_key_sha256,
            redis,
            accounts,
            clients,
            routes,
            anonymous_routes,
            listen_tls,
            admin_tls,
        })
    }

    /// One client's share of `max_concurrency`: as configured, else a quarter of it. With no
    /// `[[clients]]` every caller is the one anonymous caller, so it may use all of it.
    pub(crate) fn max_inflight_per_client(&self) -> usize {
        match self.server.max_inflight_per_client {
            Some(n) => n,
            None if self.clients.is_empty() => self.server.max_concurrency,
            None => (self.server.max_concurrency / 4).max(1),
        }
    }

    /// Protected mode (CONTRACT.md): without clients, anonymous calls only on loopback or when allowed.
    pub(crate) fn anonymous_allowed(&self) -> bool {
        self.auth.allow_anonymous
            || (self.clients.is_empty() && self.server.listen.ip().is_loopback())
    }

    /// Why `serve` cannot start with these settings, if it cannot.
    pub fn serve_blockers(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.clients.is_empty() && !self.anonymous_allowed() {
            out.push(format!(
                "protected mode: no [[clients]] are configured and listen = {} is not a loopback address; \
                 add a [[clients]] entry (see `finovy-gateway keygen`), listen on 127.0.0.1, \
                 or set [auth] allow_anonymous = true",
                self.server.listen
            ));
        }
        for a in &self.accounts {
            if let Credentials::Missing { hint } = &a.credentials {
                out.push(format!(
                    "account {:?} has no upstream credentials: {hint}",
                    a.name
                ));
            }
        }
        out
    }

    /// The effective settings as TOML, every secret masked (for `check-config`).
    pub fn to_masked_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
    }
}

/// The flag, then the environment, then the file; the rest of `[redis]` applies whichever gave the URL.
fn resolve_redis(
    file: Option<RedisConfig>,
    overrides: &Overrides,
    env: EnvLookup<'_>,
) -> Result<Option<RedisConfig>, ConfigError> {
    let from_file = file
        .as_ref()
        .map(|r| r.url.clone())
        .filter(|u| !u.is_empty());
    let Some(url) = overrides
        .redis
        .clone()
        .or_else(|| env(ENV_REDIS_URL))
        .or(from_file)
    else {
        return Ok(None);
    };
    let mut cfg = file.unwrap_or_default();
    let password_file = match env(ENV_REDIS_PASSWORD_FILE) {
        Some(path) => Some((PathBuf::from(path), ENV_REDIS_PASSWORD_FILE)),
        None => cfg
            .password_file
            .clone()
            .map(|p| (p, "redis.password_file")),
    };
    let url = match password_file {
        Some((path, key)) => {
            let source = CredentialSource {
                var: "",
                file: Some(path),
                file_key: key.to_string(),
            };
            let password = source.read(env)?.unwrap_or_default();
            with_password(&url, &password).map_err(|e| invalid(key, e))?
        }
        None => url,
    };
    crate::fleet::conn::check_url(&url).map_err(|e| invalid("redis.url", e))?;
    cfg.url = url;
    if cfg.prefix.is_empty()
        || cfg
            .prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid(
            "redis.prefix",
            "expected a non-empty prefix without spaces",
        ));
    }
    check_nonzero("redis.timeout", cfg.timeout)?;
    if let Some(ca) = &cfg.tls_ca_file
        && let Err(e) = crate::files::read_limited(ca, crate::files::SMALL_FILE_MAX)
    {
        return Err(invalid(
            "redis.tls_ca_file",
            format!("cannot read {}: {e}", ca.display()),
        ));
    }
    if cfg.lock_ttl < Duration::from_millis(100) {
        return Err(invalid("redis.lock_ttl", "expected at least 100ms"));
    }
    Ok(Some(cfg))
}

/// `url` with `password` in its userinfo (after the user it names, if any), percent-encoded.
/// A URL that holds a password already is refused: of two sources, one would silently win.
fn with_password(url: &str, password: &str) -> Result<String, String> {
    let (scheme, rest) = url.split_once("://").ok_or("expected scheme://...")?;
    if scheme == "unix" {
        return Err("a unix:// URL takes no password file".into());
    }
    let authority = rest.find('/').map_or(rest, |i| &rest[..i]);
    let (user, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, _)) if userinfo.contains(':') => {
            return Err("[redis] url holds a password already; keep one of the two".into());
        }
        Some((userinfo, _)) => (userinfo, &rest[userinfo.len() + 1..]),
        None => ("", rest),
    };
    let encoded: String = password
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    Ok(format!("{scheme}://{user}:{encoded}@{hosts}"))
}

/// Route names (an allow-list) as routes; an unknown name is an error naming `key`.
fn route_set(
    table: &RouteTable,
    key: &str,
    names: &[String],
) -> Result<BTreeSet<Route>, ConfigError> {
    names
        .iter()
        .map(|n| table.by_name(n).ok_or_else(|| table.unknown(key.into(), n)))
        .collect()
}

fn check_positive(key: &str, v: usize) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(invalid(key, "expected a number greater than 0"));
    }
    Ok(())
}

fn check_nonzero(key: &str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(invalid(key, "expected a duration greater than 0"));
    }
    Ok(())
}

fn check_base_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let uri: http::Uri = url.parse().map_err(|_| {
        invalid(
            key,
            format!("expected an http:// or https:// URL, got {url:?}"),
        )
    })?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    if !scheme_ok || uri.host().is_none() || uri.query().is_some() {
        return Err(invalid(
            key,
            format!("expected an http:// or https:// URL without a query, got {url:?}"),
        ));
    }
    Ok(())
}

pub(crate) fn parse_digest(key: &str, text: &str) -> Result<[u8; 32], ConfigError> {
    let bytes = hex::decode(text.trim()).ok().filter(|b| b.len() == 32);
    bytes.and_then(|b| b.try_into().ok()).ok_or_else(|| {
        invalid(
            key,
            "expected 64 lower-case hex characters (a SHA-256 digest; see `finovy-gateway keygen`)",
        )
    })
}

fn resolve_accounts(
    list: &[AccountConfig],
    upstream: &UpstreamConfig,
    env: EnvLookup<'_>,
) -> Result<Vec<Account>, ConfigError> {
    let default_base = upstream.base_url.as_str();
    let default_egress = resolve_egress(
        "upstream",
        upstream.proxy.as_ref(),
        upstream.ca_file.as_ref(),
        env,
    )?;
    let mut accounts = Vec::new();
    // The default account's files are named by the environment, as its variables are.
    let env_file = |name: &str| env(name).map(PathBuf::from);
    if !list.iter().any(|a| a.name == DEFAULT_ACCOUNT) {
        let from = |var, file_var: &'static str| CredentialSource {
            var,
            file: env_file(file_var),
            file_key: file_var.to_string(),
        };
        accounts.push(Account {
            name: DEFAULT_ACCOUNT.into(),
            base_url: default_base.to_string(),
            credentials: credentials(
                env,
                from(ENV_UUID, ENV_UUID_FILE),
                from(ENV_SECRET, ENV_SECRET_FILE),
                from(ENV_TOKEN, ENV_TOKEN_FILE),
            )?,
            egress: default_egress.clone(),
        });
    }
    for (i, a) in list.iter().enumerate() {
        let key = format!("accounts[{i}]");
        check_name(format!("{key}.name"), &a.name)?;
        if accounts.iter().any(|b| b.name == a.name) {
            return Err(invalid(
                format!("{key}.name"),
                format!("account {:?} is defined twice", a.name),
            ));
        }
        let base_url = a
            .base_url
            .clone()
            .unwrap_or_else(|| default_base.to_string());
        check_base_url(&format!("{key}.base_url"), &base_url)?;
        let is_default = a.name == DEFAULT_ACCOUNT;
        let pick = |v: &Option<String>, fallback: &'static str| {
            v.clone().unwrap_or_else(|| {
                if is_default {
                    fallback.to_string()
                } else {
                    String::new()
                }
            })
        };
        let pick_file = |v: &Option<PathBuf>, fallback: &'static str| {
            v.clone()
                .or_else(|| is_default.then(|| env_file(fallback)).flatten())
        };
        let (uuid_env, secret_env, token_env) = (
            pick(&a.uuid_env, ENV_UUID),
            pick(&a.secret_env, ENV_SECRET),
            pick(&a.token_env, ENV_TOKEN),
        );
        let (uuid_file, secret_file, token_file) = (
            pick_file(&a.uuid_file, ENV_UUID_FILE),
            pick_file(&a.secret_file, ENV_SECRET_FILE),
            pick_file(&a.token_file, ENV_TOKEN_FILE),
        );
        let has_uuid = !uuid_env.is_empty() || uuid_file.is_some();
        let has_secret = !secret_env.is_empty() || secret_file.is_some();
        let has_token = !token_env.is_empty() || token_file.is_some();
        if has_uuid != has_secret {
            return Err(invalid(
                key,
                "set both uuid_env (or uuid_file) and secret_env (or secret_file), or token_env (or token_file)",
            ));
        }
        if !has_uuid && !has_token {
            return Err(invalid(
                key,
                "expected uuid_env and secret_env (or uuid_file and secret_file), or token_env (or token_file)",
            ));
        }
        let from = |var: &str, file: Option<PathBuf>, field: &str| CredentialSource {
            var: var.to_string(),
            file,
            file_key: format!("{key}.{field}"),
        };
        let credentials = credentials(
            env,
            from(&uuid_env, uuid_file, "uuid_file"),
            from(&secret_env, secret_file, "secret_file"),
            from(&token_env, token_file, "token_file"),
        )?;
        let egress = resolve_egress(
            &key,
            a.proxy.as_ref().or(upstream.proxy.as_ref()),
            a.ca_file.as_ref().or(upstream.ca_file.as_ref()),
            env,
        )?;
        // The upstream client picks a connection's egress by the upstream's scheme and authority.
        if let Some(other) = accounts
            .iter()
            .find(|b| same_origin(&b.base_url, &base_url) && b.egress != egress)
        {
            return Err(invalid(
                format!("{key}.proxy"),
                format!(
                    "account {:?} reaches the same upstream host as {:?} and must use the same proxy and ca_file",
                    a.name, other.name
                ),
            ));
        }
        accounts.push(Account {
            name: a.name.clone(),
            base_url,
            credentials,
            egress,
        });
    }
    Ok(accounts)
}

fn same_origin(a: &str, b: &str) -> bool {
    match (a.parse::<http::Uri>(), b.parse::<http::Uri>()) {
        (Ok(a), Ok(b)) => a.scheme() == b.scheme() && a.authority() == b.authority(),
        _ => false,
    }
}

/// The proxy named in the file (`""`: none), else the environment's; the CA file must be readable.
fn resolve_egress(
    key: &str,
    proxy: Option<&ProxyUrl>,
    ca_file: Option<&PathBuf>,
    env: EnvLookup<'_>,
) -> Result<Egress, ConfigError> {
    let first = |names: [&str; 2]| {
        names
            .iter()
            .find_map(|n| env(n))
            .filter(|v| !v.trim().is_empty())
    };
    let mut egress = Egress {
        ca_file: ca_file.cloned(),
        ..Egress::default()
    };
    match proxy {
        Some(p) if p.expose().is_empty() => {}
        Some(p) => {
            check_proxy_url(&format!("{key}.proxy"), p.expose())?;
            egress.proxy = Some(p.clone());
        }
        None => {
            if let Some(p) = first(ENV_HTTPS_PROXY) {
                check_proxy_url("HTTPS_PROXY", &p)?;
                egress.proxy = Some(ProxyUrl(p));
                egress.from_env = true;
                egress.no_proxy = first(ENV_NO_PROXY);
                if let Some(list) = &egress.no_proxy {
                    crate::upstream::no_proxy::NoProxy::parse(list)
                        .map_err(|e| invalid("NO_PROXY", e))?;
                }
            }
        }
    }
    if let Some(ca) = &egress.ca_file {
        crate::tls::roots_from(ca, rustls::RootCertStore::empty())
            .map_err(|e| invalid(format!("{key}.ca_file"), e))?;
    }
    Ok(egress)
}

/// An `http://` proxy with a host: the CONNECT is sent in clear to it. Errors show the URL masked.
fn check_proxy_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let masked = mask_url(url);
    let uri: http::Uri = url.parse().map_err(|_| {
        invalid(
            key,
            format!("expected an http:// proxy URL, got {masked:?}"),
        )
    })?;
    let path_ok = matches!(uri.path(), "" | "/") && uri.query().is_none();
    if uri.scheme_str() != Some("http") || uri.host().is_none() || !path_ok {
        return Err(invalid(
            key,
            format!("expected an http://[user:pass@]host:port proxy URL, got {masked:?}"),
        ));
    }
    Ok(())
}

/// A listener's TLS keys: certificate and key together, the client CA only with them; with
/// `load`, the files are loaded here once so that `check-config` finds what `serve` would refuse.
fn resolve_tls(
    section: &str,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    client_ca: &Option<PathBuf>,
    load: bool,
) -> Result<Option<TlsFiles>, ConfigError> {
    let files = match (cert, key) {
        (Some(cert), Some(key)) => TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: client_ca.clone(),
        },
        (None, None) if client_ca.is_none() => return Ok(None),
        (None, None) => {
            return Err(invalid(
                format!("{section}.tls_client_ca_file"),
                "needs tls_cert_file and tls_key_file",
            ));
        }
        (Some(_), None) => {
            return Err(invalid(
                format!("{section}.tls_key_file"),
                "expected with tls_cert_file",
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                format!("{section}.tls_cert_file"),
                "expected with tls_key_file",
            ));
        }
    };
    if load {
        crate::tls::ServerTls::load(files.clone())
            .map_err(|e| invalid(format!("{section}.tls_cert_file"), e))?;
    }
    Ok(Some(files))
}

/// Where one credential comes from: an environment variable (`var`, empty for none) or a file.
struct CredentialSource<V> {
    var: V,
    file: Option<PathBuf>,
    /// What names the file in an error: `FINOVY_SECRET_FILE` or `accounts[1].secret_file`.
    file_key: String,
}

impl<V: AsRef<str>> CredentialSource<V> {
    /// The credential, if set. A file's one trailing newline is not part of it (`echo` and
    /// editors add one); a file that cannot be read, or is empty, is an error naming it.
    fn read(&self, env: EnvLookup<'_>) -> Result<Option<String>, ConfigError> {
        let var = self.var.as_ref();
        let from_env = if var.is_empty() { None } else { env(var) };
        let Some(path) = &self.file else {
            return Ok(from_env);
        };
        if from_env.is_some() {
            return Err(invalid(
                &self.file_key,
                format!("both {var} and this file are set; keep one"),
            ));
        }
        let text = crate::files::read_text(path, crate::files::SMALL_FILE_MAX).map_err(|e| {
            invalid(
                &self.file_key,
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        if text.is_empty() {
            return Err(invalid(
                &self.file_key,
                format!("{} is empty", path.display()),
            ));
        }
        Ok(Some(text.to_string()))
    }

    /// How to set it, for the error of an account without credentials.
    fn hint(&self) -> Option<String> {
        let var = self.var.as_ref();
        match (&self.file, var.is_empty()) {
            (Some(_), _) => Some(self.file_key.clone()),
            (None, true) => None,
            (None, false) => Some(var.to_string()),
        }
    }
}

/// A fixed token wins over a uuid/secret pair, as it is the more deliberate setting.
fn credentials<V: AsRef<str>>(
    env: EnvLookup<'_>,
    uuid: CredentialSource<V>,
    secret: CredentialSource<V>,
    token: CredentialSource<V>,
) -> Result<Credentials, ConfigError> {
    if let Some(token) = token.read(env)? {
        return Ok(Credentials::Fixed {
            token: Secret::new(token),
        });
    }
    match (uuid.read(env)?, secret.read(env)?) {
        (Some(uuid), Some(secret)) => Ok(Credentials::Exchange {
            uuid: Secret::new(uuid),
            secret: Secret::new(secret),
        }),
        _ => {
            let names: Vec<String> = [uuid.hint(), secret.hint()].into_iter().flatten().collect();
            let mut hint = format!("set {}", names.join(" and "));
            if let Some(t) = token.hint() {
                hint.push_str(&format!(", or {t}"));
            }
            Ok(Credentials::Missing { hint })
        }
    }
}

fn resolve_clients(
    list: &[ClientConfig],
    accounts: &[Account],
    table: &RouteTable,
) -> Result<Vec<Client>, ConfigError> {
    let mut clients: Vec<Client> = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let key = format!("clients[{i}]");
        check_name(format!("{key}.name"), &c.name)?;
        // Callers without a key go by this name: records, budgets and logs would mix.
        if c.name == ANONYMOUS {
            return Err(invalid(
                format!("{key}.name"),
                "\"anonymous\" names the callers without a key; choose another name",
            ));
        }
        if clients.iter().any(|d| d.name == c.name) {
            return Err(invalid(
                format!("{key}.name"),
                format!("client {:?} is defined twice", c.name),
            ));
        }
        let digest = parse_digest(&format!("{key}.key_sha256"), &c.key_sha256)?;
        if clients.iter().any(|d| d.key_sha256 == digest) {
            return Err(invalid(
                format!("{key}.key_sha256"),
                "two clients share one key",
            ));
        }
        if !accounts.iter().any(|a| a.name == c.account) {
            let known: Vec<&str> = accounts.iter().map(|a| a.name.as_str()).collect();
            return Err(invalid(
                format!("{key}.account"),
                format!("unknown account {:?}; expected one of {known:?}", c.account),
            ));
        }
        let routes = match &c.routes {
            None => None,
            Some(names) => Some(route_set(table, &format!("{key}.routes"), names)?),
        };
        clients.push(Client {
            name: c.name.clone(),
            key_sha256: digest,
            account: c.account.clone(),
            routes,
            token_lease: c.token_lease,
        });
    }
    Ok(clients)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_does_not_parse_is_named_by_line_never_quoted() {
        let text = "[server]\nlisten = \"127.0.0.1:8080\"\n[redis]\nurl = \"redis://:hunter2-pw@r:6379\" x\n";
        let e = FileConfig::parse(text, Path::new("g.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 4"), "{e}");
        assert!(!e.contains("hunter2"), "the password is quoted: {e}");
        let e = FileConfig::parse("[server]\nlisten_typo = 1\n", Path::new("g.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen_typo") && e.contains("line 2"), "{e}");
    }

    fn env_none(_: &str) -> Option<String> {
        None
    }

    fn resolve(text: &str) -> Result<Settings, ConfigError> {
        let file = FileConfig::parse(text, Path::new("t.toml"))?;
        Settings::resolve(file, &Overrides::default(), &env_none)
    }

    #[test]
    fn defaults_without_a_file() {
        let s = resolve("").unwrap();
        assert_eq!(s.server.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(s.accounts.len(), 1);
        assert!(matches!(
            s.accounts[0].credentials,
            Credentials::Missing { .. }
        ));
    }

    #[test]
    fn unknown_key_is_named() {
        let e = resolve("[server]\nlisten_addr = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen_addr"), "{e}");
    }

    #[test]
    fn bad_duration_is_named() {
        let e = resolve("[server]\nrequest_timeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("request_timeout") && e.contains("duration"),
            "{e}"
        );
    }

    #[test]
    fn upstream_trust_bounds_are_checked() {
        let s = resolve("").unwrap();
        assert_eq!(s.upstream.max_answer_bytes, 1024 * 1024);
        assert_eq!(s.token.min_refresh_interval, Duration::from_secs(5));
        assert_eq!(
            (s.token.min_lifetime, s.token.max_lifetime),
            (Duration::from_secs(60), Duration::from_secs(24 * 3600))
        );
        for (text, key) in [
            (
                "[upstream]\nmax_answer_bytes = 0\n",
                "upstream.max_answer_bytes",
            ),
            (
                "[token]\nmin_lifetime = \"2h\"\nmax_lifetime = \"1h\"\n",
                "token.min_lifetime",
            ),
        ] {
            let e = resolve(text).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn unknown_route_in_allow_list() {
        let text = format!(
            "[[clients]]\nname = \"a\"\nkey_sha256 = \"{}\"\nroutes = [\"disk.nope\"]\n",
            "0".repeat(64)
        );
        let e = resolve(&text).unwrap_err().to_string();
        assert!(
            e.contains("clients[0].routes") && e.contains("disk.nope"),
            "{e}"
        );
    }

    #[test]
    fn secrets_are_masked() {
        let env = |n: &str| match n {
            "FINOVY_UUID" => Some("uuid-value-123".to_string()),
            "FINOVY_SECRET" => Some("secret-value-456".to_string()),
            _ => None,
        };
        let overrides = Overrides {
            redis: Some("redis://u:p@ss-word-789@127.0.0.1:6379/0".into()),
            ..Overrides::default()
        };
        let s = Settings::resolve(FileConfig::default(), &overrides, &env).unwrap();
        let out = s.to_masked_toml() + &format!("{s:?} {overrides:?}");
        assert!(
            !out.contains("uuid-value-123")
                && !out.contains("secret-value-456")
                && !out.contains("ss-word-789"),
            "{out}"
        );
        assert!(out.contains("redis://u:***@127.0.0.1:6379/0"), "{out}");
    }

    #[test]
    fn credentials_come_from_files_without_their_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("fgw-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p.to_string_lossy().to_string()
        };
        let (uuid, secret) = (write("uuid", "u-1\n"), write("secret", "s-2\r\n"));
        let env = |n: &str| match n {
            "FINOVY_UUID_FILE" => Some(uuid.clone()),
            "FINOVY_SECRET_FILE" => Some(secret.clone()),
            _ => None,
        };
        let s = Settings::resolve(FileConfig::default(), &Overrides::default(), &env).unwrap();
        assert_eq!(
            s.accounts[0].credentials,
            Credentials::Exchange {
                uuid: Secret::new("u-1"),
                secret: Secret::new("s-2"),
            }
        );
        assert!(!s.to_masked_toml().contains("s-2"));
        // A variable and a file for one credential: one of them would be ignored silently.
        let both = |n: &str| match n {
            "FINOVY_SECRET" => Some("x".to_string()),
            other => env(other),
        };
        let e = Settings::resolve(FileConfig::default(), &Overrides::default(), &both)
            .unwrap_err()
            .to_string();
        assert!(e.contains("FINOVY_SECRET_FILE"), "{e}");
        // Per account; an unreadable file is an error naming the key.
        let token = write("token", "t-3");
        let text = format!(
            "[[accounts]]\nname = \"sandbox\"\ntoken_file = {token:?}\n\
             [[accounts]]\nname = \"other\"\ntoken_file = \"/nonexistent/fgw\"\n"
        );
        let file = FileConfig::parse(&text, Path::new("t.toml")).unwrap();
        let e = Settings::resolve(file, &Overrides::default(), &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("accounts[1].token_file"), "{e}");
        let text = format!("[[accounts]]\nname = \"sandbox\"\ntoken_file = {token:?}\n");
        let file = FileConfig::parse(&text, Path::new("t.toml")).unwrap();
        let s = Settings::resolve(file, &Overrides::default(), &env).unwrap();
        assert_eq!(
            s.accounts[1].credentials,
            Credentials::Fixed {
                token: Secret::new("t-3")
            }
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_redis_password_file_goes_into_the_url_and_never_out() {
        let dir = std::env::temp_dir().join(format!("fgw-redis-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let temp = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let pw = temp("redis-pw", "p@ss/w:rd%1\n");
        let toml = format!(
            "[server]\nlisten = \"127.0.0.1:8080\"\n[redis]\nurl = \"rediss://gateway@r:6380/0\"\npassword_file = {:?}\n",
            pw.display()
        );
        let file = FileConfig::parse(&toml, Path::new("t.toml")).unwrap();
        let s = Settings::resolve(file, &Overrides::default(), &|_: &str| None).unwrap();
        let r = s.redis.as_ref().unwrap();
        assert_eq!(r.url, "rediss://gateway:p%40ss%2Fw%3Ard%251@r:6380/0");
        assert!(!format!("{r:?}").contains("p%40ss"));
        assert!(
            !s.to_masked_toml().contains("p%40ss"),
            "{}",
            s.to_masked_toml()
        );
        // The environment's file wins, and goes after any URL's host list.
        let other = temp("redis-pw2", "other");
        let env = |k: &str| match k {
            "FGW_REDIS_PASSWORD_FILE" => Some(other.display().to_string()),
            "FGW_REDIS_URL" => Some("redis+sentinel://s1:26379,s2:26379/mymaster".into()),
            _ => None,
        };
        let file = FileConfig::parse(&toml, Path::new("t.toml")).unwrap();
        let s = Settings::resolve(file, &Overrides::default(), &env).unwrap();
        assert_eq!(
            s.redis.unwrap().url,
            "redis+sentinel://:other@s1:26379,s2:26379/mymaster"
        );
        // A password in the URL as well, or an empty file: an error naming the key.
        for (url, file_text) in [("redis://u:x@r:6379", "pw"), ("redis://r:6379", "\n")] {
            let pw = temp("redis-pw3", file_text);
            let toml = format!(
                "[server]\nlisten = \"127.0.0.1:8080\"\n[redis]\nurl = {url:?}\npassword_file = {:?}\n",
                pw.display()
            );
            let file = FileConfig::parse(&toml, Path::new("t.toml")).unwrap();
            let e = Settings::resolve(file, &Overrides::default(), &|_: &str| None)
                .unwrap_err()
                .to_string();
            assert!(e.contains("redis.password_file"), "{e}");
        }
    }

    #[test]
    fn redis_url_password_is_masked() {
        assert_eq!(mask_url("redis://u:pw@h:6379/0"), "redis://u:***@h:6379/0");
        assert_eq!(mask_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(mask_url("http://tok@p:3128"), "http://***@p:3128");
        assert_eq!(mask_url("redis://u:a@b@h:1/x@y"), "redis://u:***@h:1/x@y");
    }

    #[test]
    fn capacity_keys_are_checked_and_the_client_share_defaults_to_a_quarter() {
        for (text, key) in [
            ("[server]\nmax_connections = 0\n", "server.max_connections"),
            (
                "[server]\nmax_inflight_per_client = 0\n",
                "server.max_inflight_per_client",
            ),
            ("[server]\nbody_timeout = \"0s\"\n", "server.body_timeout"),
            (
                "[server]\nh2_max_concurrent_streams = 0\n",
                "server.h2_max_concurrent_streams",
            ),
            (
                "[auth]\nanonymous_routes = [\"disk.nope\"]\n",
                "auth.anonymous_routes",
            ),
        ] {
            let e = resolve(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        let client = format!(
            "[[clients]]\nname = \"a\"\nkey_sha256 = \"{}\"\n",
            "ab".repeat(32)
        );
        let s = resolve(&format!("[server]\nmax_concurrency = 100\n{client}")).unwrap();
        assert_eq!(s.max_inflight_per_client(), 25);
        // One anonymous caller, no one to share with: all of it.
        assert_eq!(resolve("").unwrap().max_inflight_per_client(), 1024);
        let s = resolve("[server]\nmax_inflight_per_client = 3\n").unwrap();
        assert_eq!(s.max_inflight_per_client(), 3);
        let s = resolve("[auth]\nanonymous_routes = [\"disk.info\"]\n").unwrap();
        assert!(s.anonymous_routes.contains(&Route::DiskInfo));
    }
}
