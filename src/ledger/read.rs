//! Reads: a filtered, newest-first page of entries (cursor-paginated by id), one entry with those
//! answered from it, the earlier entry a retry may be answered from, and the rows spend sums read.

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::db::{Ledger, LedgerError};
use super::entry::{Entry, Outcome, Prior, StoredAnswer};

/// Which entries a listing holds; every field narrows it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub(crate) account: Option<String>,
    pub(crate) client: Option<String>,
    pub(crate) route: Option<String>,
    pub(crate) outcome: Option<Outcome>,
    /// Arrived at or after (epoch ms).
    pub(crate) since_ms: Option<u64>,
    /// Arrived before (epoch ms).
    pub(crate) until_ms: Option<u64>,
    pub(crate) key: Option<String>,
}

/// One page of a listing, and the cursor of the next (`None`: this was the last).
#[derive(Debug, Clone)]
pub(crate) struct Page {
    pub(crate) entries: Vec<Entry>,
    pub(crate) next: Option<String>,
}

/// What spend sums read of one entry.
#[derive(Debug, Clone)]
pub(crate) struct SpendRow {
    pub(crate) at_ms: i64,
    pub(crate) account: String,
    pub(crate) client: String,
    pub(crate) route: String,
    pub(crate) outcome: Outcome,
    pub(crate) gb: Option<i64>,
    pub(crate) amount: Option<String>,
}

const COLUMNS: &str = "id, at, settled_at, account, client, route, order_json, gb, \
    idempotency_key, request_id, traceparent, replica, outcome, resource_id, amount, \
    upstream_code, reason, bought_by";

fn entry(row: &AnyRow) -> Result<Entry, sqlx::Error> {
    let order: String = row.try_get("order_json")?;
    Ok(Entry {
        id: row.try_get("id")?,
        at: row.try_get("at")?,
        settled_at: row.try_get("settled_at")?,
        account: row.try_get("account")?,
        client: row.try_get("client")?,
        route: row.try_get("route")?,
        order: serde_json::from_str(&order).unwrap_or(serde_json::Value::String(order)),
        gb: row.try_get("gb")?,
        idempotency_key: row.try_get("idempotency_key")?,
        request_id: row.try_get("request_id")?,
        traceparent: row.try_get("traceparent")?,
        replica: row.try_get("replica")?,
        outcome: row.try_get("outcome")?,
        resource_id: row.try_get("resource_id")?,
        amount: row.try_get("amount")?,
        upstream_code: row.try_get("upstream_code")?,
        reason: row.try_get("reason")?,
        bought_by: row.try_get("bought_by")?,
    })
}

/// A WHERE clause with numbered parameters, and the values bound to them in order.
#[derive(Default)]
struct Where {
    terms: Vec<String>,
    texts: Vec<Bound>,
}

enum Bound {
    Text(String),
    Int(i64),
}

impl Where {
    fn text(&mut self, column: &str, value: &Option<String>) {
        if let Some(v) = value {
            self.texts.push(Bound::Text(v.clone()));
            self.terms.push(format!("{column} = ${}", self.texts.len()));
        }
    }

    fn int(&mut self, term: &str, value: Option<i64>) {
        if let Some(v) = value {
            self.texts.push(Bound::Int(v));
            self.terms.push(format!("{term} ${}", self.texts.len()));
        }
    }

    fn sql(&self) -> String {
        if self.terms.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.terms.join(" AND "))
        }
    }
}

fn filtered(f: &Filter) -> Where {
    let mut w = Where::default();
    w.text("account", &f.account);
    w.text("client", &f.client);
    w.text("route", &f.route);
    w.text("outcome", &f.outcome.map(|o| o.as_str().to_owned()));
    w.text("idempotency_key", &f.key);
    w.int("at >=", f.since_ms.map(|v| v as i64));
    w.int("at <", f.until_ms.map(|v| v as i64));
    w
}

impl Ledger {
    /// Up to `limit` entries matching `filter`, newest first, after `cursor` (an id from `next`).
    pub(crate) async fn list(
        &self,
        filter: &Filter,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page, LedgerError> {
        let mut w = filtered(filter);
        if let Some(c) = cursor {
            w.texts.push(Bound::Text(c.to_owned()));
            w.terms.push(format!("id < ${}", w.texts.len()));
        }
        let sql = format!(
            "SELECT {COLUMNS} FROM purchases{} ORDER BY id DESC LIMIT {}",
            w.sql(),
            u64::from(limit) + 1
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for b in w.texts {
            q = match b {
                Bound::Text(t) => q.bind(t),
                Bound::Int(i) => q.bind(i),
            };
        }
        let rows = q.fetch_all(&self.rest).await?;
        let mut entries = rows.iter().map(entry).collect::<Result<Vec<_>, _>>()?;
        let next = if entries.len() > limit as usize {
            entries.truncate(limit as usize);
            entries.last().map(|e| e.id.clone())
        } else {
            None
        };
        Ok(Page { entries, next })
    }

    /// One entry.
    pub(crate) async fn get(&self, id: &str) -> Result<Option<Entry>, LedgerError> {
        let sql = format!("SELECT {COLUMNS} FROM purchases WHERE id = $1");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.rest)
            .await?;
        Ok(row.as_ref().map(entry).transpose()?)
    }

    /// The entries answered from entry `id` (replays, joins, reconciliations), oldest first.
    pub(crate) async fn answered_from(&self, id: &str) -> Result<Vec<Entry>, LedgerError> {
        let sql = format!("SELECT {COLUMNS} FROM purchases WHERE bought_by = $1 ORDER BY id");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_all(&self.rest)
            .await?;
        Ok(rows.iter().map(entry).collect::<Result<Vec<_>, _>>()?)
    }

    /// The entry that carried out the keyed request `(client, route, key)` since `since_ms`: the
    /// earliest one that bought, failed upstream, or is still open or unknown. Replays and joins
    /// point at it, so they are not it.
    pub(crate) async fn prior(
        &self,
        client: &str,
        route: &str,
        key: &str,
        since_ms: u64,
    ) -> Result<Option<Prior>, LedgerError> {
        let row = sqlx::query(
            "SELECT id, at, fingerprint, outcome, answer_status, answer_body FROM purchases \
             WHERE client = $1 AND route = $2 AND idempotency_key = $3 AND at >= $4 \
             AND outcome IN ('bought', 'reconciled', 'open', 'unknown') ORDER BY id LIMIT 1",
        )
        .bind(client)
        .bind(route)
        .bind(key)
        .bind(since_ms as i64)
        .fetch_optional(&self.rest)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let outcome: String = row.try_get("outcome")?;
        let status: Option<i64> = row.try_get("answer_status")?;
        let body: Option<String> = row.try_get("answer_body")?;
        Ok(Some(Prior {
            id: row.try_get("id")?,
            at_ms: row.try_get("at")?,
            fingerprint: row.try_get("fingerprint")?,
            outcome: Outcome::parse(&outcome).unwrap_or(Outcome::Unknown),
            answer: status.zip(body).map(|(status, body)| StoredAnswer {
                status: status as u16,
                body,
            }),
        }))
    }

    /// The earliest entry of `account` with this fingerprint, opened since `since_ms` and before
    /// entry `before_id`, whose outcome is still open or unknown: the original a retry settles.
    pub(crate) async fn unsettled_original(
        &self,
        account: &str,
        fingerprint: &str,
        since_ms: u64,
        before_id: &str,
    ) -> Result<Option<String>, LedgerError> {
        let row = sqlx::query(
            "SELECT id FROM purchases WHERE account = $1 AND fingerprint = $2 AND at >= $3 \
             AND id < $4 AND outcome IN ('open', 'unknown') ORDER BY id LIMIT 1",
        )
        .bind(account)
        .bind(fingerprint)
        .bind(since_ms as i64)
        .bind(before_id)
        .fetch_optional(&self.rest)
        .await?;
        Ok(row.map(|r| r.try_get("id")).transpose()?)
    }

    /// How many entries have no final outcome (open).
    pub(crate) async fn open_count(&self) -> Result<i64, LedgerError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM purchases WHERE outcome = 'open'")
            .fetch_one(&self.rest)
            .await?;
        Ok(row.try_get("n")?)
    }

    /// How many entries arrived since `since_ms` (epoch ms), by outcome: counted by the
    /// database, whatever the number of entries. Outcomes with none are left out.
    pub(crate) async fn counts_since(
        &self,
        since_ms: u64,
    ) -> Result<Vec<(Outcome, i64)>, LedgerError> {
        let rows = sqlx::query(
            "SELECT outcome, COUNT(*) AS n FROM purchases WHERE at >= $1 GROUP BY outcome",
        )
        .bind(since_ms as i64)
        .fetch_all(&self.rest)
        .await?;
        rows.iter()
            .map(|r| {
                let outcome: String = r.try_get("outcome")?;
                let n: i64 = r.try_get("n")?;
                Ok((Outcome::parse(&outcome).unwrap_or(Outcome::Unknown), n))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(LedgerError::from)
    }

    /// The rows spend sums read: entries that arrived in `[since_ms, until_ms)`.
    pub(crate) async fn spend_rows(
        &self,
        since_ms: u64,
        until_ms: u64,
    ) -> Result<Vec<SpendRow>, LedgerError> {
        let rows = sqlx::query(
            "SELECT at, account, client, route, outcome, gb, amount FROM purchases \
             WHERE at >= $1 AND at < $2 ORDER BY id",
        )
        .bind(since_ms as i64)
        .bind(until_ms as i64)
        .fetch_all(&self.rest)
        .await?;
        rows.iter()
            .map(|r| {
                let outcome: String = r.try_get("outcome")?;
                Ok(SpendRow {
                    at_ms: r.try_get("at")?,
                    account: r.try_get("account")?,
                    client: r.try_get("client")?,
                    route: r.try_get("route")?,
                    outcome: Outcome::parse(&outcome).unwrap_or(Outcome::Unknown),
                    gb: r.try_get("gb")?,
                    amount: r.try_get("amount")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(LedgerError::from)
    }
}
