//! Why the gateway refused a request, as a value: the reason an answer it made itself carries
//! (a response extension set where errors are rendered), for the per-client counts of
//! [`crate::counters`]. A leaf, so that `error` can name it.

/// Why the gateway refused a request (an answer it made itself, not the upstream's), from the
/// gateway's own error kinds: the keys of `GET /admin/clients`' `refusals`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Over a rate (the gateway's limiter, the upstream's "too frequent", records or reports).
    RateLimited,
    /// A spending cap is reached.
    Budget,
    /// The request itself is wrong: its body, query or size, or a route it may not call.
    Invalid,
    /// An idempotency key reused for another request, or one still being processed.
    Conflict,
    /// Too many requests in flight (the client's share or the whole gateway's).
    TooManyInflight,
    /// The purchase ledger could not record the create.
    LedgerDown,
    /// Anything else the gateway answered with an error (the upstream unreachable, no token).
    Other,
}

impl Refusal {
    pub(crate) const ALL: [Refusal; 7] = [
        Refusal::RateLimited,
        Refusal::Budget,
        Refusal::Invalid,
        Refusal::Conflict,
        Refusal::TooManyInflight,
        Refusal::LedgerDown,
        Refusal::Other,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::RateLimited => "rate_limited",
            Refusal::Budget => "budget",
            Refusal::Invalid => "invalid",
            Refusal::Conflict => "conflict",
            Refusal::TooManyInflight => "too_many_inflight",
            Refusal::LedgerDown => "ledger_down",
            Refusal::Other => "other",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// An answer the gateway made itself as a refusal (a response extension set where errors are
/// rendered): why, and whether the request had been sent upstream before it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) reason: Refusal,
    pub(crate) sent: bool,
}
