-- The store-and-forward outbox: messages bound upstream, oldest first.
CREATE TABLE IF NOT EXISTS outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    topic      TEXT    NOT NULL,  -- the remote topic (routes already applied)
    payload    BLOB    NOT NULL,
    qos        INTEGER NOT NULL,
    retain     INTEGER NOT NULL,
    created_ms INTEGER NOT NULL   -- when it entered the outbox (ms since the epoch)
);
CREATE INDEX IF NOT EXISTS outbox_created ON outbox (created_ms);

-- Counters that outlive a restart (dropped messages by cause).
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
