//! Entries as CSV (RFC 4180), for `Accept: text/csv` and `purchases --format csv` alike: one
//! header line, one line per entry, the columns and values of the JSON answer (`order` as its
//! JSON text, `null` as an empty cell). A cell a spreadsheet would run as a formula (starting
//! with `=`, `+`, `-`, `@`, a tab or a carriage return) is prefixed with `'`, as OWASP advises:
//! a client name or an upstream's message must not become a formula on an operator's screen.

use serde_json::Value;

use crate::ledger::Entry;

/// The columns, in CONTRACT.md's order of an entry's fields.
pub(crate) const COLUMNS: [&str; 18] = [
    "id",
    "at",
    "settledAt",
    "account",
    "client",
    "route",
    "order",
    "gb",
    "idempotencyKey",
    "requestId",
    "traceparent",
    "replica",
    "outcome",
    "resourceId",
    "amount",
    "upstreamCode",
    "reason",
    "boughtBy",
];

/// The header line.
pub(crate) fn header() -> String {
    let mut line = COLUMNS.join(",");
    line.push_str("\r\n");
    line
}

/// One entry's line.
pub(crate) fn line(e: &Entry) -> String {
    let v = serde_json::to_value(e).unwrap_or(Value::Null);
    let mut out = String::new();
    for (i, column) in COLUMNS.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&cell(v.get(*column).unwrap_or(&Value::Null)));
    }
    out.push_str("\r\n");
    out
}

/// A JSON value as its CSV cell.
pub(crate) fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        // Numbers are written by the gateway itself: not a formula, and a spreadsheet should
        // read them as numbers.
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::String(s) => quoted(&defused(s)),
        other => quoted(&defused(&other.to_string())),
    }
}

/// `s` with a `'` before a leading formula character.
fn defused(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    }
}

/// `s` quoted when RFC 4180 requires it (a comma, a quote, a line break), quotes doubled.
fn quoted(s: &str) -> String {
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Parses RFC 4180 text into rows of cells (the test's own reader, to check the writer).
    pub(crate) fn parse(text: &str) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        let mut row = Vec::new();
        let mut cell = String::new();
        let mut chars = text.chars().peekable();
        let mut in_quotes = false;
        while let Some(c) = chars.next() {
            match (in_quotes, c) {
                (true, '"') if chars.peek() == Some(&'"') => {
                    chars.next();
                    cell.push('"');
                }
                (true, '"') => in_quotes = false,
                (false, '"') => in_quotes = true,
                (false, ',') => row.push(std::mem::take(&mut cell)),
                (false, '\r') => {}
                (false, '\n') => {
                    row.push(std::mem::take(&mut cell));
                    rows.push(std::mem::take(&mut row));
                }
                (_, c) => cell.push(c),
            }
        }
        assert!(
            !in_quotes && cell.is_empty() && row.is_empty(),
            "unterminated CSV"
        );
        rows
    }

    #[test]
    fn cells_are_quoted_as_rfc_4180_says_and_formulas_defused() {
        let cases = [
            ("plain", "plain"),
            ("a,b", "\"a,b\""),
            ("say \"hi\"", "\"say \"\"hi\"\"\""),
            ("two\nlines", "\"two\nlines\""),
            ("=HYPERLINK(\"x\")", "\"'=HYPERLINK(\"\"x\"\")\""),
            ("+1", "'+1"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("a=b", "a=b"),
        ];
        for (raw, want) in cases {
            assert_eq!(cell(&Value::String(raw.into())), want, "{raw:?}");
            let parsed = parse(&format!("{want}\r\n"));
            let back = parsed[0][0].strip_prefix('\'').unwrap_or(&parsed[0][0]);
            assert_eq!(back, raw);
        }
        assert_eq!(cell(&Value::Null), "");
        assert_eq!(cell(&serde_json::json!(-5)), "-5");
        assert_eq!(
            cell(&serde_json::json!({"area": "A", "memory": 20})),
            "\"{\"\"area\"\":\"\"A\"\",\"\"memory\"\":20}\""
        );
    }

    #[test]
    fn the_columns_are_every_field_of_an_entry() {
        let e = Entry {
            id: "i".into(),
            at: 1,
            settled_at: None,
            account: "a".into(),
            client: "c".into(),
            route: "r".into(),
            order: serde_json::json!({}),
            gb: None,
            idempotency_key: None,
            request_id: "q".into(),
            traceparent: None,
            replica: "p".into(),
            outcome: "open".into(),
            resource_id: None,
            amount: None,
            upstream_code: None,
            reason: None,
            bought_by: None,
        };
        let v = serde_json::to_value(&e).unwrap();
        let mut fields: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut columns = COLUMNS.to_vec();
        fields.sort_unstable();
        columns.sort_unstable();
        assert_eq!(fields, columns);
        let rows = parse(&(header() + &line(&e)));
        assert_eq!(rows[0], COLUMNS);
        assert_eq!(rows[1][0], "i");
        assert_eq!(rows[1][6], "{}");
    }
}
