//! What a create is known by: its fingerprint (the intent), its `Idempotency-Key`, and the keys of
//! the records the protocol keeps about it. The keys are typed so that two kinds of record can
//! never meet by a string built alike; their text is what the stores hold (unchanged across
//! versions, so records written before an upgrade are still found).

use std::fmt;

use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};

use crate::cache::key::canonical_json;
use crate::protect::policy::DedupScope;
use crate::protect::validate::Order;
use crate::routes::{Route, RouteMatch};

pub(crate) const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Longest `Idempotency-Key` accepted (Stripe's limit).
const MAX_KEY_LEN: usize = 255;

/// The key of one record in a [`RecordStore`](crate::protect::records::RecordStore).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct RecordKey(String);

impl RecordKey {
    /// A create under an `Idempotency-Key`, scoped to its client and route.
    pub(super) fn idempotent(account: &str, client: &str, route: Route, key: &str) -> Self {
        RecordKey(format!("idem|{account}|{client}|{}|{key}", route.as_str()))
    }

    /// A key-less create: per client unless the route's `dedup_scope` is `account`. The two forms
    /// cannot meet: `c=` marks a client's.
    pub(super) fn dedup(account: &str, client: &str, scope: DedupScope, fingerprint: &str) -> Self {
        RecordKey(match scope {
            DedupScope::Client => format!("dedup|{account}|c={client}|{fingerprint}"),
            DedupScope::Account => format!("dedup|{account}|{fingerprint}"),
        })
    }

    /// A mutation that only collapses while in flight (mount, unmount, power).
    pub(crate) fn in_flight(account: &str, fingerprint: &str) -> Self {
        RecordKey(format!("inflight|{account}|{fingerprint}"))
    }

    /// The purchases of one order (by its fingerprint) being made in the account: their disks
    /// exist upstream before they are claimed, so a reconciliation of an identical order waits.
    pub(super) fn making(account: &str, fingerprint: &str) -> Self {
        RecordKey(format!("{account}|making:{fingerprint}"))
    }

    /// The marker saying that a disk already belongs to a purchase, so that reconciliation never
    /// hands one disk to two intents.
    pub(super) fn claim(account: &str, disk: &str) -> Self {
        RecordKey(format!("claimed|{account}|{disk}"))
    }

    /// The guard one retry holds while it settles the unknown-outcome record `of`.
    pub(super) fn settle(of: &RecordKey) -> Self {
        RecordKey(format!("settle|{}", of.0))
    }

    /// The client a record counts for (`account|client`), as the record counts key it.
    pub(super) fn owner(account: &str, client: &str) -> Self {
        RecordKey(format!("{account}|{client}"))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The request's identity: a SHA-256 digest (hex) of its route, path parameter and canonical
/// body. A create's canonical body is its validated order's ([`Order::body`]), so key order,
/// whitespace and `"0"` for `0` do not make two intents of one; other mutations use their
/// canonical JSON (of `body`). Records and their keys hold this digest, never a body.
pub(crate) fn fingerprint(m: &RouteMatch, order: Option<&Order>, body: &[u8]) -> String {
    let body = match order {
        Some(order) => order.body(),
        None => canonical_json(body).unwrap_or_else(|| String::from_utf8_lossy(body).into_owned()),
    };
    let mut digest = Sha256::new();
    // Route names and path parameters never contain `|`.
    for part in [m.route.as_str(), "|", m.param.as_deref().unwrap_or(""), "|"] {
        digest.update(part.as_bytes());
    }
    digest.update(body.as_bytes());
    hex::encode(digest.finalize())
}

/// The request's `Idempotency-Key`, if it sent one; the reason when it is not a usable key.
/// Two of them are refused: which one a proxy or a retry keeps first is not the caller's intent.
pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, String> {
    let mut all = headers.get_all(&IDEMPOTENCY_KEY).iter();
    let Some(v) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err("send one Idempotency-Key header, not several".to_string());
    }
    let key = v
        .to_str()
        .map_err(|_| "Idempotency-Key must be printable ASCII".to_string())?
        .trim();
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_LEN} characters"
        ));
    }
    Ok(Some(key.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn record_keys_keep_the_text_the_stores_hold() {
        let r = Route::DiskCreate;
        assert_eq!(
            RecordKey::idempotent("default", "svc", r, "k1").as_str(),
            "idem|default|svc|disk.create|k1"
        );
        assert_eq!(
            RecordKey::dedup("default", "svc", DedupScope::Client, "fp").as_str(),
            "dedup|default|c=svc|fp"
        );
        assert_eq!(
            RecordKey::dedup("default", "svc", DedupScope::Account, "fp").as_str(),
            "dedup|default|fp"
        );
        assert_eq!(RecordKey::in_flight("a", "fp").as_str(), "inflight|a|fp");
        assert_eq!(RecordKey::making("a", "fp").as_str(), "a|making:fp");
        assert_eq!(RecordKey::claim("a", "d1").as_str(), "claimed|a|d1");
        let idem = RecordKey::idempotent("a", "c", r, "k");
        assert_eq!(
            RecordKey::settle(&idem).as_str(),
            "settle|idem|a|c|disk.create|k"
        );
        assert_eq!(RecordKey::owner("a", "c").as_str(), "a|c");
    }

    #[test]
    fn the_kinds_of_record_never_meet() {
        // A client named like an account-scoped key, a key shaped like a fingerprint: still apart.
        let keys = [
            RecordKey::dedup("a", "fp", DedupScope::Client, "fp"),
            RecordKey::dedup("a", "x", DedupScope::Account, "fp"),
            RecordKey::in_flight("a", "fp"),
            RecordKey::making("a", "fp"),
            RecordKey::claim("a", "fp"),
            RecordKey::idempotent("a", "c", Route::DiskCreate, "fp"),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn an_idempotency_key_is_1_to_255_printable_characters() {
        let with = |v: &[u8]| {
            let mut h = HeaderMap::new();
            h.insert(IDEMPOTENCY_KEY, HeaderValue::from_bytes(v).unwrap());
            idempotency_key(&h)
        };
        assert_eq!(idempotency_key(&HeaderMap::new()), Ok(None));
        assert_eq!(with(b" k-1 "), Ok(Some("k-1".into())));
        assert!(with(b"   ").is_err());
        assert!(with(&[b'x'; 256]).is_err());
        assert_eq!(
            with(&[b'x'; 255]).map(|k| k.map(|k| k.len())),
            Ok(Some(255))
        );
        assert!(with("é".as_bytes()).is_err());
        let mut two = HeaderMap::new();
        two.append(IDEMPOTENCY_KEY, HeaderValue::from_static("k-1"));
        two.append(IDEMPOTENCY_KEY, HeaderValue::from_static("k-1"));
        assert!(idempotency_key(&two).is_err());
    }
}
