//! What the admin listener's handlers read: the process's metrics, accounts, cache, records,
//! reloader, ledger and the console's own state, handed over by the server at start. Apart from
//! the handlers so that the console's views, which the admin router calls, can read it too.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::cache::Cache;
use crate::console::state::Console;
use crate::fleet::Fleet;
use crate::fleet::cache::TwoLevel;
use crate::metrics::Metrics;
use crate::protect::records::RecordStore;
use crate::reload::Reloader;
use crate::routes::RouteTable;
use crate::swap::Swap;
use crate::upstream::AccountHandle;

pub(crate) struct AdminState {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) accounts: Vec<Arc<AccountHandle>>,
    pub(crate) cache: Arc<Cache>,
    pub(crate) records: Arc<dyn RecordStore>,
    /// Swapped by a reload, like the settings it guards.
    pub(crate) admin_key_sha256: Arc<Swap<Option<[u8; 32]>>>,
    pub(crate) reloader: Arc<Reloader>,
    pub(crate) draining: Arc<AtomicBool>,
    pub(crate) fleet: Option<Arc<Fleet>>,
    pub(crate) two_level: Option<Arc<TwoLevel>>,
    /// The routes this process runs, for purges that name one.
    pub(crate) routes: Arc<RouteTable>,
    /// The purchase ledger (`/admin/purchases`, `/admin/spend`).
    pub(crate) ledger: crate::ledger::Ledger,
    /// What the console's views read beside the rest (`/admin/overview` and the others).
    pub(crate) console: Console,
}
