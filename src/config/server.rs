//! `[server]`: the data-plane and admin listeners, and the limits each connection and request
//! runs under (bodies, heads, deadlines, concurrency, connections, h2, TLS files).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check::{check_nonzero, check_positive};
use super::error::{ConfigError, invalid};
use crate::duration;

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
    /// [`Settings::max_inflight_per_client`](super::Settings::max_inflight_per_client).
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
    /// `Server-Timing` on the data plane's answers (cache, upstream, wait, total).
    pub(crate) server_timing: bool,
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
            server_timing: true,
        }
    }
}

impl ServerConfig {
    /// The limits, each above zero (`max_header_bytes` at least 8 KiB); the TLS files are
    /// checked with the listeners' TLS ([`super::tls`]).
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check_positive("server.max_body_bytes", self.max_body_bytes)?;
        check_positive("server.max_concurrency", self.max_concurrency)?;
        if self.max_header_bytes < 8192 {
            return Err(invalid(
                "server.max_header_bytes",
                "expected at least 8192 bytes",
            ));
        }
        check_nonzero("server.request_timeout", self.request_timeout)?;
        check_nonzero("server.body_timeout", self.body_timeout)?;
        check_nonzero("server.idle_timeout", self.idle_timeout)?;
        check_nonzero("server.handshake_timeout", self.handshake_timeout)?;
        check_positive("server.max_connections_per_ip", self.max_connections_per_ip)?;
        check_nonzero("server.h2_keep_alive_interval", self.h2_keep_alive_interval)?;
        check_nonzero("server.h2_keep_alive_timeout", self.h2_keep_alive_timeout)?;
        check_positive(
            "server.h2_max_concurrent_streams",
            self.h2_max_concurrent_streams as usize,
        )?;
        if let Some(n) = self.max_inflight_per_client {
            check_positive("server.max_inflight_per_client", n)?;
        }
        // The drain takes every connection permit at once, which tokio counts in a u32.
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err(invalid(
                "server.max_connections",
                "expected a number from 1 to 1000000",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::resolve;
    use crate::routes::Route;

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
