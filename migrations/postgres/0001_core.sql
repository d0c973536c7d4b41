-- The core schema: registry (orgs, devices, channels), presence (state, transitions),
-- online-rate samples and gateway bookkeeping. Times are epoch milliseconds (UTC);
-- flags are 0/1 integers so both backends read them the same way.
CREATE TABLE orgs (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    parent_id  TEXT REFERENCES orgs(id),
    gb_prefix  TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX orgs_parent ON orgs(parent_id);

CREATE TABLE devices (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    protocol    TEXT NOT NULL,
    org_id      TEXT REFERENCES orgs(id),
    profile     TEXT,
    rtsp_url    TEXT,
    password    TEXT,
    enabled     BIGINT NOT NULL DEFAULT 1,
    maintenance BIGINT NOT NULL DEFAULT 0,
    admission   TEXT NOT NULL,
    attrs       TEXT NOT NULL DEFAULT '{}',
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX devices_org ON devices(org_id);

CREATE TABLE channels (
    device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    id        TEXT NOT NULL,
    name      TEXT NOT NULL,
    status_on BIGINT NOT NULL DEFAULT 1,
    attrs     TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (device_id, id)
);

CREATE TABLE presence_state (
    device_id        TEXT PRIMARY KEY,
    state            TEXT NOT NULL,
    since            BIGINT NOT NULL,
    last_seen        BIGINT,
    reason           TEXT NOT NULL,
    detail           TEXT,
    alive_until      BIGINT,
    alive_kind       TEXT,
    registered_until BIGINT,
    updated_at       BIGINT NOT NULL
);

CREATE TABLE presence_transitions (
    seq        BIGSERIAL PRIMARY KEY,
    device_id  TEXT NOT NULL,
    at         BIGINT NOT NULL,
    from_state TEXT NOT NULL,
    to_state   TEXT NOT NULL,
    reason     TEXT NOT NULL,
    detail     TEXT
);
CREATE INDEX presence_transitions_device_at ON presence_transitions(device_id, at);
CREATE INDEX presence_transitions_at ON presence_transitions(at);

CREATE TABLE rate_samples (
    at     BIGINT NOT NULL,
    org_id TEXT NOT NULL,
    kind   TEXT NOT NULL,
    online BIGINT NOT NULL,
    total  BIGINT NOT NULL,
    PRIMARY KEY (org_id, kind, at)
);
CREATE INDEX rate_samples_at ON rate_samples(at);

CREATE TABLE gateway_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
