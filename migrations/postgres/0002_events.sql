-- The event log: normalized records (alarms, status changes; later access, vehicle pass,
-- face capture) in arrival order. `seq` is the commit order the outbox will deliver in;
-- `id` (UUID v7) and `dedup_key` (the record as its device names it) are unique, so a
-- retransmitted or replayed record is stored once.
CREATE TABLE events (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    dedup_key   TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL,
    source      TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    org_id      TEXT,
    occurred_at BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX events_occurred ON events(occurred_at);
CREATE INDEX events_device ON events(device_id, occurred_at);
CREATE INDEX events_kind ON events(kind, occurred_at);
