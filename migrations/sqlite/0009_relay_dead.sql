-- What a record refused for good was sent as and what the upstream answered, kept beside its
-- dead delivery row (not in it: the hot deliveries table stays narrow; the reason is the
-- row's last_error). Replaced when the
-- record dies again after a requeue; removed when its delivery row is pruned.
CREATE TABLE relay_dead (
    target     TEXT NOT NULL,
    event_seq  BIGINT NOT NULL,
    request    TEXT,
    response   TEXT,
    parked_at  BIGINT NOT NULL,
    PRIMARY KEY (target, event_seq)
);
