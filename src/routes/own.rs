//! The gateway's own endpoints on the data plane (`/_gateway/...`). They are kept apart from the
//! route table because the gateway serves them itself: no route fact (cache, limit, de-dup)
//! applies to them, and no `[[routes]]` entry may reach them.

use http::Method;

/// The gateway's own endpoints on the data plane (`/_gateway/...`): served by the gateway itself,
/// never forwarded, and not routes of the route table (no allow-list names them, nothing caches
/// them). The name is the `route` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum GatewayRoute {
    /// `GET /_gateway/token`: a lease of the account's upstream token.
    TokenLease,
    /// `POST /_gateway/token/rejected`: the upstream refused a leased token.
    TokenRejected,
}

impl GatewayRoute {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            GatewayRoute::TokenLease => "gateway.token_lease",
            GatewayRoute::TokenRejected => "gateway.token_rejected",
        }
    }

    /// Exact method and path only, as for the table's routes.
    pub(crate) fn classify(method: &Method, path: &str) -> Option<GatewayRoute> {
        match (method, path) {
            (&Method::GET, "/_gateway/token") => Some(GatewayRoute::TokenLease),
            (&Method::POST, "/_gateway/token/rejected") => Some(GatewayRoute::TokenRejected),
            _ => None,
        }
    }

    /// The gateway's own endpoints take no query parameters (checked, like a route's, once the
    /// caller is known).
    pub(crate) fn check_query(self, query: Option<&str>) -> Result<(), String> {
        match query {
            Some(q) if !q.is_empty() => {
                Err(format!("route {} takes no query parameters", self.as_str()))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{RouteTable, classify};

    #[test]
    fn gateway_endpoints_are_exact_and_never_table_routes() {
        assert_eq!(
            GatewayRoute::classify(&Method::GET, "/_gateway/token"),
            Some(GatewayRoute::TokenLease)
        );
        assert_eq!(
            GatewayRoute::classify(&Method::POST, "/_gateway/token/rejected"),
            Some(GatewayRoute::TokenRejected)
        );
        for (m, p) in [
            (Method::POST, "/_gateway/token"),
            (Method::GET, "/_gateway/token/rejected"),
            (Method::GET, "/_gateway/token/"),
            (Method::GET, "/_gateway//token"),
            (Method::GET, "/_gateway/%74oken"),
            (Method::GET, "/_GATEWAY/token"),
        ] {
            assert_eq!(GatewayRoute::classify(&m, p), None, "{m} {p}");
        }
        assert!(classify(&Method::GET, "/_gateway/token").is_none());
        assert!(
            RouteTable::default()
                .by_name("gateway.token_lease")
                .is_none()
        );
    }
}
