//! The keyed flow: a create under an `Idempotency-Key`. The first request under the key runs and
//! its final answer is kept for `idempotency_ttl`; a repeat with the same body replays it, with
//! another body gets 422 (code 1003), and while the first is in flight gets 409 (code 1005). A
//! record with an unknown outcome is settled first ([`super::settle`]).

use std::convert::Infallible;
use std::time::Duration;

use tower::Service;

use crate::clock::now_ms;
use crate::error::{GatewayError, StillRunning};
use crate::protect::records::{Begin, Record, State, in_flight};
use crate::svc::{Req, Resp};

use super::protocol::{self, Keep, records_lost};
use super::settle::{Settled, Unknown};
use super::{Flow, Intent, RecordKey, records_down, replay, retried_unknown, unvouched};

impl Flow {
    /// The keyed flow, `lost` the records-lost grace left (see [`Flow::run`]).
    pub(super) async fn keyed<S>(
        &self,
        inner: S,
        req: Req,
        intent: &Intent,
        rkey: &RecordKey,
        lost: Option<Duration>,
    ) -> Result<Resp, GatewayError>
    where
        S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send,
    {
        let (records, route) = (&self.records, intent.route);
        let policy = &intent.policy;
        let fingerprint = &intent.fingerprint;
        let started = in_flight(fingerprint, policy.idempotency_ttl, self.lease);
        let mut leased = Some(started.clone());
        // Whether an unknown outcome was found not made, and this request makes it again.
        let mut retried = false;
        let begun = match lost {
            // Only a record that survived may be answered; none is made meanwhile.
            Some(left) => match records.get(rkey.as_str()).await {
                Err(_) => return Err(records_down(route)),
                // The ledger may still know the key: its answer stands in for the record.
                Ok(None) => match self.prior(intent).await {
                    Some(r) => {
                        let _ = records.set(rkey.as_str(), r.clone()).await;
                        Ok(Begin::Exists(r))
                    }
                    None => return Err(records_lost(route, left)),
                },
                Ok(Some(r)) => Ok(Begin::Exists(r)),
            },
            None => records.begin(rkey.as_str(), started).await,
        };
        let mut record = match begun {
            Err(_) => return Err(records_down(route)),
            Ok(Begin::Started) => None,
            Ok(Begin::Exists(r)) => Some(r),
            Ok(unvouched_begin @ (Begin::Lost(_) | Begin::MayEvict(_))) => {
                return Err(unvouched(route, &unvouched_begin));
            }
        };
        if record.is_none()
            && let Some(prior) = self.prior(intent).await
        {
            // A new record, but the ledger knows the key from before the records were lost: the
            // earlier request's record takes the place of the one just begun.
            let _ = records.set(rkey.as_str(), prior.clone()).await;
            record = Some(prior);
        }
        if record.is_none() {
            let (max, ttl) = (intent.max_records, policy.idempotency_ttl);
            let owner = &intent.owner;
            if let Err(err) = protocol::hold(&**records, route, owner, rkey, ttl, max).await {
                // Refused before anything was sent: the record goes, as if never begun.
                let _ = records.remove(rkey.as_str()).await;
                return Err(err);
            }
        }
        if let Some(record) = record {
            if *record.fingerprint != **fingerprint {
                self.count(intent, "mismatch");
                return Err(GatewayError::IdempotencyMismatch);
            }
            match record.settled_state(self.max_age, now_ms()) {
                State::InFlight { .. } => {
                    self.count(intent, "conflict");
                    return Err(GatewayError::StillRunning(StillRunning::KeyInFlight));
                }
                State::Done(answer) => {
                    self.count(intent, "replayed");
                    return Ok(replay(&answer));
                }
                State::Unknown { sent_at_ms } => {
                    let unknown = Unknown {
                        rkey,
                        sent_at_ms,
                        done_ttl: policy.idempotency_ttl,
                        keyed: true,
                    };
                    // Not made: the record is reopened, and this request makes it under it.
                    match self
                        .settle_unknown(inner.clone(), &req, intent, &unknown)
                        .await?
                    {
                        Settled::Answer(resp) => return Ok(resp),
                        Settled::NotMade(reopened) => {
                            leased = reopened;
                            retried = true;
                        }
                    }
                }
            }
        }
        let keep = Keep {
            rkey: rkey.clone(),
            fingerprint: fingerprint.as_str().into(),
            final_ttl: policy.idempotency_ttl,
            unknown_ttl: policy.idempotency_ttl,
            leased,
            owner: intent.owner.clone(),
        };
        let started_ms = now_ms();
        let bounded = self.bounded(inner, intent);
        let (role, outcome) = self.execute(intent, bounded, req, rkey.clone(), keep).await;
        if outcome.is_none() {
            // The task died mid-way: the purchase may or may not exist, and the record must not
            // stay "in flight" for its whole lifetime.
            let unknown = Record {
                fingerprint: fingerprint.as_str().into(),
                state: State::Unknown {
                    sent_at_ms: started_ms,
                },
                ttl: policy.idempotency_ttl,
            };
            let _ = self.records.set(rkey.as_str(), unknown).await;
        }
        self.answer(intent, role, outcome.as_deref(), true)
            .map(|resp| retried_unknown(resp, retried))
    }
}
