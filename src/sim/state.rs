//! Everything the simulator remembers, behind one mutex that is never held across an `.await`.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;
use rand::distr::Alphanumeric;
use tokio::time::Instant;

use crate::sim::SimConfig;
use crate::sim::auth::Tokens;
use crate::sim::disks::{self, Disk};
use crate::sim::fault::Fault;
use crate::sim::hosts::{self, Host};
use crate::sim::seed;
use crate::sim::stats::Stats;

/// What every connection task shares: the fixed configuration and the mutable state.
pub(crate) struct Shared {
    pub(crate) cfg: SimConfig,
    state: Mutex<State>,
}

impl Shared {
    pub(super) fn new(cfg: SimConfig) -> Shared {
        Shared {
            cfg,
            state: Mutex::new(State {
                world: World::seeded(),
                tokens: Tokens::default(),
                stats: Stats::default(),
                fault: Fault::None,
            }),
        }
    }

    /// Locks the state. Nothing panics while holding the lock, but should that ever change, a
    /// poisoned lock still holds consistent-enough data for a simulator: keep serving.
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The mutable state. `/_sim/reset` renews all of it except `tokens`.
pub(crate) struct State {
    pub(crate) world: World,
    pub(crate) tokens: Tokens,
    pub(crate) stats: Stats,
    pub(crate) fault: Fault,
}

impl State {
    /// Back to the start, keeping issued tokens so that a client holding one is not disturbed.
    pub(super) fn reset(&mut self) {
        self.world = World::seeded();
        self.stats = Stats::default();
        self.fault = Fault::None;
    }
}

/// The simulated account's resources.
pub(crate) struct World {
    /// In creation order, which is the order `getList` answers in.
    pub(crate) disks: Vec<Disk>,
    /// In creation order, which is the order `mypage` answers in.
    pub(crate) hosts: Vec<Host>,
    /// When the last create was accepted, for the 220025 rule.
    pub(crate) last_create: Option<Instant>,
}

impl World {
    pub(super) fn seeded() -> World {
        World {
            disks: Vec::new(),
            hosts: seed::hosts(),
            last_create: None,
        }
    }

    /// Applies the transitions that have come due by `now`. Transitions are computed lazily, when
    /// state is read, so nothing runs in the background.
    pub(super) fn settle(&mut self, now: Instant) {
        disks::settle(&mut self.disks, now);
        hosts::settle(&mut self.hosts, now);
    }

    pub(super) fn host(&self, id: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.id == id)
    }

    pub(super) fn host_mut(&mut self, id: &str) -> Option<&mut Host> {
        self.hosts.iter_mut().find(|h| h.id == id)
    }
}

/// `len` random ASCII letters and digits, the shape of the upstream's ids and tokens.
pub(crate) fn random_alnum(len: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// A fresh 10-character id (like `PgOiNCqaJQ`) for which `taken` is false.
pub(crate) fn unique_id(taken: impl Fn(&str) -> bool) -> String {
    loop {
        let id = random_alnum(10);
        if !taken(&id) {
            return id;
        }
    }
}

/// Wall-clock time in epoch milliseconds, for `createTime` fields. Only displayed, never used to
/// measure time (that is `tokio::time::Instant`'s job).
pub(crate) fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
