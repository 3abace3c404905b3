-- The webhook outbox: one row per event and receiver, written beside the ledger so that an event
-- outlives a receiver that is down and a gateway that restarts, and one replica of a fleet
-- delivers it (the row's lease). Portable SQL: the same text runs on SQLite and PostgreSQL.
CREATE TABLE webhook_outbox (
    id TEXT PRIMARY KEY,
    webhook TEXT NOT NULL,
    event TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    next_at BIGINT NOT NULL,
    claimed_until BIGINT,
    delivered_at BIGINT,
    dropped_at BIGINT,
    ordering_key TEXT
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (delivered_at, next_at);
CREATE INDEX webhook_outbox_order ON webhook_outbox (webhook, ordering_key, id);
