//! Redis's eviction policy. A Redis at its `maxmemory` with any `maxmemory-policy` but
//! `noeviction` drops keys by itself (under another tenant's data, a burst of cache entries): an
//! idempotency record evicted while the fleet marker stays makes its retry a new purchase, and
//! nothing tells. The policy is read with `INFO memory` (managed Redis services often disable
//! `CONFIG`) at every marker check, and by the begin script before every new record; while it
//! could evict, creates are refused unless `[redis] allow_eviction_policy = true`.
//!
//! Any policy but `noeviction` counts, whatever `maxmemory` is: with `maxmemory 0` nothing is
//! evicted yet, but a `CONFIG SET maxmemory` (or a managed service's resize) starts evicting at
//! once, with nothing for the gateway to notice. A policy that cannot be read counts too.

use std::sync::Mutex;

use prometheus::IntGauge;
use redis::Value;

/// The one policy under which Redis never drops a key by itself.
pub(crate) const SAFE: &str = "noeviction";
/// The policy where `INFO memory` did not say (refused, or an answer without the field).
pub(crate) const UNKNOWN: &str = "unknown";

/// The `maxmemory_policy` field of one `INFO` text.
fn field(info: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix("maxmemory_policy:"))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
}

/// The policy an `INFO memory` answer reports; for a cluster (one answer per primary) the first
/// that could evict. [`UNKNOWN`] where an answer does not say.
pub(crate) fn policy_of(info: &Value) -> String {
    let mut policies = Vec::new();
    collect(info, &mut policies);
    if policies.is_empty() {
        return UNKNOWN.to_string();
    }
    policies
        .into_iter()
        .map(|p| p.unwrap_or_else(|| UNKNOWN.to_string()))
        .find(|p| p != SAFE)
        .unwrap_or_else(|| SAFE.to_string())
}

fn collect(info: &Value, out: &mut Vec<Option<String>>) {
    match info {
        Value::Map(nodes) => nodes.iter().for_each(|(_, v)| collect(v, out)),
        Value::BulkString(b) => out.push(field(&String::from_utf8_lossy(b))),
        Value::SimpleString(s) | Value::VerbatimString { text: s, .. } => out.push(field(s)),
        _ => out.push(None),
    }
}

/// The policy this replica last read, and what it makes of it.
pub(crate) struct Eviction {
    /// `[redis] allow_eviction_policy`: creates go on under any policy.
    allowed: bool,
    policy: Mutex<Option<String>>,
    /// `finovy_gateway_redis_eviction_unsafe`.
    gauge: IntGauge,
}

impl Eviction {
    pub(crate) fn new(allowed: bool, gauge: IntGauge) -> Eviction {
        Eviction {
            allowed,
            policy: Mutex::new(None),
            gauge,
        }
    }

    pub(crate) fn allowed(&self) -> bool {
        self.allowed
    }

    /// Notes the policy just read: the gauge, and a log line when it changed.
    pub(crate) fn saw(&self, policy: &str) {
        let unsafe_now = policy != SAFE;
        self.gauge.set(i64::from(unsafe_now));
        let mut last = self.policy.lock().expect("eviction policy");
        if last.as_deref() == Some(policy) {
            return;
        }
        let was_unsafe = last.as_ref().is_some_and(|p| p != SAFE);
        *last = Some(policy.to_string());
        drop(last);
        if unsafe_now && !self.allowed {
            tracing::error!(
                policy,
                "Redis's maxmemory-policy is {policy}: Redis may evict idempotency records, and the \
                 retry of a purchase whose record was evicted would buy again; creates are refused \
                 (503, code 1005) until maxmemory-policy is noeviction ([redis] \
                 allow_eviction_policy = true accepts the risk)"
            );
        } else if unsafe_now {
            tracing::warn!(
                policy,
                "Redis's maxmemory-policy is {policy}: Redis may evict idempotency records, and the \
                 retry of a purchase whose record was evicted buys again; creates go on because \
                 [redis] allow_eviction_policy = true"
            );
        } else if was_unsafe {
            tracing::info!("Redis's maxmemory-policy is noeviction again: creates are accepted");
        }
    }

    /// The policy, while it could evict records, whether or not creates are refused for it.
    pub(crate) fn unsafe_policy(&self) -> Option<String> {
        self.policy
            .lock()
            .expect("eviction policy")
            .clone()
            .filter(|p| p != SAFE)
    }

    /// For `/readyz`: what the policy means for creates, while it could evict records.
    pub(crate) fn note(&self) -> Option<String> {
        let policy = self.unsafe_policy()?;
        let consequence = if self.allowed {
            "creates go on (allow_eviction_policy = true): the retry of a purchase whose record was \
             evicted buys again"
        } else {
            "creates are refused (503, code 1005) until it is noeviction"
        };
        Some(format!(
            "maxmemory-policy is {policy}: Redis may evict idempotency records; {consequence}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn the_policy_is_read_from_info_memory() {
        let info = "# Memory\r\nused_memory:1\r\nmaxmemory:0\r\nmaxmemory_policy:volatile-ttl\r\n";
        assert_eq!(policy_of(&bulk(info)), "volatile-ttl");
        assert_eq!(policy_of(&bulk("maxmemory_policy:noeviction\r\n")), SAFE);
        assert_eq!(policy_of(&bulk("# Memory\r\n")), UNKNOWN);
        assert_eq!(policy_of(&Value::Nil), UNKNOWN);
        // A cluster: one answer per primary; any that could evict counts.
        let nodes = |a: &str, b: Value| {
            Value::Map(vec![
                (bulk("n1"), bulk(&format!("maxmemory_policy:{a}\r\n"))),
                (bulk("n2"), b),
            ])
        };
        assert_eq!(
            policy_of(&nodes("noeviction", bulk("maxmemory_policy:noeviction"))),
            SAFE
        );
        assert_eq!(
            policy_of(&nodes("noeviction", bulk("maxmemory_policy:allkeys-lru"))),
            "allkeys-lru"
        );
        assert_eq!(policy_of(&nodes("noeviction", Value::Nil)), UNKNOWN);
    }

    #[test]
    fn the_note_and_the_gauge_follow_the_policy_and_the_opt_out() {
        let strict = Eviction::new(false, IntGauge::new("g1", "h").unwrap());
        assert_eq!(strict.unsafe_policy(), None, "nothing read yet");
        strict.saw("allkeys-lru");
        assert_eq!(strict.unsafe_policy().as_deref(), Some("allkeys-lru"));
        assert_eq!(strict.gauge.get(), 1);
        assert!(strict.note().unwrap().contains("refused"));
        strict.saw(SAFE);
        assert_eq!((strict.unsafe_policy(), strict.note()), (None, None));
        assert_eq!(strict.gauge.get(), 0);

        let lax = Eviction::new(true, IntGauge::new("g2", "h").unwrap());
        lax.saw("volatile-ttl");
        assert_eq!(lax.unsafe_policy().as_deref(), Some("volatile-ttl"));
        assert_eq!(lax.gauge.get(), 1, "the gauge says what the policy is");
        let note = lax.note().unwrap();
        assert!(
            note.contains("buys again") && !note.contains("refused"),
            "{note}"
        );
    }
}
