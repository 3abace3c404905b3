-- The purchase ledger: one row per request to a spend route that passed admission and validation.
-- Portable SQL: the same text runs on SQLite and PostgreSQL.
CREATE TABLE purchases (
    id TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    settled_at BIGINT,
    account TEXT NOT NULL,
    client TEXT NOT NULL,
    route TEXT NOT NULL,
    order_json TEXT NOT NULL,
    gb BIGINT,
    idempotency_key TEXT,
    fingerprint TEXT NOT NULL,
    request_id TEXT NOT NULL,
    traceparent TEXT,
    replica TEXT NOT NULL,
    outcome TEXT NOT NULL,
    resource_id TEXT,
    amount TEXT,
    upstream_code BIGINT,
    reason TEXT,
    bought_by TEXT,
    answer_status BIGINT,
    answer_body TEXT
);
CREATE INDEX purchases_client ON purchases (client, id);
CREATE INDEX purchases_account ON purchases (account, id);
CREATE INDEX purchases_at ON purchases (at);
CREATE INDEX purchases_key ON purchases (client, route, idempotency_key);
CREATE INDEX purchases_fingerprint ON purchases (account, fingerprint);
CREATE INDEX purchases_outcome ON purchases (outcome, at);
CREATE INDEX purchases_bought_by ON purchases (bought_by);
