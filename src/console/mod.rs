//! The operator console's JSON side (issue #22; the contract with the page is the console spec):
//! `GET /admin/overview` ([`overview`]), `GET /admin/budgets` ([`budgets`]) and
//! `GET /admin/clients` ([`clients`]), on the admin listener behind the admin key, each in the
//! usual success envelope. What they read is kept cheap for the data plane: per-client and
//! per-account counts are atomics made once ([`crate::counters`]), the hit ratio comes from
//! snapshots of a counter the cache already keeps ([`window`]), and today's purchases are counted
//! by the ledger's database.
//!
//! The page itself (`GET /console` and its assets, from [`assets`]) is served by [`page`].

pub(crate) mod assets;
mod budgets;
mod clients;
mod overview;
pub(crate) mod state;
pub(crate) mod window;

use bytes::Bytes;

use crate::admin::state::AdminState;
use crate::envelope::success_response;
use crate::error::GatewayError;

pub(crate) use state::Console;
pub(crate) use window::sample;

/// One of the console's JSON views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum View {
    Overview,
    Budgets,
    Clients,
}

impl View {
    /// The view at `path` (`GET` only), if it is one.
    pub(crate) fn at(path: &str) -> Option<View> {
        match path {
            "/admin/overview" => Some(View::Overview),
            "/admin/budgets" => Some(View::Budgets),
            "/admin/clients" => Some(View::Clients),
            _ => None,
        }
    }
}

/// The view's answer; the admin key was checked by the caller. None of the views takes a query
/// parameter: any is refused (400, code 1007), as `/admin/purchases` refuses one it does not know.
pub(crate) async fn answer(
    state: &AdminState,
    view: View,
    query: Option<&str>,
    id: &str,
) -> Result<http::Response<Bytes>, GatewayError> {
    no_parameters(query).map_err(|msg| GatewayError::BadRequest { code: 1007, msg })?;
    let data = match view {
        View::Overview => overview::overview(state).await,
        View::Budgets => budgets::budgets(state).await,
        View::Clients => clients::clients(state),
    };
    Ok(success_response("success", data, id))
}

/// `Err` naming the first parameter of `query`, when it has any.
fn no_parameters(query: Option<&str>) -> Result<(), String> {
    let Some(first) = query.and_then(|q| q.split('&').find(|p| !p.is_empty())) else {
        return Ok(());
    };
    let name: String = first
        .split('=')
        .next()
        .unwrap_or_default()
        .chars()
        .take(64)
        .collect();
    Err(format!(
        "unknown query parameter {name:?}: this endpoint takes none"
    ))
}

/// The console's page and assets (`GET /console`, `GET /console/*`), compiled into the binary;
/// `None` for a path that is not one of them. The admin listener calls it only where an admin
/// key is set. The files and their headers are in [`assets`].
pub(crate) fn page(path: &str) -> Option<http::Response<Bytes>> {
    assets::asset(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_takes_no_query_parameter() {
        assert!(no_parameters(None).is_ok());
        assert!(no_parameters(Some("")).is_ok());
        let e = no_parameters(Some("since=1&x=2")).unwrap_err();
        assert!(e.contains("\"since\""), "{e}");
        assert!(
            no_parameters(Some("&flag"))
                .unwrap_err()
                .contains("\"flag\"")
        );
    }

    #[test]
    fn the_views_are_their_paths() {
        assert_eq!(View::at("/admin/overview"), Some(View::Overview));
        assert_eq!(View::at("/admin/budgets"), Some(View::Budgets));
        assert_eq!(View::at("/admin/clients"), Some(View::Clients));
        assert_eq!(View::at("/admin/clients/x"), None);
    }
}
