-- The relay's outbox: one delivery row per (upstream, event), written in the same
-- transaction as the event. `state`: pending (to send; `next_attempt` says when), delivered,
-- dead (refused for good; `last_error` says why). `object_id` is the 48-digit GA/T 1400 id an
-- event is known by upstream, derived once when it is stored and never again.
ALTER TABLE events ADD COLUMN object_id TEXT;
CREATE TABLE deliveries (
    target       TEXT NOT NULL,
    event_seq    BIGINT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'pending',
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt BIGINT NOT NULL DEFAULT 0,
    last_error   TEXT,
    created_at   BIGINT NOT NULL,
    delivered_at BIGINT,
    PRIMARY KEY (target, event_seq)
);
CREATE INDEX deliveries_state ON deliveries (target, state, event_seq);
