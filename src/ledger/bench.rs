//! The ledger bench's way in (`benches/ledger.rs`): the store is this crate's own, so the bench
//! drives it through these few calls: what a create writes, a bulk fill, and the admin listing's
//! read. Not an API: hidden from the docs, kept only for the bench.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use sqlx::AssertSqlSafe;

use super::{Filter, Ledger, NewEntry, Outcome, Settlement, StoredAnswer, new_id};

/// Rows per INSERT statement of [`BenchLedger::fill`]: 16 values each stays under SQLite's
/// 32,766 and PostgreSQL's 65,535 parameters a statement.
const ROWS_PER_INSERT: u64 = 1000;
/// Statements per transaction of [`BenchLedger::fill`].
const INSERTS_PER_TX: u64 = 20;

/// A ledger, for the bench.
pub struct BenchLedger(Ledger);

impl BenchLedger {
    /// `postgres://...` (or `sqlite:...`), its migrations applied.
    pub async fn connect(url: &str) -> Result<BenchLedger, String> {
        Ledger::connect(url, 8, Duration::from_secs(10))
            .await
            .map(BenchLedger)
            .map_err(|e| e.to_string())
    }

    /// The embedded SQLite file at `path`, as one replica keeps it.
    pub async fn sqlite(path: &Path) -> Result<BenchLedger, String> {
        Ledger::sqlite(path, Duration::from_secs(10))
            .await
            .map(BenchLedger)
            .map_err(|e| e.to_string())
    }

    /// What a keyed disk create adds: its entry opened before the upstream call, then settled as
    /// bought with the upstream's answer.
    pub async fn open_and_settle(&self, now_ms: u64, client: &str) -> Result<(), String> {
        let id = new_id(now_ms);
        let entry = NewEntry {
            id: id.clone(),
            at_ms: now_ms,
            account: "default".into(),
            client: client.into(),
            route: "disk.create".into(),
            order: r#"{"area":0,"isMount":0,"memory":20}"#.into(),
            gb: Some(20),
            idempotency_key: Some(format!("key-{id}")),
            fingerprint: format!("{:064x}", u128::from(now_ms)),
            request_id: format!("req-{id}"),
            traceparent: Some(format!("00-{now_ms:032x}-{now_ms:016x}-01")),
            replica: "bench".into(),
        };
        self.0.open(&entry).await.map_err(|e| e.to_string())?;
        let mut s = Settlement::new(Outcome::Bought, now_ms + 1);
        s.resource_id = Some(format!("disk-{id}"));
        s.answer = Some(StoredAnswer {
            status: 200,
            body: format!(r#"{{"code":200,"msg":"ok","data":{{"id":"disk-{id}"}}}}"#),
        });
        self.0.settle(&id, &s).await.map_err(|e| e.to_string())
    }

    /// Writes `n` settled entries, one every 10 ms of arrival time from `start_ms`, spread over
    /// `clients` clients (`client-0`, ...) in turn: multi-row INSERTs in large transactions.
    pub async fn fill(&self, n: u64, clients: u64, start_ms: u64) -> Result<(), String> {
        const COLUMNS: &str = "id, at, settled_at, account, client, route, order_json, gb, \
            idempotency_key, fingerprint, request_id, traceparent, replica, outcome, \
            resource_id, amount";
        const PER_ROW: u64 = 16;
        let mut done = 0;
        while done < n {
            let mut tx = self.0.pool.begin().await.map_err(|e| e.to_string())?;
            for _ in 0..INSERTS_PER_TX {
                let rows = ROWS_PER_INSERT.min(n - done);
                if rows == 0 {
                    break;
                }
                let mut sql = format!("INSERT INTO purchases ({COLUMNS}) VALUES ");
                for r in 0..rows {
                    let base = r * PER_ROW;
                    sql.push_str(if r == 0 { "(" } else { ", (" });
                    for c in 1..=PER_ROW {
                        let sep = if c == PER_ROW { ")" } else { ", " };
                        let _ = write!(sql, "${}{sep}", base + c);
                    }
                }
                let mut q = sqlx::query(AssertSqlSafe(sql));
                for i in done..done + rows {
                    let at = (start_ms + i * 10) as i64;
                    let id = new_id(at as u64);
                    q = q
                        .bind(id.clone())
                        .bind(at)
                        .bind(at + 1500)
                        .bind("default")
                        .bind(format!("client-{}", i % clients))
                        .bind("disk.create")
                        .bind(r#"{"area":0,"isMount":0,"memory":20}"#)
                        .bind(20_i64)
                        .bind(format!("key-{i}"))
                        .bind(format!("{i:064x}"))
                        .bind(format!("req-{i}"))
                        .bind(Option::<String>::None)
                        .bind("bench")
                        .bind("bought")
                        .bind(format!("disk-{id}"))
                        .bind("0.40");
                }
                q.execute(&mut *tx).await.map_err(|e| e.to_string())?;
                done += rows;
            }
            tx.commit().await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// One client's newest `limit` entries after `cursor`, as `GET /admin/purchases?client=`
    /// reads them: how many, and the next page's cursor.
    pub async fn list_client(
        &self,
        client: &str,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<(usize, Option<String>), String> {
        let filter = Filter {
            client: Some(client.into()),
            ..Filter::default()
        };
        let page = self
            .0
            .list(&filter, limit, cursor)
            .await
            .map_err(|e| e.to_string())?;
        Ok((page.entries.len(), page.next))
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.0.close().await;
    }
}
