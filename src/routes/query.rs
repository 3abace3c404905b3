//! A route's query parameters: a request may send only those its route declares, each at most
//! once, as sent (nothing is decoded). Cache keys are built from these only.

use super::route::Route;

/// The longest parameter name shown back in an error.
const MAX_SHOWN: usize = 64;

/// Checks a request's raw query against the parameters `route` declares: each `name=value` (or
/// bare `name`) must name a declared parameter, at most once, and names are compared as sent (an
/// encoded name matches nothing). An empty query (`?`) is no parameter. `Err` says what is wrong,
/// naming the parameter. Allocates only on error.
pub(crate) fn check_query(route: Route, query: Option<&str>) -> Result<(), String> {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return Ok(());
    };
    let declared = route.query_params();
    // A bitmask of the declared parameters seen: routes declare at most a few.
    let mut seen = 0u32;
    for pair in query.split('&') {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        if name.is_empty() {
            return Err(format!(
                "empty query parameter name in {:?}",
                query.chars().take(MAX_SHOWN).collect::<String>()
            ));
        }
        let Some(i) = declared.iter().position(|d| *d == name) else {
            let shown: String = name.chars().take(MAX_SHOWN).collect();
            return Err(if declared.is_empty() {
                format!(
                    "undeclared query parameter {shown:?}: route {route} takes no query parameters"
                )
            } else {
                format!(
                    "undeclared query parameter {shown:?}: route {route} takes only {}",
                    declared.join(", ")
                )
            });
        };
        if seen & (1 << i) != 0 {
            return Err(format!(
                "query parameter {name:?} given more than once: send it once"
            ));
        }
        seen |= 1 << i;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_declared_query_parameters_pass() {
        assert!(check_query(Route::DiskInfo, None).is_ok());
        assert!(check_query(Route::DiskInfo, Some("")).is_ok());
        let e = check_query(Route::DiskInfo, Some("r=1")).unwrap_err();
        assert!(e.contains("\"r\"") && e.contains("disk.info"), "{e}");
        assert!(check_query(Route::HostOperate, Some("type=0")).is_ok());
        assert!(check_query(Route::HostPage, Some("pageSize=10&page=2")).is_ok());
        assert!(check_query(Route::HostPage, Some("page=2")).is_ok());
        let e = check_query(Route::HostPage, Some("page=1&x=2")).unwrap_err();
        assert!(e.contains("\"x\"") && e.contains("page, pageSize"), "{e}");
        // Repeated, empty and encoded names are refused.
        assert!(check_query(Route::HostOperate, Some("type=0&type=1")).is_err());
        assert!(check_query(Route::HostOperate, Some("type=0&")).is_err());
        assert!(check_query(Route::HostOperate, Some("=0")).is_err());
        assert!(check_query(Route::HostOperate, Some("t%79pe=0")).is_err());
    }
}
