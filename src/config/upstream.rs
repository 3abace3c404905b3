//! `[upstream]`: where the upstream is and how it is reached: timeouts, the connection pool, the
//! largest answer read, and the egress (proxy, extra CAs) that accounts inherit.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check::{check_base_url, check_nonzero, check_positive};
use super::env::EnvLookup;
use super::error::{ConfigError, invalid};
use super::mask::mask_url;
use crate::duration;

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

impl UpstreamConfig {
    /// The timeouts and the answer bound; the proxy and CA file are checked per account, with
    /// its egress ([`resolve_egress`]).
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check_nonzero("upstream.connect_timeout", self.connect_timeout)?;
        check_nonzero("upstream.timeout", self.timeout)?;
        check_positive("upstream.max_answer_bytes", self.max_answer_bytes)
    }

    /// The base URL, the default of every account's. Checked apart from [`Self::validate`]:
    /// after `[token]`, as it always was, so a file wrong in both is refused for the same key.
    pub(super) fn validate_base_url(&self) -> Result<(), ConfigError> {
        check_base_url("upstream.base_url", &self.base_url)
    }
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

/// The proxy named in the file (`""`: none), else the environment's; the CA file must be readable.
pub(super) fn resolve_egress(
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
            .map_err(|e| invalid(format!("{key}.ca_file"), e.to_string()))?;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::resolve;

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
}
