//! Writes: an entry opens before the upstream call, settles with its outcome, gains its amount
//! once known; the sweep marks entries left open by a dead replica, retention removes old ones.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::db::{Ledger, LedgerError};
use super::entry::{NewEntry, Outcome, Settlement};

/// An entry the sweep marked unknown: what a `purchase.unknown` notification says of it.
#[derive(Debug, Clone)]
pub(crate) struct Swept {
    pub(crate) id: String,
    pub(crate) account: String,
    pub(crate) client: String,
    pub(crate) route: String,
    pub(crate) reason: Option<String>,
}

fn swept(rows: &[AnyRow]) -> Result<Vec<Swept>, LedgerError> {
    let one = |r: &AnyRow| -> Result<Swept, sqlx::Error> {
        Ok(Swept {
            id: r.try_get("id")?,
            account: r.try_get("account")?,
            client: r.try_get("client")?,
            route: r.try_get("route")?,
            reason: r.try_get("reason")?,
        })
    };
    Ok(rows.iter().map(one).collect::<Result<_, _>>()?)
}

fn opt_u64(v: Option<u64>) -> Option<i64> {
    v.map(|v| v as i64)
}

impl Ledger {
    /// Writes a new, open entry.
    pub(crate) async fn open(&self, e: &NewEntry) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO purchases (id, at, account, client, route, order_json, gb, \
             idempotency_key, fingerprint, request_id, traceparent, replica, outcome) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&e.id)
        .bind(e.at_ms as i64)
        .bind(&e.account)
        .bind(&e.client)
        .bind(&e.route)
        .bind(&e.order)
        .bind(opt_u64(e.gb))
        .bind(&e.idempotency_key)
        .bind(&e.fingerprint)
        .bind(&e.request_id)
        .bind(&e.traceparent)
        .bind(&e.replica)
        .bind(Outcome::Open.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Writes an entry's outcome. Settling again overwrites (an `unknown` later reconciled);
    /// fields the settlement leaves unset keep what they held.
    pub(crate) async fn settle(&self, id: &str, s: &Settlement) -> Result<(), LedgerError> {
        let (status, body) = match &s.answer {
            Some(a) => (Some(i64::from(a.status)), Some(a.body.as_str())),
            None => (None, None),
        };
        sqlx::query(
            "UPDATE purchases SET outcome = $1, settled_at = $2, \
             resource_id = COALESCE($3, resource_id), upstream_code = COALESCE($4, upstream_code), \
             reason = COALESCE($5, reason), bought_by = COALESCE($6, bought_by), \
             answer_status = COALESCE($7, answer_status), answer_body = COALESCE($8, answer_body) \
             WHERE id = $9",
        )
        .bind(s.outcome().as_str())
        .bind(s.settled_at_ms as i64)
        .bind(&s.resource_id)
        .bind(s.upstream_code)
        .bind(&s.reason)
        .bind(&s.bought_by)
        .bind(status)
        .bind(body)
        .bind(id)
        .execute(&self.rest)
        .await?;
        Ok(())
    }

    /// Records the upstream's price of what an entry bought, as the upstream wrote it.
    pub(crate) async fn set_amount(&self, id: &str, amount: &str) -> Result<(), LedgerError> {
        sqlx::query("UPDATE purchases SET amount = $1 WHERE id = $2")
            .bind(amount)
            .bind(id)
            .execute(&self.rest)
            .await?;
        Ok(())
    }

    /// Entries still open that were opened before `before_ms`: their replica is gone (or its
    /// outcome update never landed), so what they bought is unknown until a retry settles them.
    pub(crate) async fn mark_unknown(
        &self,
        before_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<Swept>, LedgerError> {
        let done = sqlx::query(
            "UPDATE purchases SET outcome = $1, settled_at = $2, \
             reason = COALESCE(reason, $3) WHERE outcome = $4 AND at < $5 \
             RETURNING id, account, client, route, reason",
        )
        .bind(Outcome::Unknown.as_str())
        .bind(now_ms as i64)
        .bind("left open: the replica stopped before the outcome was written")
        .bind(Outcome::Open.as_str())
        .bind(before_ms as i64)
        .fetch_all(&self.rest)
        .await?;
        swept(&done)
    }

    /// Entries still open that `replica` opened before `before_ms`, when it started again: the
    /// process that wrote them is gone, so what they bought is unknown.
    pub(crate) async fn mark_unknown_of(
        &self,
        replica: &str,
        before_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<Swept>, LedgerError> {
        let done = sqlx::query(
            "UPDATE purchases SET outcome = $1, settled_at = $2, \
             reason = COALESCE(reason, $3) WHERE outcome = $4 AND replica = $5 AND at < $6 \
             RETURNING id, account, client, route, reason",
        )
        .bind(Outcome::Unknown.as_str())
        .bind(now_ms as i64)
        .bind("left open: the replica restarted before the outcome was written")
        .bind(Outcome::Open.as_str())
        .bind(replica)
        .bind(before_ms as i64)
        .fetch_all(&self.rest)
        .await?;
        swept(&done)
    }

    /// Removes the entries that arrived before `before_ms` (retention).
    pub(crate) async fn remove_before(&self, before_ms: u64) -> Result<u64, LedgerError> {
        let done = sqlx::query("DELETE FROM purchases WHERE at < $1")
            .bind(before_ms as i64)
            .execute(&self.rest)
            .await?;
        Ok(done.rows_affected())
    }
}
