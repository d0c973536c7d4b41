-- GB/T 28181 ids vigil allocates for devices that have none of their own (RTSP cameras,
-- GA/T 1400 checkpoints, community devices), so an upper platform sees them as channels.
-- A row is never deleted: an id once given is never given to another device.
CREATE TABLE cascade_ids (
    device_id    TEXT PRIMARY KEY,
    gb_id        TEXT NOT NULL UNIQUE,
    allocated_at BIGINT NOT NULL
);
