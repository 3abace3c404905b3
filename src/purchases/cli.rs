//! `finovy-gateway purchases`: the ledger read directly (its SQLite file or the fleet's
//! PostgreSQL, from the config as `serve` resolves it), for an operator on the box or a cron
//! job. Every matching entry, newest first, page after page, as a table, JSON or CSV.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use jiff::Timestamp;

use super::csv;
use super::params::{self, MAX_LIMIT};
use crate::config::{self, FileConfig, Overrides, Settings};
use crate::ledger::{Entry, Ledger, Page};

/// How entries are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Aligned columns: id, at (UTC), client, route, outcome, resource, amount.
    #[default]
    Table,
    /// One JSON array of entries (each on a line of its own), as the admin API writes them.
    Json,
    /// CSV, as `GET /admin/purchases` with `Accept: text/csv` writes it.
    Csv,
}

/// What to print: the filters of `GET /admin/purchases`, as the command line gives them.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The config file (default: config/gateway.toml when present, else built-in defaults).
    pub config: Option<PathBuf>,
    pub since: Option<String>,
    pub until: Option<String>,
    /// The zone a plain date is read in (default UTC).
    pub tz: Option<String>,
    pub client: Option<String>,
    pub account: Option<String>,
    pub route: Option<String>,
    pub outcome: Option<String>,
    pub key: Option<String>,
    /// At most this many entries (default: all).
    pub limit: Option<u64>,
    pub format: Format,
}

/// Runs the command; errors are printed to standard error.
pub async fn run(opts: Options) -> ExitCode {
    match print(opts).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("finovy-gateway purchases: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The options as the admin API's parameters, checked by the same rules.
fn parameters(o: &Options) -> Result<params::Listing, String> {
    let given = [
        ("since", &o.since),
        ("until", &o.until),
        ("tz", &o.tz),
        ("client", &o.client),
        ("account", &o.account),
        ("route", &o.route),
        ("outcome", &o.outcome),
        ("key", &o.key),
    ];
    let pairs: Vec<(&'static str, String)> = given
        .into_iter()
        .filter_map(|(n, v)| v.clone().map(|v| (n, v)))
        .collect();
    params::listing(&pairs).map_err(|e| format!("--{e}"))
}

/// Connections the command holds: it reads one page at a time.
const CONNECTIONS: u32 = 1;

/// Opens the ledger the config names, to read: a SQLite file read-only (one that is not there
/// is an error, not created), PostgreSQL as it is; no migrations are applied by a reader.
fn open(path: Option<&std::path::Path>) -> Result<Ledger, String> {
    let file = FileConfig::load(path).map_err(|e| e.to_string())?;
    let settings = Settings::resolve(file, &Overrides::default(), &config::process_env)
        .map_err(|e| format!("invalid config: {e}"))?;
    let cfg = &settings.ledger;
    let url = match &cfg.url {
        Some(url) => url.clone(),
        None if cfg.path.is_file() => format!("sqlite://{}?mode=ro", cfg.path.display()),
        None => {
            return Err(format!(
                "no ledger at {} ([ledger] path): the gateway creates it when it first starts",
                cfg.path.display()
            ));
        }
    };
    Ledger::lazy(&url, CONNECTIONS, cfg.timeout).map_err(|e| format!("cannot open the ledger: {e}"))
}

async fn print(o: Options) -> Result<(), String> {
    let listing = parameters(&o)?;
    if o.limit == Some(0) {
        return Err("--limit: expected at least 1".into());
    }
    let ledger = open(o.config.as_deref())?;
    let result = write_all(&ledger, &listing, o.limit, o.format).await;
    ledger.close().await;
    match result {
        // A reader that went away (`| head`) is not an error.
        Err(Failure::Write(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(Failure::Write(e)) => Err(format!("writing: {e}")),
        Err(Failure::Read(e)) => Err(e),
        Ok(()) => Ok(()),
    }
}

enum Failure {
    Read(String),
    Write(std::io::Error),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure::Write(e)
    }
}

/// Pages through the listing, writing as it goes (a table waits for all, to align it).
async fn write_all(
    ledger: &Ledger,
    listing: &params::Listing,
    limit: Option<u64>,
    format: Format,
) -> Result<(), Failure> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut left = limit.unwrap_or(u64::MAX);
    let mut cursor: Option<String> = None;
    let mut table = Vec::new();
    let mut first = true;
    match format {
        Format::Csv => out.write_all(csv::header().as_bytes())?,
        Format::Json => out.write_all(b"[")?,
        Format::Table => {}
    }
    while left > 0 {
        let size = u32::try_from(left.min(u64::from(MAX_LIMIT))).unwrap_or(MAX_LIMIT);
        let page: Page = ledger
            .list(&listing.filter, size, cursor.as_deref())
            .await
            .map_err(|e| Failure::Read(format!("reading the ledger: {e}")))?;
        left -= page.entries.len() as u64;
        for e in page.entries {
            match format {
                Format::Csv => out.write_all(csv::line(&e).as_bytes())?,
                Format::Json => {
                    out.write_all(if first { b"\n" } else { b",\n" })?;
                    serde_json::to_writer(&mut out, &e).map_err(std::io::Error::from)?;
                }
                Format::Table => table.push(e),
            }
            first = false;
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    match format {
        Format::Json => out.write_all(b"\n]\n")?,
        Format::Table => out.write_all(render_table(&table).as_bytes())?,
        Format::Csv => {}
    }
    out.flush()?;
    Ok(())
}

/// An instant as UTC RFC 3339 to the second.
fn utc(at_ms: i64) -> String {
    Timestamp::from_millisecond(at_ms).map_or_else(
        |_| at_ms.to_string(),
        |t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

/// The table: a header and a line per entry, columns padded to their widest cell.
pub(crate) fn render_table(entries: &[Entry]) -> String {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut rows: Vec<[String; 7]> = vec![
        [
            "id", "at", "client", "route", "outcome", "resource", "amount",
        ]
        .map(String::from),
    ];
    rows.extend(entries.iter().map(|e| {
        [
            e.id.clone(),
            utc(e.at),
            e.client.clone(),
            e.route.clone(),
            e.outcome.clone(),
            dash(&e.resource_id),
            dash(&e.amount),
        ]
    }));
    let mut widths = [0usize; 7];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut text = String::new();
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_its_columns_and_shows_utc_seconds() {
        let e = |id: &str, client: &str, resource: Option<&str>| Entry {
            id: id.into(),
            at: 1_796_601_600_123,
            settled_at: None,
            account: "default".into(),
            client: client.into(),
            route: "disk.create".into(),
            order: serde_json::json!({}),
            gb: Some(20),
            idempotency_key: None,
            request_id: "r".into(),
            traceparent: None,
            replica: "h".into(),
            outcome: "bought".into(),
            resource_id: resource.map(Into::into),
            amount: Some("0.4".into()),
            upstream_code: None,
            reason: None,
            bought_by: None,
        };
        let text = render_table(&[e("a1", "a-long-client", Some("disk1")), e("b2", "b", None)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let col = |l: &str| l.find("disk.create").unwrap();
        assert_eq!(col(lines[1]), col(lines[2]));
        assert!(lines[0].starts_with("id  at"), "{text}");
        assert!(lines[1].contains("2026-12-07T00:00:00Z"), "{text}");
        assert!(lines[2].contains(" - "), "{text}");
    }

    #[test]
    fn the_options_are_checked_as_the_query_parameters_are() {
        let o = Options {
            outcome: Some("nope".into()),
            ..Options::default()
        };
        assert!(parameters(&o).unwrap_err().starts_with("--outcome"));
        let o = Options {
            since: Some("2026-12-07".into()),
            tz: Some("Asia/Shanghai".into()),
            ..Options::default()
        };
        assert_eq!(
            parameters(&o).unwrap().filter.since_ms,
            Some(1_796_601_600_000 - 8 * 3_600_000)
        );
    }
}
