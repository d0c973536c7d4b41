-- The dead-letter table: messages sources refused (bad bytes, no profile, a quarantined
-- device, ...), with the error and the first bytes of the raw payload, so an operator can
-- see what a device sent after a restart too. Bounded: the writer prunes to the newest rows.
CREATE TABLE rejections (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      BIGINT NOT NULL,
    source  TEXT NOT NULL,
    reason  TEXT NOT NULL,
    peer    TEXT NOT NULL,
    detail  TEXT NOT NULL,
    raw     TEXT NOT NULL,
    raw_len BIGINT NOT NULL
);
CREATE INDEX rejections_source ON rejections(source, reason, id);
