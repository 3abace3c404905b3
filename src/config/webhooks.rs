//! `[[webhooks]]`: where the gateway's notifications go (CONTRACT.md, "Webhook events"). Each
//! entry names a receiver (`url`), the key its deliveries are signed with (`secret_file`, or the
//! environment variable `secret_env` names), and the events it wants. The key is written as the
//! Standard Webhooks specification writes it, `whsec_<base64>` (bare base64 is accepted too), and
//! never shown: `check-config` and `Debug` print it masked.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::env::{CredentialSource, EnvLookup};
use super::error::{ConfigError, invalid};
use super::mask::mask_url;

/// One `[[webhooks]]` entry as written in the file.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct WebhookConfig {
    /// The receiver: `http://` or `https://`.
    pub(crate) url: String,
    /// A file holding the signing key (a mounted Secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) secret_file: Option<PathBuf>,
    /// The name of an environment variable holding the signing key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) secret_env: Option<String>,
    /// The events this receiver wants (see [`EventKind`]).
    pub(crate) events: Vec<String>,
    /// `token.failing`: how long an account must be without a token before it is told.
    #[serde(with = "crate::duration")]
    pub(crate) token_failing_after: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            url: String::new(),
            secret_file: None,
            secret_env: None,
            events: Vec::new(),
            token_failing_after: Duration::from_secs(60),
        }
    }
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &mask_url(&self.url))
            .field("secret_file", &self.secret_file)
            .field("secret_env", &self.secret_env)
            .field("events", &self.events)
            .field("token_failing_after", &self.token_failing_after)
            .finish()
    }
}

/// What a receiver can be told. The names are CONTRACT.md's; the body's `type` is the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum EventKind {
    PurchaseBought,
    PurchaseUnknown,
    PurchaseReconciled,
    PurchaseRefused,
    BudgetThreshold,
    BudgetExhausted,
    TokenFailing,
    RedisReset,
}

impl EventKind {
    pub(crate) const ALL: [EventKind; 8] = [
        EventKind::PurchaseBought,
        EventKind::PurchaseUnknown,
        EventKind::PurchaseReconciled,
        EventKind::PurchaseRefused,
        EventKind::BudgetThreshold,
        EventKind::BudgetExhausted,
        EventKind::TokenFailing,
        EventKind::RedisReset,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventKind::PurchaseBought => "purchase.bought",
            EventKind::PurchaseUnknown => "purchase.unknown",
            EventKind::PurchaseReconciled => "purchase.reconciled",
            EventKind::PurchaseRefused => "purchase.refused",
            EventKind::BudgetThreshold => "budget.threshold",
            EventKind::BudgetExhausted => "budget.exhausted",
            EventKind::TokenFailing => "token.failing",
            EventKind::RedisReset => "redis.reset",
        }
    }

    pub(crate) fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl Serialize for EventKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A signing key: its bytes, never shown.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SigningKey(Vec<u8>);

impl SigningKey {
    /// Reads `whsec_<base64>` or bare base64.
    pub(crate) fn parse(text: &str) -> Option<SigningKey> {
        let b64 = text.trim().strip_prefix("whsec_").unwrap_or(text.trim());
        STANDARD
            .decode(b64)
            .ok()
            .filter(|k| !k.is_empty())
            .map(SigningKey)
    }

    /// The key itself, for the one place that signs with it.
    pub(crate) fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl Serialize for SigningKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

/// One receiver, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Webhook {
    /// Checked `http(s)://`; it names the receiver in the outbox.
    #[serde(serialize_with = "serialize_masked_url")]
    pub(crate) url: String,
    pub(crate) secret: SigningKey,
    pub(crate) events: BTreeSet<EventKind>,
    #[serde(with = "crate::duration")]
    pub(crate) token_failing_after: Duration,
}

fn serialize_masked_url<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&mask_url(url))
}

impl Webhook {
    pub(crate) fn wants(&self, kind: EventKind) -> bool {
        self.events.contains(&kind)
    }
}

/// Checks every entry and reads its key.
pub(super) fn resolve(
    entries: &[WebhookConfig],
    env: EnvLookup<'_>,
) -> Result<Vec<Webhook>, ConfigError> {
    let mut out = Vec::with_capacity(entries.len());
    let mut urls = BTreeSet::new();
    for (i, e) in entries.iter().enumerate() {
        let key = |k: &str| format!("webhooks[{i}].{k}");
        let url = e.url.trim();
        let valid_url = url
            .parse::<http::Uri>()
            .ok()
            .filter(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
        if valid_url.is_none() {
            return Err(invalid(
                key("url"),
                format!(
                    "expected http://... or https://..., got {:?}",
                    mask_url(url)
                ),
            ));
        }
        if !urls.insert(url.to_owned()) {
            return Err(invalid(key("url"), "the same receiver is listed twice"));
        }
        let var = e.secret_env.clone().unwrap_or_default();
        let text = CredentialSource {
            var: var.as_str(),
            file: e.secret_file.clone(),
            file_key: key("secret_file"),
        }
        .read(env)?
        .ok_or_else(|| {
            invalid(
                key("secret_file"),
                "set secret_file, or secret_env naming a variable that is set",
            )
        })?;
        let secret = SigningKey::parse(&text).ok_or_else(|| {
            invalid(
                key(if e.secret_file.is_some() {
                    "secret_file"
                } else {
                    "secret_env"
                }),
                "expected whsec_<base64> (or base64)",
            )
        })?;
        let mut events = BTreeSet::new();
        for name in &e.events {
            let kind = EventKind::parse(name).ok_or_else(|| {
                let known: Vec<_> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                invalid(
                    key("events"),
                    format!("unknown event {name:?}; known: {}", known.join(", ")),
                )
            })?;
            events.insert(kind);
        }
        if events.is_empty() {
            return Err(invalid(key("events"), "expected at least one event"));
        }
        super::check::check_nonzero(&key("token_failing_after"), e.token_failing_after)?;
        out.push(Webhook {
            url: url.to_owned(),
            secret,
            events,
            token_failing_after: e.token_failing_after,
        });
    }
    Ok(out)
}

/// The bytes of a `whsec_` key written in a test.
#[cfg(test)]
pub(crate) fn test_key(text: &str) -> Vec<u8> {
    SigningKey::parse(text).expect("a valid key").0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(events: &[&str]) -> WebhookConfig {
        WebhookConfig {
            url: "https://alerts.internal/finovy".into(),
            secret_file: None,
            secret_env: Some("HOOK_KEY".into()),
            events: events.iter().map(|s| (*s).to_owned()).collect(),
            ..WebhookConfig::default()
        }
    }

    fn env(name: &str) -> Option<String> {
        (name == "HOOK_KEY").then(|| "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned())
    }

    #[test]
    fn every_event_name_is_known() {
        let names: Vec<_> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        let hooks = resolve(&[entry(&names)], &env).unwrap();
        assert_eq!(hooks[0].events.len(), 8);
    }

    #[test]
    fn an_unknown_event_names_the_key() {
        let err = resolve(&[entry(&["purchase.bought", "disk.made"])], &env).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("webhooks[0].events"), "{text}");
        assert!(text.contains("disk.made"), "{text}");
    }

    #[test]
    fn keys_read_with_or_without_prefix_and_never_show() {
        let a = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let b = SigningKey::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(a, b);
        assert!(SigningKey::parse("whsec_not base64!").is_none());
        let hooks = resolve(&[entry(&["budget.threshold"])], &env).unwrap();
        let shown = format!("{hooks:?} {}", serde_json::to_string(&hooks).unwrap());
        assert!(!shown.contains("MfKQ9r8"), "{shown}");
    }

    #[test]
    fn a_missing_key_or_bad_url_is_an_error() {
        let mut e = entry(&["redis.reset"]);
        e.secret_env = Some("UNSET".into());
        assert!(
            resolve(&[e], &env)
                .unwrap_err()
                .to_string()
                .starts_with("webhooks[0].secret_file")
        );
        let mut e = entry(&["redis.reset"]);
        e.url = "ftp://x".into();
        assert!(
            resolve(&[e], &env)
                .unwrap_err()
                .to_string()
                .starts_with("webhooks[0].url")
        );
    }
}
