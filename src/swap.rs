//! A value swapped whole at run time: what reload (`SIGHUP`, `POST /admin/reload`) changes while
//! requests are served. It lives apart from `reload` because the cache, the create protection and
//! the layers all hold one, and none of them should depend on how a reload is done.
//!
//! A request reads the value once, as it starts, and keeps that `Arc` to its end, so requests in
//! flight finish under the settings they began with.

use std::sync::{Arc, PoisonError, RwLock};

/// A value swapped whole at run time; readers take the current `Arc` (one uncontended read lock).
pub(crate) struct Swap<T>(RwLock<Arc<T>>);

impl<T> Swap<T> {
    pub(crate) fn new(value: T) -> Swap<T> {
        Swap(RwLock::new(Arc::new(value)))
    }

    /// The current value, kept by the caller for as long as it needs it.
    pub(crate) fn load(&self) -> Arc<T> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs `f` on the current value without taking an `Arc` (the cache-hit path).
    pub(crate) fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub(crate) fn store(&self, value: T) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_swap_keeps_what_a_reader_took() {
        let s = Swap::new(1);
        let taken = s.load();
        s.store(2);
        assert_eq!((*taken, *s.load()), (1, 2));
        assert_eq!(s.with(|v| *v + 1), 3);
    }
}
