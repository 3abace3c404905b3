//! `[redis]`: shared mode. The URL comes from the flag, the environment or the file, its password
//! from a file when one is named; the rest of the section applies whichever gave the URL.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check::check_nonzero;
use super::env::{CredentialSource, ENV_REDIS_PASSWORD_FILE, ENV_REDIS_URL, EnvLookup};
use super::error::{ConfigError, invalid};
use super::mask::{mask_url, mask_url_password};
use super::overrides::Overrides;
use crate::duration;

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

impl RedisConfig {
    /// The flag, then the environment, then the file; the rest of `[redis]` applies whichever
    /// gave the URL. `None`: no URL anywhere, so no shared mode.
    pub(super) fn resolve(
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
        cfg.url = match password_file {
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
        cfg.validate()?;
        Ok(Some(cfg))
    }

    /// The URL (its password put in), the prefix, the timeouts and the CA file.
    fn validate(&self) -> Result<(), ConfigError> {
        crate::fleet::conn::check_url(&self.url).map_err(|e| invalid("redis.url", e))?;
        if self.prefix.is_empty()
            || self
                .prefix
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                "redis.prefix",
                "expected a non-empty prefix without spaces",
            ));
        }
        check_nonzero("redis.timeout", self.timeout)?;
        if let Some(ca) = &self.tls_ca_file
            && let Err(e) = crate::files::read_limited(ca, crate::files::SMALL_FILE_MAX)
        {
            return Err(invalid(
                "redis.tls_ca_file",
                format!("cannot read {}: {e}", ca.display()),
            ));
        }
        if self.lock_ttl < Duration::from_millis(100) {
            return Err(invalid("redis.lock_ttl", "expected at least 100ms"));
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{FileConfig, Overrides, Settings};

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
}
