//! The ledger bench's way in (`benches/ledger.rs`): the store is this crate's own, so the bench
//! drives it through these few calls: what a create writes, a bulk fill, and the admin listing's
//! read. Not an API: hidden from the docs, kept only for the bench.

use std::path::Path;
use std::time::Duration;

use sqlx::AssertSqlSafe;

use super::db::{Backend, Ledger};
use super::entry::{NewEntry, Outcome, Settlement, StoredAnswer, new_id};
use super::read::Filter;

/// Rows per statement (and transaction) of [`BenchLedger::fill`].
const ROWS_PER_FILL: u64 = 100_000;

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
    /// `clients` clients (`client-0`, ...) in turn. The rows are made by the database itself (a
    /// recursive count, in statements of [`ROWS_PER_FILL`] rows), so a million take seconds.
    pub async fn fill(&self, n: u64, clients: u64, start_ms: u64) -> Result<(), String> {
        // The id as `new_id` makes it: 12 hex digits of milliseconds, 16 of (here) the row.
        let hex = |expr: &str, width: u32| match self.0.backend {
            Backend::Sqlite => format!("printf('%0{width}x', {expr})"),
            Backend::Postgres => format!("lpad(to_hex(({expr})::bigint), {width}, '0')"),
        };
        let mut done = 0;
        while done < n {
            let rows = ROWS_PER_FILL.min(n - done);
            let at = format!("({start_ms} + i * 10)");
            let id = format!("{} || {}", hex(&at, 12), hex("i", 16));
            let fingerprint = hex("i", 64);
            let sql = format!(
                "WITH RECURSIVE s(i) AS (SELECT {done} UNION ALL SELECT i + 1 FROM s \
                 WHERE i < {last}) \
                 INSERT INTO purchases (id, at, settled_at, account, client, route, order_json, \
                 gb, idempotency_key, fingerprint, request_id, traceparent, replica, outcome, \
                 resource_id, amount) \
                 SELECT {id}, {at}, {at} + 1500, 'default', 'client-' || (i % {clients}), \
                 'disk.create', '{{\"area\":0,\"isMount\":0,\"memory\":20}}', 20, \
                 'key-' || i, {fingerprint}, 'req-' || i, NULL, 'bench', 'bought', \
                 'disk-' || i, '0.40' FROM s",
                last = done + rows - 1,
            );
            sqlx::query(AssertSqlSafe(sql))
                .execute(&self.0.pool)
                .await
                .map_err(|e| e.to_string())?;
            done += rows;
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
