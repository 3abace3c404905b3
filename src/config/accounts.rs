//! `[[accounts]]`: the upstream accounts the gateway holds tokens for, each with its base URL, its
//! credentials (variables or files) and its egress. The `default` account exists even when the
//! file names none, with the `FINOVY_*` variables as its credentials.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::check::{check_base_url, check_name};
use super::env::{
    CredentialSource, ENV_SECRET, ENV_SECRET_FILE, ENV_TOKEN, ENV_TOKEN_FILE, ENV_UUID,
    ENV_UUID_FILE, EnvLookup,
};
use super::error::{ConfigError, invalid};
use super::upstream::{Egress, ProxyUrl, UpstreamConfig, resolve_egress};
use crate::secret::Secret;

pub const DEFAULT_ACCOUNT: &str = "default";

pub(super) fn default_account_name() -> String {
    DEFAULT_ACCOUNT.into()
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

/// `[[accounts]]` as accounts, the default one first when the file does not name it; each
/// account's credentials are read here (variables and files).
pub(super) fn resolve(
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{FileConfig, Overrides, Settings};
    use super::*;

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
}
