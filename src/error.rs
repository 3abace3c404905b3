//! Every answer the gateway makes itself, as one type: what went wrong, and how it is answered
//! (CONTRACT.md, "Errors the gateway itself produces"). Each variant knows its HTTP status and
//! envelope code ([`GatewayError::status_and_code`], one `match` to check against the table), its
//! message (its `Display`) and its headers (`Retry-After`, `RateLimit-*`). Rendered into the
//! envelope in exactly one place: [`GatewayError::into_response`].

use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode, header};

use crate::envelope::error_response;
use crate::refusal::{Refusal, Refused};
use crate::svc::{BoxFuture, Resp};

/// What a pipeline's service returns: an answer, or a refusal still to be rendered (once, by
/// admission: see `layers::admit`).
pub(crate) type GatewayFuture = BoxFuture<Result<Resp, GatewayError>>;
use crate::upstream::client::UpstreamError;

/// The upstream's "too frequent, try later" code, which the gateway's own 429s share.
pub(crate) const TOO_FREQUENT: i64 = 220025;

/// The `RateLimit-Policy` and `RateLimit` headers (IETF httpapi ratelimit-headers draft) of a
/// rate-limited create, already rendered.
#[derive(Debug, Clone, Default)]
pub(crate) struct RateLimitHeaders {
    pub(crate) policy: Option<HeaderValue>,
    pub(crate) state: Option<HeaderValue>,
}

impl RateLimitHeaders {
    pub(crate) fn apply(&self, resp: &mut Resp) {
        let headers = resp.headers_mut();
        if let Some(v) = &self.policy {
            headers.insert(HeaderName::from_static("ratelimit-policy"), v.clone());
        }
        if let Some(v) = &self.state {
            headers.insert(HeaderName::from_static("ratelimit"), v.clone());
        }
    }
}

/// Why a create is asked to retry shortly (409, code 1005).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StillRunning {
    /// The first request under this `Idempotency-Key` is in flight.
    KeyInFlight,
    /// An identical purchase is being made, and may own the disk a reconciliation would find.
    IdenticalBeingMade,
    /// Another retry is checking what an unknown-outcome attempt made.
    BeingChecked,
    /// Another retry settled the record since this one looked.
    SettledMeanwhile,
}

/// Why the disk an unknown-outcome create may have made could not be looked for (503, code 1005).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SearchFailed {
    ListUnreadable,
    TookTooLong,
}

impl SearchFailed {
    /// In one word (a span's `error.type`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SearchFailed::ListUnreadable => "list_unreadable",
            SearchFailed::TookTooLong => "took_too_long",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum GatewayError {
    #[error("missing or unknown client key: send Authorization: Bearer <key>")]
    Unauthorized,
    #[error("this client may not call route {0}")]
    Forbidden(&'static str),
    #[error("not a route of this gateway: {0}")]
    NotFound(String),
    #[error("{msg}")]
    BadRequest { code: i64, msg: String },
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("gateway overloaded: too many requests in flight, retry shortly")]
    Overloaded,
    #[error("request took longer than the gateway's request timeout")]
    RequestTimeout,
    #[error("no upstream token: {0}")]
    NoToken(crate::upstream::token::TokenError),
    #[error("upstream unreachable or answered badly: {msg}")]
    UpstreamUnavailable {
        msg: String,
        /// The request had been sent: the upstream may have carried it out.
        sent: bool,
    },
    #[error("upstream did not answer in time")]
    UpstreamTimeout,
    #[error(
        "the fleet's shared state (Redis) is unavailable, so this {0} is refused: without the shared \
         records a duplicate purchase cannot be ruled out; nothing was sent upstream, retry shortly"
    )]
    SharedStateDown(&'static str),
    #[error("request body not received within {0:?}: send the whole body promptly")]
    BodyTimeout(Duration),
    #[error(
        "this client has {0} requests in flight, its share of the gateway: retry after the \
         current ones finish"
    )]
    ClientOverloaded(usize),
    #[error(
        "this client may not lease the upstream token: its [[clients]] entry needs \
         token_lease = true"
    )]
    LeaseNotGranted,

    // Create protection: the rate, the spending caps, the records.
    #[error(
        "too many {route} requests for this {scope}: over {count} per {period:?}; retry in {retry_after}s"
    )]
    RateLimited {
        route: &'static str,
        /// `account` or `client`.
        scope: &'static str,
        count: u32,
        period: Duration,
        retry_after: u64,
        headers: Box<RateLimitHeaders>,
    },
    #[error(
        "the upstream refused {route} as too frequent for {max_wait:?}; retry in {retry_after}s"
    )]
    UpstreamTooFrequent {
        route: &'static str,
        max_wait: Duration,
        retry_after: u64,
        headers: Box<RateLimitHeaders>,
    },
    #[error(
        "spending guard: the {cap} cap of {limit} for {scope} {who:?} is reached; it resets in {}",
        humantime::format_duration(Duration::from_secs(*retry_after))
    )]
    SpendingCap {
        cap: &'static str,
        limit: u64,
        scope: &'static str,
        who: String,
        retry_after: u64,
    },
    #[error(
        "this client holds {max} live idempotency and de-duplication records (create.max_records_per_client): \
         nothing was sent upstream. Retry {route} in {retry_after}s, when the oldest expires, or repeat earlier \
         Idempotency-Keys instead of new ones"
    )]
    RecordsFull {
        route: &'static str,
        max: u64,
        retry_after: u64,
    },
    #[error(
        "too many rejected-token reports from this client: at most {count} per {} (burst {burst}); retry in {retry_after}s",
        humantime::format_duration(*period)
    )]
    RejectionsTooFast {
        count: u32,
        period: Duration,
        burst: u32,
        retry_after: u64,
    },
    #[error(
        "this Idempotency-Key was used with a different request; use a new key for a new purchase"
    )]
    IdempotencyMismatch,
    #[error("{}", match .0 {
        StillRunning::KeyInFlight => "a request with this Idempotency-Key is still being processed; retry shortly",
        StillRunning::IdenticalBeingMade => "an earlier create with this request has an unknown outcome, and an identical \
            purchase is still being made; retry shortly",
        StillRunning::BeingChecked => "an earlier attempt of this request has an unknown outcome and is being checked; retry shortly",
        StillRunning::SettledMeanwhile => "an earlier attempt of this request was settled meanwhile; retry to get its answer",
    })]
    StillRunning(StillRunning),
    #[error(
        "an earlier {0} with this request has an unknown outcome: check the host list (mypage) before \
         buying again; this record expires after the idempotency lifetime"
    )]
    CannotReconcile(&'static str),
    #[error("{}", match .0 {
        SearchFailed::ListUnreadable => "an earlier create with this request has an unknown outcome, and the disk list could not be \
            read to find it; retry shortly",
        SearchFailed::TookTooLong => "an earlier create with this request has an unknown outcome, and the \
            search for its disk took too long; retry shortly",
    })]
    SearchFailed(SearchFailed),
    #[error(
        "the gateway's shared store (Redis) lost its data a moment ago, so it cannot tell whether this {route} \
         is a retry of one already made: nothing was sent upstream. Check the disk list if this may be a \
         retry, or send it again in {retry_after}s"
    )]
    RecordsLost {
        route: &'static str,
        retry_after: u64,
    },
    #[error(
        "the gateway's shared store (Redis) runs with maxmemory-policy {policy}, which may evict idempotency \
         records, so a retry of this {route} could buy again: nothing was sent upstream. Redis's \
         maxmemory-policy must be noeviction (operators: see the gateway's /readyz)"
    )]
    MayEvict { route: &'static str, policy: String },
    #[error(
        "the upstream did not answer after {route} was sent: the purchase may exist. Do not create again: \
         {}, and the gateway will find it or, if it was not made, make it",
        if *keyed { "retry with the same Idempotency-Key" } else { "retry the same request" }
    )]
    OutcomeUnknown { route: &'static str, keyed: bool },
    #[error(
        "the purchase ledger is unavailable, so this {0} is refused: every purchase is recorded \
         before it is made; nothing was sent upstream, retry shortly"
    )]
    LedgerDown(&'static str),

    // The admin listener's own errors.
    #[error("not an admin endpoint")]
    NotAdmin,
    #[error("admin endpoints are disabled: set [admin] key_sha256")]
    AdminDisabled,
    #[error("missing or wrong admin key")]
    AdminUnauthorized,
    #[error("no such admin endpoint")]
    NoAdminEndpoint,
    #[error("{0}")]
    ReloadUnavailable(String),
    #[error("the configuration does not check, nothing changed: {0}")]
    ConfigInvalid(String),
    #[error("{0}")]
    ReloadStuck(String),
    #[error("no purchase {0} in the ledger")]
    NoSuchPurchase(String),
    #[error("the purchase ledger cannot be read: {0}; retry shortly")]
    LedgerUnreadable(String),
}

/// What a client over its in-flight share is told to wait, in seconds.
pub(crate) const CLIENT_OVERLOADED_RETRY_AFTER: &str = "1";

/// An upstream call that failed: a timeout is told apart; anything else says whether the request
/// had been sent.
impl From<UpstreamError> for GatewayError {
    fn from(e: UpstreamError) -> Self {
        match e {
            UpstreamError::Timeout(_) => GatewayError::UpstreamTimeout,
            other => GatewayError::UpstreamUnavailable {
                sent: other.outcome_unknown(),
                msg: other.to_string(),
            },
        }
    }
}

impl GatewayError {
    /// The HTTP status and envelope code of CONTRACT.md's table, row by row.
    pub(crate) fn status_and_code(&self) -> (StatusCode, i64) {
        use GatewayError as E;
        match self {
            E::Unauthorized | E::AdminUnauthorized => (StatusCode::UNAUTHORIZED, 401),
            E::Forbidden(_) | E::LeaseNotGranted => (StatusCode::FORBIDDEN, 1001),
            E::NotFound(_) | E::NotAdmin | E::AdminDisabled | E::NoAdminEndpoint => {
                (StatusCode::NOT_FOUND, 404)
            }
            E::ReloadUnavailable(_) | E::NoSuchPurchase(_) => (StatusCode::NOT_FOUND, 404),
            E::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, *code),
            E::ConfigInvalid(_) => (StatusCode::BAD_REQUEST, 1007),
            E::ReloadStuck(_) => (StatusCode::SERVICE_UNAVAILABLE, 503),
            E::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, 1007),
            E::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, 1007),
            E::RateLimited { .. }
            | E::UpstreamTooFrequent { .. }
            | E::SpendingCap { .. }
            | E::RecordsFull { .. }
            | E::RejectionsTooFast { .. } => (StatusCode::TOO_MANY_REQUESTS, TOO_FREQUENT),
            E::StillRunning(_) | E::CannotReconcile(_) => (StatusCode::CONFLICT, 1005),
            E::IdempotencyMismatch => (StatusCode::UNPROCESSABLE_ENTITY, 1003),
            E::UpstreamUnavailable { .. } => (StatusCode::BAD_GATEWAY, 503),
            E::RequestTimeout | E::UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, 503),
            E::Overloaded | E::NoToken(_) | E::SharedStateDown(_) | E::ClientOverloaded(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, 503)
            }
            E::RecordsLost { .. }
            | E::MayEvict { .. }
            | E::SearchFailed(_)
            | E::LedgerDown(_)
            | E::LedgerUnreadable(_) => (StatusCode::SERVICE_UNAVAILABLE, 1005),
            E::OutcomeUnknown { .. } => (StatusCode::GATEWAY_TIMEOUT, 1005),
        }
    }

    /// The reason the console counts this refusal under (`GET /admin/clients`).
    pub(crate) fn refusal(&self) -> Refusal {
        use GatewayError as E;
        match self {
            E::RateLimited { .. }
            | E::UpstreamTooFrequent { .. }
            | E::RecordsFull { .. }
            | E::RejectionsTooFast { .. } => Refusal::RateLimited,
            E::SpendingCap { .. } => Refusal::Budget,
            E::BadRequest { .. }
            | E::PayloadTooLarge { .. }
            | E::BodyTimeout(_)
            | E::Forbidden(_)
            | E::LeaseNotGranted
            | E::Unauthorized
            | E::NotFound(_) => Refusal::Invalid,
            E::IdempotencyMismatch | E::StillRunning(_) | E::CannotReconcile(_) => {
                Refusal::Conflict
            }
            E::Overloaded | E::ClientOverloaded(_) => Refusal::TooManyInflight,
            E::LedgerDown(_) => Refusal::LedgerDown,
            E::RequestTimeout
            | E::NoToken(_)
            | E::UpstreamUnavailable { .. }
            | E::UpstreamTimeout
            | E::SharedStateDown(_)
            | E::SearchFailed(_)
            | E::RecordsLost { .. }
            | E::MayEvict { .. }
            | E::OutcomeUnknown { .. }
            | E::NotAdmin
            | E::AdminDisabled
            | E::AdminUnauthorized
            | E::NoAdminEndpoint
            | E::ReloadUnavailable(_)
            | E::ConfigInvalid(_)
            | E::ReloadStuck(_)
            | E::NoSuchPurchase(_)
            | E::LedgerUnreadable(_) => Refusal::Other,
        }
    }

    /// Whether the upstream call broke after the request was sent (timeout, reset, an answer
    /// that is not JSON): the upstream may have carried it out.
    pub(crate) fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            GatewayError::UpstreamTimeout | GatewayError::UpstreamUnavailable { sent: true, .. }
        )
    }

    /// Whether the request's body was abandoned midway, so the connection cannot be reused.
    pub(crate) fn abandons_body(&self) -> bool {
        matches!(self, GatewayError::BodyTimeout(_))
    }

    /// The error of a tower middleware (load shedding, the request timeout) as the gateway's: a
    /// timeout is 504, anything else says the gateway is overloaded. The gateway's own errors pass
    /// through the middleware boxed, and come out as they went in.
    pub(crate) fn from_tower(e: crate::svc::BoxError) -> GatewayError {
        match e.downcast::<GatewayError>() {
            Ok(own) => *own,
            Err(e) if e.is::<tower::timeout::error::Elapsed>() => GatewayError::RequestTimeout,
            Err(e) => {
                tracing::warn!(error = %e, "request rescued");
                GatewayError::Overloaded
            }
        }
    }

    /// The `Retry-After` this answer carries, in seconds.
    fn retry_after(&self) -> Option<u64> {
        use GatewayError as E;
        match self {
            E::RateLimited { retry_after, .. }
            | E::UpstreamTooFrequent { retry_after, .. }
            | E::SpendingCap { retry_after, .. }
            | E::RecordsFull { retry_after, .. }
            | E::RejectionsTooFast { retry_after, .. }
            | E::RecordsLost { retry_after, .. } => Some(*retry_after),
            E::StillRunning(_) | E::Overloaded | E::LedgerDown(_) => Some(1),
            E::NoToken(e) => Some(e.retry_after()),
            _ => None,
        }
    }

    /// The envelope answer; `request_id` becomes its `traceId`. It carries what it refused and
    /// why ([`Refused`]), for the per-client counts.
    pub(crate) fn into_response(self, request_id: &str) -> Resp {
        let (status, code) = self.status_and_code();
        let mut resp = error_response(status, code, &self.to_string(), request_id);
        resp.extensions_mut().insert(Refused {
            reason: self.refusal(),
            // An `OutcomeUnknown` answer is a retry's: it was sent before, as was a broken call.
            sent: self.outcome_unknown() || matches!(self, GatewayError::OutcomeUnknown { .. }),
        });
        if let GatewayError::ClientOverloaded(_) = self {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(CLIENT_OVERLOADED_RETRY_AFTER),
            );
        }
        if let Some(secs) = self.retry_after() {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let GatewayError::RateLimited { headers, .. }
        | GatewayError::UpstreamTooFrequent { headers, .. } = &self
        {
            headers.apply(&mut resp);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of each variant, with the words of the error table row (docs/clients.md) it answers.
    fn every_variant() -> Vec<(GatewayError, &'static str)> {
        use GatewayError as E;
        let d = Duration::from_secs(1);
        let rl = Box::<RateLimitHeaders>::default();
        vec![
            (E::Unauthorized, "missing / wrong client key"),
            (
                E::Forbidden("disk.info"),
                "route not allowed for this client",
            ),
            (E::NotFound("/x".into()), "unknown route"),
            (
                E::BadRequest {
                    code: 1007,
                    msg: "m".into(),
                },
                "undeclared, repeated or empty query parameter",
            ),
            (
                E::BadRequest {
                    code: 220013,
                    msg: "m".into(),
                },
                "invalid create (checked before any upstream call)",
            ),
            (E::PayloadTooLarge { limit: 1 }, "body larger than"),
            (E::Overloaded, "more than `max_concurrency` in flight"),
            (E::RequestTimeout, "upstream or whole request timed out"),
            (
                E::NoToken(crate::upstream::token::TokenError::NotHeld),
                "no upstream token",
            ),
            (
                E::UpstreamUnavailable {
                    msg: "x".into(),
                    sent: false,
                },
                "upstream unreachable",
            ),
            (E::UpstreamTimeout, "upstream or whole request timed out"),
            (
                E::SharedStateDown("disk.create"),
                "shared records (Redis) are unavailable",
            ),
            (E::BodyTimeout(d), "body not received within"),
            (E::ClientOverloaded(1), "of one client in flight"),
            (
                E::LeaseNotGranted,
                "token lease without `token_lease = true`",
            ),
            (
                E::RateLimited {
                    route: "disk.create",
                    scope: "client",
                    count: 1,
                    period: d,
                    retry_after: 1,
                    headers: rl.clone(),
                },
                "create over the rate after `max_wait`",
            ),
            (
                E::UpstreamTooFrequent {
                    route: "disk.create",
                    max_wait: d,
                    retry_after: 1,
                    headers: rl,
                },
                "create over the rate after `max_wait`",
            ),
            (
                E::SpendingCap {
                    cap: "creates_per_hour",
                    limit: 1,
                    scope: "client",
                    who: "c".into(),
                    retry_after: 1,
                },
                "over a spending cap",
            ),
            (
                E::RecordsFull {
                    route: "disk.create",
                    max: 1,
                    retry_after: 1,
                },
                "over `max_records_per_client`",
            ),
            (
                E::RejectionsTooFast {
                    count: 1,
                    period: d,
                    burst: 1,
                    retry_after: 1,
                },
                "rejected-token reports too fast",
            ),
            (
                E::IdempotencyMismatch,
                "same `Idempotency-Key`, different request",
            ),
            (
                E::StillRunning(StillRunning::KeyInFlight),
                "same `Idempotency-Key`, request still in flight",
            ),
            (
                E::StillRunning(StillRunning::IdenticalBeingMade),
                "same `Idempotency-Key`, request still in flight",
            ),
            (
                E::StillRunning(StillRunning::BeingChecked),
                "same `Idempotency-Key`, request still in flight",
            ),
            (
                E::StillRunning(StillRunning::SettledMeanwhile),
                "same `Idempotency-Key`, request still in flight",
            ),
            (
                E::CannotReconcile("host.create_rent"),
                "retry of a host create with an unknown outcome",
            ),
            (
                E::SearchFailed(SearchFailed::ListUnreadable),
                "disk list cannot be read or searched in time",
            ),
            (
                E::SearchFailed(SearchFailed::TookTooLong),
                "disk list cannot be read or searched in time",
            ),
            (
                E::RecordsLost {
                    route: "disk.create",
                    retry_after: 1,
                },
                "just after Redis lost its data",
            ),
            (
                E::MayEvict {
                    route: "disk.create",
                    policy: "allkeys-lru".into(),
                },
                "`maxmemory-policy` could evict records",
            ),
            (
                E::OutcomeUnknown {
                    route: "disk.create",
                    keyed: true,
                },
                "create sent upstream, no answer",
            ),
            (
                E::LedgerDown("disk.create"),
                "purchase ledger cannot be written",
            ),
            (E::NotAdmin, "admin: endpoint disabled or unknown"),
            (E::AdminDisabled, "admin: endpoint disabled or unknown"),
            (E::AdminUnauthorized, "missing / wrong admin key"),
            (E::NoAdminEndpoint, "admin: endpoint disabled or unknown"),
            (E::ReloadUnavailable("x".into()), "reload not available"),
            (
                E::ConfigInvalid("x".into()),
                "reloaded configuration that does not check",
            ),
            (
                E::ReloadStuck("x".into()),
                "admin: reload whose files do not answer",
            ),
            (E::NoSuchPurchase("x".into()), "admin: a purchase id not in"),
            (
                E::LedgerUnreadable("x".into()),
                "admin: the purchase ledger cannot be read",
            ),
        ]
    }

    /// The error table of docs/clients.md: each situation with the (HTTP, code) answers it allows. A cell
    /// "403; 429" pairs with "1001; 220025" in order; otherwise every code goes with the one status.
    fn table() -> Vec<(String, Vec<(u16, i64)>)> {
        let doc = include_str!("../docs/clients.md");
        let start = doc
            .find("| situation | HTTP | code |")
            .expect("docs/clients.md has the error table");
        let numbers = |c: &str| -> Vec<i64> {
            c.split(|ch: char| !ch.is_ascii_digit())
                .filter_map(|n| n.parse().ok())
                .collect()
        };
        doc[start..]
            .lines()
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split(" | ").collect();
                let statuses = numbers(cells[1]);
                let codes = numbers(cells[2]);
                let answers = if statuses.len() > 1 {
                    statuses.iter().map(|s| *s as u16).zip(codes).collect()
                } else {
                    codes.into_iter().map(|c| (statuses[0] as u16, c)).collect()
                };
                (cells[0].trim().to_string(), answers)
            })
            .collect()
    }

    #[test]
    fn every_variant_is_counted_under_a_reason_and_the_answer_says_which() {
        for (e, _) in every_variant() {
            let reason = e.refusal();
            let expected = match &e {
                GatewayError::RateLimited { .. } | GatewayError::RecordsFull { .. } => {
                    Some(Refusal::RateLimited)
                }
                GatewayError::SpendingCap { .. } => Some(Refusal::Budget),
                GatewayError::IdempotencyMismatch | GatewayError::StillRunning(_) => {
                    Some(Refusal::Conflict)
                }
                GatewayError::ClientOverloaded(_) | GatewayError::Overloaded => {
                    Some(Refusal::TooManyInflight)
                }
                GatewayError::LedgerDown(_) => Some(Refusal::LedgerDown),
                GatewayError::BadRequest { .. } => Some(Refusal::Invalid),
                GatewayError::UpstreamTimeout => Some(Refusal::Other),
                _ => None,
            };
            if let Some(expected) = expected {
                assert_eq!(reason, expected, "{e:?}");
            }
            let sent = e.outcome_unknown();
            let resp = e.into_response("id");
            let refused = resp.extensions().get::<Refused>().copied().unwrap();
            assert_eq!(
                refused,
                Refused {
                    reason,
                    sent: refused.sent
                }
            );
            assert!(refused.sent || !sent);
        }
    }

    #[test]
    fn every_variant_answers_as_its_row_of_the_error_table() {
        let table = table();
        for (err, situation) in every_variant() {
            let (status, code) = err.status_and_code();
            let allowed: Vec<(u16, i64)> = table
                .iter()
                .filter(|(s, _)| s.contains(situation))
                .flat_map(|(_, a)| a.iter().copied())
                .collect();
            assert!(!allowed.is_empty(), "no row for {situation:?}");
            assert!(
                allowed.contains(&(status.as_u16(), code)),
                "{err:?} answers {status} / {code}, the table's {situation:?} says {allowed:?}"
            );
        }
    }

    #[test]
    fn the_rendered_answer_is_the_envelope_with_its_headers() {
        for (err, _) in every_variant() {
            let (status, code) = err.status_and_code();
            let msg = err.to_string();
            let retry = err.retry_after();
            let resp = err.clone().into_response("rid");
            assert_eq!(resp.status(), status);
            let v: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
            assert_eq!(v["code"], code);
            assert_eq!(v["success"], false);
            assert_eq!(v["msg"], msg.as_str());
            assert!(v["data"].is_null());
            assert_eq!(v["traceId"], "rid");
            let told = resp
                .headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.to_str().unwrap().to_string());
            match (&err, retry) {
                (GatewayError::ClientOverloaded(_), _) => {
                    assert_eq!(told.as_deref(), Some(CLIENT_OVERLOADED_RETRY_AFTER));
                }
                (_, Some(secs)) => assert_eq!(told, Some(secs.to_string()), "{err:?}"),
                (_, None) => assert_eq!(told, None, "{err:?}"),
            }
        }
    }

    #[test]
    fn a_rate_limited_answer_carries_the_ratelimit_headers() {
        let err = GatewayError::RateLimited {
            route: "disk.create",
            scope: "account",
            count: 2,
            period: Duration::from_secs(60),
            retry_after: 30,
            headers: Box::new(RateLimitHeaders {
                policy: Some(HeaderValue::from_static("\"tenant\";q=2;w=60")),
                state: Some(HeaderValue::from_static("\"tenant\";r=0;t=30")),
            }),
        };
        let resp = err.into_response("rid");
        assert_eq!(resp.headers()["retry-after"], "30");
        assert_eq!(resp.headers()["ratelimit-policy"], "\"tenant\";q=2;w=60");
        assert_eq!(resp.headers()["ratelimit"], "\"tenant\";r=0;t=30");
    }
}
