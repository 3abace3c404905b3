//! What the console's views know of this process beside the admin state: when it started, its
//! replica's name, and the cache's lookups over the last minutes.

use std::sync::Arc;

use crate::metrics::Metrics;

use super::window::LookupWindow;

/// What the console's views know of this process beside the admin state.
pub(crate) struct Console {
    /// When this process started (epoch ms): uptime, and since when clients are counted.
    pub(crate) started_ms: u64,
    /// This replica's name in the ledger.
    pub(crate) replica: Arc<str>,
    /// The cache's lookups over the last minutes.
    pub(crate) lookups: Arc<LookupWindow>,
}

impl Console {
    pub(crate) fn new(metrics: &Metrics, replica: Arc<str>) -> Console {
        let started_ms = crate::clock::now_ms();
        Console {
            started_ms,
            replica,
            lookups: Arc::new(LookupWindow::new(metrics, started_ms)),
        }
    }
}
