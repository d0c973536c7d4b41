-- GA/T 1400 subscriptions an upper view library made with vigil (POST /VIID/Subscribes):
-- which upstream (`target`) they belong to, the category codes wanted, where notifications
-- go. Cancelled ones are kept (`cancelled` = 1) for the record.
CREATE TABLE subscriptions (
    id           TEXT PRIMARY KEY,
    target       TEXT NOT NULL,
    title        TEXT NOT NULL DEFAULT '',
    categories   TEXT NOT NULL,
    resource_uri TEXT NOT NULL DEFAULT '',
    receive_addr TEXT NOT NULL,
    begin_at     BIGINT,
    end_at       BIGINT,
    cancelled    INTEGER NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL
);
