//! The command-line values that override the file (`--listen`, `--upstream`, `--redis`, ...).

use std::fmt;
use std::net::SocketAddr;

use super::log::LogFormat;
use super::mask::mask_url;

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
