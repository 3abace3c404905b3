//! The key-less flow: identical creates (of one client, or one account with `dedup_scope =
//! "account"`) collapse: while one is in flight the others wait for its answer, fleet-wide, and
//! for `dedup_window` after it a repeat gets it too. A record with an unknown outcome is settled
//! first ([`super::settle`]).

use std::convert::Infallible;
use std::time::Duration;

use tower::Service;

use crate::clock::now_ms;
use crate::error::GatewayError;
use crate::protect::records::State;
use crate::svc::{Req, Resp};

use super::protocol::{Claim, Keep, records_lost};
use super::services::ClaimFirst;
use super::settle::{Settled, Unknown};
use super::{Flow, Intent, RecordKey, records_down, replay, retried_unknown};

impl Flow {
    /// The key-less flow, `lost` the records-lost grace left (see [`Flow::run`]).
    pub(super) async fn unkeyed<S>(
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
        let (records, route, policy) = (&self.records, intent.route, &intent.policy);
        let Ok(record) = records.get(rkey.as_str()).await else {
            return Err(records_down(route));
        };
        if let (None, Some(left)) = (&record, lost) {
            return Err(records_lost(route, left));
        }
        // Whether an unknown outcome was found not made, and this request makes it again.
        let mut retried = false;
        if let Some(record) = record {
            match record.settled_state(self.max_age, now_ms()) {
                State::Done(answer) => {
                    self.count(intent, "replayed");
                    return Ok(replay(&answer));
                }
                State::Unknown { sent_at_ms } => {
                    let unknown = Unknown {
                        rkey,
                        sent_at_ms,
                        done_ttl: policy.dedup_window,
                        keyed: false,
                    };
                    let settled = self.settle_unknown(inner.clone(), &req, intent, &unknown);
                    // Not made: the record is gone, and this request makes it.
                    if let Settled::Answer(resp) = settled.await? {
                        return Ok(resp);
                    }
                    retried = true;
                }
                // Being carried out here or on another replica: join it below.
                State::InFlight { .. } => {}
            }
        }
        let keep = Keep {
            rkey: rkey.clone(),
            fingerprint: intent.fingerprint.as_str().into(),
            final_ttl: policy.dedup_window,
            unknown_ttl: policy.idempotency_ttl,
            leased: None,
            owner: intent.owner.clone(),
        };
        // The record is claimed inside the flight, so that one execution in the fleet runs and
        // the others (here or on other replicas) get its answer.
        let claimed = ClaimFirst {
            claim: Claim {
                records: records.clone(),
                rkey: rkey.clone(),
                fingerprint: intent.fingerprint.clone(),
                ttl: policy.idempotency_ttl,
                max_age: self.max_age,
                lease: self.lease,
                owner: intent.owner.clone(),
                max_records: intent.max_records,
                route,
            }
            .into(),
            inner: self.bounded(inner, intent),
        };
        let (role, outcome) = self.execute(intent, claimed, req, rkey.clone(), keep).await;
        if let Some(o) = outcome.as_ref().filter(|o| o.replayed) {
            self.count(intent, "replayed");
            return o
                .answer
                .as_ref()
                .map(crate::cache::answer::Answer::to_response)
                .map_err(Clone::clone);
        }
        self.answer(intent, role, outcome.as_deref(), false)
            .map(|resp| retried_unknown(resp, retried))
    }
}
