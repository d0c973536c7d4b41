-- The event log's per-record and per-device lookups move out of `events` into tables the
-- event writer fills in large sorted batches ("folds"), off the commit path. As indexes of
-- `events`, `dedup_key UNIQUE` and `events_device (device_id, occurred_at)` had every commit
-- rewrite one or two 16 KiB leaves of each for every device in it (measured 2026-12-07:
-- events_device alone ~2.7 us of CPU per committed MQTT event; BENCHMARKS.md). A fold
-- inserts thousands of entries sorted, a few per leaf it touches.
--   event_keys    the records stored, by the device's own name for them (`dedup_key`);
--   event_devices each device's events by time;
--   event_folds   `upto`: every event with `seq <= upto` is in both. Events past it are the
--                 writer's tail: it knows their keys in memory, and the device view scans
--                 them by `seq` (at most a few tens of thousands, a fold's worth).
-- PostgreSQL keeps its indexes.
CREATE TABLE events_folded (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    dedup_key   TEXT NOT NULL,
    kind        TEXT NOT NULL,
    source      TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    org_id      TEXT,
    occurred_at BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    body        TEXT NOT NULL,
    object_id   TEXT
);
INSERT INTO events_folded (seq, id, dedup_key, kind, source, device_id, org_id, occurred_at, received_at, body, object_id)
    SELECT seq, id, dedup_key, kind, source, device_id, org_id, occurred_at, received_at, body, object_id FROM events;
DROP TABLE events;
ALTER TABLE events_folded RENAME TO events;
CREATE INDEX events_occurred ON events(occurred_at);
CREATE INDEX events_kind ON events(kind, occurred_at);
CREATE TABLE event_keys (
    dedup_key TEXT PRIMARY KEY,
    seq       INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE event_devices (
    device_id   TEXT NOT NULL,
    occurred_at BIGINT NOT NULL,
    seq         INTEGER NOT NULL,
    PRIMARY KEY (device_id, occurred_at, seq)
) WITHOUT ROWID;
CREATE TABLE event_folds (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    upto INTEGER NOT NULL
);
INSERT INTO event_keys (dedup_key, seq) SELECT dedup_key, seq FROM events ORDER BY dedup_key;
INSERT INTO event_devices (device_id, occurred_at, seq)
    SELECT device_id, occurred_at, seq FROM events ORDER BY device_id, occurred_at, seq;
INSERT INTO event_folds (id, upto) VALUES (1, COALESCE((SELECT max(seq) FROM events), 0));
