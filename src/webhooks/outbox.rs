//! The outbox: the `webhook_outbox` table beside the ledger (migration `0002_outbox.sql`). An
//! event is written here before any delivery is tried, so it outlives a receiver that is down
//! and a gateway that restarts. A replica takes a row for a while (its lease, `claimed_until`)
//! with a conditional `UPDATE` whose affected-row count says whether it won: of a fleet sharing
//! one PostgreSQL ledger, one replica delivers each row, on SQLite and PostgreSQL alike.

use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

/// One event for one receiver, as written.
#[derive(Debug, Clone)]
pub(crate) struct NewRow {
    /// Time-sortable (the ledger's ids): the order rows are delivered in, and the `webhook-id`.
    pub(crate) id: String,
    /// The receiver's URL.
    pub(crate) webhook: String,
    pub(crate) event: &'static str,
    pub(crate) body: String,
    pub(crate) created_at_ms: u64,
    /// Rows sharing a key (one purchase's events) are delivered one after another, in id order.
    pub(crate) ordering_key: Option<String>,
}

/// A row due for delivery.
#[derive(Debug, Clone)]
pub(crate) struct Due {
    pub(crate) id: String,
    pub(crate) webhook: String,
    pub(crate) body: String,
    pub(crate) created_at_ms: u64,
    pub(crate) attempts: u32,
}

fn due(row: &AnyRow) -> Result<Due, sqlx::Error> {
    let created: i64 = row.try_get("created_at")?;
    let attempts: i64 = row.try_get("attempts")?;
    Ok(Due {
        id: row.try_get("id")?,
        webhook: row.try_get("webhook")?,
        body: row.try_get("body")?,
        created_at_ms: created.max(0) as u64,
        attempts: u32::try_from(attempts.max(0)).unwrap_or(u32::MAX),
    })
}

/// Writes the rows, all or none.
pub(crate) async fn enqueue(pool: &AnyPool, rows: &[NewRow]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for r in rows {
        sqlx::query(
            "INSERT INTO webhook_outbox (id, webhook, event, body, created_at, attempts, next_at, \
             ordering_key) VALUES ($1, $2, $3, $4, $5, 0, $6, $7)",
        )
        .bind(&r.id)
        .bind(&r.webhook)
        .bind(r.event)
        .bind(&r.body)
        .bind(r.created_at_ms as i64)
        .bind(r.created_at_ms as i64)
        .bind(&r.ordering_key)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Rows due at `now_ms` that nobody holds, oldest first, at most `limit`; of the rows sharing
/// an ordering key, only the first one not yet done.
pub(crate) async fn due_rows(
    pool: &AnyPool,
    now_ms: u64,
    limit: u32,
) -> Result<Vec<Due>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT o.id, o.webhook, o.body, o.created_at, o.attempts FROM webhook_outbox o \
         WHERE o.delivered_at IS NULL AND o.dropped_at IS NULL AND o.next_at <= $1 \
         AND (o.claimed_until IS NULL OR o.claimed_until < $2) \
         AND NOT EXISTS (SELECT 1 FROM webhook_outbox p WHERE p.webhook = o.webhook \
           AND p.ordering_key = o.ordering_key AND p.id < o.id \
           AND p.delivered_at IS NULL AND p.dropped_at IS NULL) \
         ORDER BY o.id LIMIT $3",
    )
    .bind(now_ms as i64)
    .bind(now_ms as i64)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    rows.iter().map(due).collect()
}

/// Takes row `id` until `until_ms`, unless another replica holds it (or it is done): whether
/// this replica now holds it.
pub(crate) async fn claim(
    pool: &AnyPool,
    id: &str,
    now_ms: u64,
    until_ms: u64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE webhook_outbox SET claimed_until = $1 WHERE id = $2 \
         AND delivered_at IS NULL AND dropped_at IS NULL AND next_at <= $3 \
         AND (claimed_until IS NULL OR claimed_until < $4)",
    )
    .bind(until_ms as i64)
    .bind(id)
    .bind(now_ms as i64)
    .bind(now_ms as i64)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The receiver took row `id`.
pub(crate) async fn delivered(pool: &AnyPool, id: &str, now_ms: u64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE webhook_outbox SET delivered_at = $1, claimed_until = NULL, \
         attempts = attempts + 1 WHERE id = $2",
    )
    .bind(now_ms as i64)
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Row `id` failed its attempt: it is tried again at `next_ms`.
pub(crate) async fn retry_at(
    pool: &AnyPool,
    id: &str,
    attempts: u32,
    next_ms: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE webhook_outbox SET attempts = $1, next_at = $2, claimed_until = NULL WHERE id = $3",
    )
    .bind(i64::from(attempts))
    .bind(next_ms as i64)
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Row `id` is given up: it failed for longer than deliveries are tried.
pub(crate) async fn dropped(
    pool: &AnyPool,
    id: &str,
    attempts: u32,
    now_ms: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE webhook_outbox SET dropped_at = $1, attempts = $2, claimed_until = NULL \
         WHERE id = $3",
    )
    .bind(now_ms as i64)
    .bind(i64::from(attempts))
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Rows not yet delivered nor given up, for the whole fleet.
pub(crate) async fn backlog(pool: &AnyPool) -> Result<i64, sqlx::Error> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n FROM webhook_outbox WHERE delivered_at IS NULL \
         AND dropped_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    row.try_get("n")
}

/// Removes rows done (delivered or given up) before `before_ms`.
pub(crate) async fn remove_done_before(pool: &AnyPool, before_ms: u64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM webhook_outbox WHERE (delivered_at IS NOT NULL AND delivered_at < $1) \
         OR (dropped_at IS NOT NULL AND dropped_at < $2)",
    )
    .bind(before_ms as i64)
    .bind(before_ms as i64)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ledger::Ledger;

    /// A fresh SQLite ledger, removed with its folder when dropped.
    struct Fresh(Ledger, std::path::PathBuf);

    impl Drop for Fresh {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }

    async fn fresh() -> Fresh {
        let dir = std::env::temp_dir().join(format!("fgw-outbox-{:016x}", rand::random::<u64>()));
        let ledger = Ledger::sqlite(&dir.join("l.sqlite"), Duration::from_secs(2))
            .await
            .unwrap();
        Fresh(ledger, dir)
    }

    fn row(id: &str, key: Option<&str>) -> NewRow {
        NewRow {
            id: id.into(),
            webhook: "http://127.0.0.1:1/h".into(),
            event: "purchase.bought",
            body: "{}".into(),
            created_at_ms: 1000,
            ordering_key: key.map(str::to_owned),
        }
    }

    #[tokio::test]
    async fn a_row_is_held_by_one_claim_until_its_lease_ends() {
        let f = fresh().await;
        let pool = f.0.pool();
        enqueue(pool, &[row("a", None)]).await.unwrap();
        assert!(claim(pool, "a", 2000, 3000).await.unwrap());
        assert!(!claim(pool, "a", 2500, 3500).await.unwrap(), "held");
        assert!(due_rows(pool, 2500, 10).await.unwrap().is_empty());
        assert!(
            claim(pool, "a", 3001, 4000).await.unwrap(),
            "the lease ran out"
        );
        delivered(pool, "a", 3100).await.unwrap();
        assert!(!claim(pool, "a", 9000, 9500).await.unwrap(), "done");
        assert_eq!(backlog(pool).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_purchases_later_event_waits_for_its_earlier_one() {
        let f = fresh().await;
        let pool = f.0.pool();
        enqueue(
            pool,
            &[row("1", Some("p")), row("2", Some("p")), row("3", None)],
        )
        .await
        .unwrap();
        let ids = |rows: Vec<Due>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(due_rows(pool, 2000, 10).await.unwrap()), ["1", "3"]);
        // A failed attempt keeps the later one waiting.
        retry_at(pool, "1", 1, 5000).await.unwrap();
        assert_eq!(ids(due_rows(pool, 2000, 10).await.unwrap()), ["3"]);
        assert_eq!(backlog(pool).await.unwrap(), 3);
        delivered(pool, "1", 5000).await.unwrap();
        assert_eq!(ids(due_rows(pool, 5000, 10).await.unwrap()), ["2", "3"]);
        // A dropped row no longer holds its successors back, nor counts as backlog.
        dropped(pool, "2", 9, 6000).await.unwrap();
        assert_eq!(backlog(pool).await.unwrap(), 1);
        assert_eq!(remove_done_before(pool, 7000).await.unwrap(), 2);
    }
}
