-- Patrol (轮巡) rounds and what each channel showed: the outcome (ok, faults, or the stream's
-- failure state), the error and faults, and the snapshot kept in the image store. Rounds are
-- kept 30 days (patrol::store::prune).
CREATE TABLE patrol_rounds (
    id          TEXT PRIMARY KEY,
    trigger     TEXT NOT NULL,
    scope       TEXT,
    started_at  BIGINT NOT NULL,
    ended_at    BIGINT,
    total       BIGINT NOT NULL,
    counts      TEXT NOT NULL
);
CREATE INDEX patrol_rounds_started ON patrol_rounds (started_at);

CREATE TABLE patrol_results (
    round_id    TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    channel_id  TEXT NOT NULL,
    name        TEXT,
    org_id      TEXT,
    at          BIGINT NOT NULL,
    outcome     TEXT NOT NULL,
    error       TEXT,
    faults      TEXT,
    image       TEXT,
    first_frame_ms BIGINT,
    PRIMARY KEY (round_id, device_id, channel_id)
);
