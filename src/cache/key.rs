//! What identifies a cache entry: the account, the route, and the route's identity of the request
//! (its path parameter and query, or for a body-keyed route the canonical form of its JSON body).
//! Never the client key: every service of one account shares entries, and two accounts never do.
//! The query counts only through the route's declared parameters, in their declared order, so
//! neither an extra parameter nor the order of the sent ones makes a new entry.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

use crate::routes::Route;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey {
    pub(crate) account: Arc<str>,
    pub(crate) route: Route,
    pub(crate) id: Id,
}

impl CacheKey {
    pub(crate) fn new(account: impl Into<Arc<str>>, route: Route, id: impl AsRef<str>) -> CacheKey {
        CacheKey {
            account: account.into(),
            route,
            id: Id::new(id.as_ref()),
        }
    }

    /// Bytes this key costs in memory, for the cache's byte bound: the key (kept in an `Arc`
    /// by the store) and an id too long to be kept inside it. The account's name is one string
    /// shared by all its keys.
    pub(crate) fn weight(&self) -> usize {
        use crate::cache::size::{ARC_HEADER, malloc_size};
        let id = match &self.id.0 {
            Repr::Inline(..) => 0,
            Repr::Shared(id) => malloc_size(id.len() + ARC_HEADER),
        };
        malloc_size(std::mem::size_of::<CacheKey>() + ARC_HEADER) + id
    }
}

/// A key's id: kept inside the key when short (a disk's or a host's id), so that the key is one
/// allocation; shared otherwise (a canonical JSON body).
#[derive(Clone)]
pub(crate) struct Id(Repr);

#[derive(Clone)]
enum Repr {
    Inline(u8, [u8; INLINE]),
    Shared(Arc<str>),
}

/// The longest id kept inside the key: the most that keeps `Id` as small as an `Arc<str>` and its
/// tag.
const INLINE: usize = 22;

impl Id {
    fn new(id: &str) -> Id {
        match u8::try_from(id.len()) {
            Ok(len) if id.len() <= INLINE => {
                let mut bytes = [0; INLINE];
                bytes[..id.len()].copy_from_slice(id.as_bytes());
                Id(Repr::Inline(len, bytes))
            }
            _ => Id(Repr::Shared(id.into())),
        }
    }

    /// The id's bytes, without the UTF-8 check of [`Id::as_str`]: what a lookup hashes and
    /// compares, on every hit.
    fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline(len, bytes) => &bytes[..usize::from(*len)],
            Repr::Shared(id) => id.as_bytes(),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match &self.0 {
            // Copied from a `str` whole: always UTF-8.
            Repr::Inline(len, bytes) => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Repr::Shared(id) => id,
        }
    }
}

impl Deref for Id {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Id {
    fn eq(&self, other: &Id) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Id {}

impl Hash for Id {
    /// As `str` hashes: the same id hashes alike however it is kept.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.as_bytes());
        state.write_u8(0xff);
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The route's declared query parameters as sent in `query`, in declared order (`page=1&pageSize=10`);
/// `None` when none is sent. Undeclared ones never count (the route layer refuses them anyway).
pub(crate) fn canonical_query(route: Route, query: Option<&str>) -> Option<String> {
    let query = query?;
    let declared = route.query_params();
    if declared.is_empty() {
        return None;
    }
    let mut out = String::new();
    for name in declared {
        let found = query
            .split('&')
            .find(|pair| pair.split_once('=').map_or(*pair, |(n, _)| n) == *name);
        if let Some(pair) = found {
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(pair);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The canonical form of a JSON body: keys sorted, no whitespace. `None` when it is not JSON.
/// An empty body is `{}`, as the upstream reads it.
pub(crate) fn canonical_json(body: &[u8]) -> Option<String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Some("{}".to_string());
    }
    // serde_json's map is ordered by key (no `preserve_order`), so this serialisation is canonical.
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    serde_json::to_string(&value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let a = canonical_json(br#"{"page":1,"pageSize":10}"#).unwrap();
        let b = canonical_json(b"{ \"pageSize\" : 10,\n \"page\": 1 }").unwrap();
        assert_eq!(a, b);
        assert_ne!(a, canonical_json(br#"{"page":2,"pageSize":10}"#).unwrap());
        assert!(canonical_json(b"{nope").is_none());
        assert_eq!(canonical_json(b"").unwrap(), "{}");
    }

    #[test]
    fn a_query_keys_by_declared_parameters_in_declared_order() {
        let q = |r, s| canonical_query(r, Some(s));
        assert_eq!(
            q(Route::HostPage, "pageSize=10&page=2").unwrap(),
            "page=2&pageSize=10"
        );
        assert_eq!(
            q(Route::HostPage, "page=2&pageSize=10").unwrap(),
            "page=2&pageSize=10"
        );
        assert_eq!(q(Route::HostPage, "pageSize=5").unwrap(), "pageSize=5");
        assert_eq!(q(Route::HostPage, "r=1"), None);
        assert_eq!(q(Route::DiskInfo, "r=1"), None);
        assert_eq!(canonical_query(Route::HostOperate, None), None);
    }

    #[test]
    fn a_key_weighs_its_id() {
        let short = CacheKey::new("a", Route::DiskInfo, "d");
        let long = CacheKey::new("a", Route::DiskInfo, "d".repeat(1000));
        // A short id lives in the key: one block, as large as the key and the `Arc`'s counters.
        assert!(std::mem::size_of::<CacheKey>() <= 48);
        assert_eq!(short.weight(), 64);
        let grown = long.weight() - short.weight();
        assert!(
            (1000..1040).contains(&grown),
            "1,000 more id bytes weigh {grown}"
        );
    }

    #[test]
    fn an_id_is_its_text_wherever_it_is_kept() {
        let inline = CacheKey::new("a", Route::DiskInfo, "PgOiNCqaJQ");
        let at_the_limit = "x".repeat(INLINE);
        let past_it = "x".repeat(INLINE + 1);
        for id in ["", "PgOiNCqaJQ", "é✓", &at_the_limit, &past_it] {
            let key = CacheKey::new("a", Route::DiskInfo, id);
            assert_eq!(&*key.id, id);
            assert_eq!(key.id.to_string(), id);
            assert_eq!(format!("{:?}", key.id), format!("{id:?}"));
            assert_eq!(
                key,
                CacheKey::new("a", Route::DiskInfo, Arc::<str>::from(id))
            );
        }
        assert!(matches!(inline.id.0, Repr::Inline(..)));
        assert!(matches!(Id::new(&past_it).0, Repr::Shared(_)));
        assert_ne!(inline, CacheKey::new("a", Route::DiskInfo, "PgOiNCqaJq"));
        let hash = |k: &CacheKey| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            k.hash(&mut h);
            h.finish()
        };
        assert_eq!(
            hash(&inline),
            hash(&CacheKey::new(
                "a",
                Route::DiskInfo,
                String::from("PgOiNCqaJQ")
            ))
        );
        // An id hashes as its text does, however it is kept.
        let hash_of = |h: &dyn Fn(&mut std::collections::hash_map::DefaultHasher)| {
            let mut s = std::collections::hash_map::DefaultHasher::new();
            h(&mut s);
            s.finish()
        };
        for id in ["PgOiNCqaJQ", past_it.as_str()] {
            assert_eq!(hash_of(&|s| Id::new(id).hash(s)), hash_of(&|s| id.hash(s)));
        }
    }
}
