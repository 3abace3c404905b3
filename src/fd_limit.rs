//! The open-file limit: every connection, upstream call and file read takes a descriptor, and a
//! process out of them can accept nothing, probes included. At start the soft limit is raised to
//! the hard limit, and a limit below what the configuration may use is warned about.

use crate::admin::ADMIN_MAX_CONNECTIONS;
use crate::config::Settings;

/// Descriptors besides connections: listeners, Redis, log and credential files, the runtime.
const RESERVE: u64 = 128;

/// Raises the soft open-file limit to the hard one; warns when it is below what `settings` may
/// use.
pub(crate) fn raise(settings: &Settings) {
    // The soft limit raised as far as the hard one allows (the crate knows each platform's
    // ceiling); the limit in force either way.
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-file limit");
            match rlimit::getrlimit(rlimit::Resource::NOFILE) {
                Ok((soft, _)) => soft,
                Err(_) => return,
            }
        }
    };
    tracing::debug!(limit, "open-file limit");
    if let Some(warning) = shortfall(limit, needed(settings)) {
        tracing::warn!("{warning}");
    }
}

/// Descriptors `settings` may use at once: every data-plane and admin connection, an upstream
/// connection per request in flight plus the idle ones each account's pool keeps, and a reserve.
fn needed(settings: &Settings) -> u64 {
    let server = &settings.server;
    let upstream =
        server.max_concurrency + settings.upstream.pool_max_idle_per_host * settings.accounts.len();
    (server.max_connections + ADMIN_MAX_CONNECTIONS + upstream) as u64 + RESERVE
}

/// The open-file limit is below what the configuration may use: a warning at start, not an
/// error (a gateway that is never that busy runs fine), and it says how to fix it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the open-file limit ({limit}) is below what this configuration may use ({needed}: \
     server.max_connections, the admin listener's {admin}, an upstream connection per \
     server.max_concurrency and the pools' idle ones, and {reserve} more); past it \
     connections are refused (accept fails with EMFILE): raise the hard limit \
     (ulimit -Hn, LimitNOFILE=, the container runtime's nofile) or lower \
     server.max_connections",
    admin = ADMIN_MAX_CONNECTIONS,
    reserve = RESERVE
)]
struct Shortfall {
    limit: u64,
    needed: u64,
}

fn shortfall(limit: u64, needed: u64) -> Option<Shortfall> {
    (limit < needed).then_some(Shortfall { limit, needed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_below_the_configured_needs_is_named() {
        assert_eq!(shortfall(20_000, 12_000), None);
        let w = shortfall(1024, 11_500).unwrap().to_string();
        assert!(
            w.contains("(1024)") && w.contains("(11500") && w.contains("server.max_connections"),
            "{w}"
        );
    }
}
