//! What identifies a cache entry: the account, the route, and the route's identity of the request
//! (its path parameter and query, or for a body-keyed route the canonical form of its JSON body).
//! Never the client key: every service of one account shares entries, and two accounts never do.
//! The query counts only through the route's declared parameters, in their declared order, so
//! neither an extra parameter nor the order of the sent ones makes a new entry.

use std::sync::Arc;

use crate::routes::Route;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey {
    pub(crate) account: Arc<str>,
    pub(crate) route: Route,
    pub(crate) id: Arc<str>,
}

impl CacheKey {
    pub(crate) fn new(
        account: impl Into<Arc<str>>,
        route: Route,
        id: impl Into<Arc<str>>,
    ) -> CacheKey {
        CacheKey {
            account: account.into(),
            route,
            id: id.into(),
        }
    }

    /// Bytes this key costs in memory, for the cache's byte bound: the key (kept in an `Arc`
    /// by the store) and its id. The account's name is one string shared by all its keys.
    pub(crate) fn weight(&self) -> usize {
        use crate::cache::entry::{ARC_HEADER, malloc_size};
        malloc_size(std::mem::size_of::<CacheKey>() + ARC_HEADER)
            + malloc_size(self.id.len() + ARC_HEADER)
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

/// Whether a route's requests are told apart by their JSON body (a POST that only reads).
pub(crate) fn body_keyed(route: Route) -> bool {
    route.body_keyed()
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
        assert!(short.weight() >= std::mem::size_of::<CacheKey>() + 16);
        // Its own block and its id's, each as malloc rounds it: well under twice their size.
        assert!(short.weight() <= 2 * (std::mem::size_of::<CacheKey>() + 16 + 17));
        let grown = long.weight() - short.weight();
        assert!(
            (990..1040).contains(&grown),
            "1,000 more id bytes weigh {grown}"
        );
    }
}
