//! Work that must finish even when nobody waits for it any more (a create already sent upstream):
//! such tasks hold a [`WorkGuard`], and the drain on shutdown waits until none is left.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

#[derive(Default)]
pub struct WorkTracker {
    running: AtomicUsize,
    idle: Notify,
}

/// Counts one piece of work for as long as it lives.
pub struct WorkGuard(Arc<WorkTracker>);

impl Drop for WorkGuard {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl WorkTracker {
    pub fn new() -> Arc<WorkTracker> {
        Arc::new(WorkTracker::default())
    }

    pub fn start(self: &Arc<Self>) -> WorkGuard {
        self.running.fetch_add(1, Ordering::SeqCst);
        WorkGuard(self.clone())
    }

    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Resolves once no work is running.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.running() == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_waits_for_the_last_guard() {
        let t = WorkTracker::new();
        let g = t.start();
        let waiter = tokio::spawn({
            let t = t.clone();
            async move { t.idle().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(g);
        waiter.await.unwrap();
        assert_eq!(t.running(), 0);
    }
}
