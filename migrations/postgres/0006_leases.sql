-- Claims of the relay's outbox: a runner leases the rows it is delivering (`lease_until`,
-- epoch ms; `lease_owner` the instance), so the next batch can be claimed while one is in
-- flight and several instances sharing a PostgreSQL database never send the same row at
-- once. A lease that runs out (its holder died) makes the row claimable again.
ALTER TABLE deliveries ADD COLUMN lease_until BIGINT NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN lease_owner TEXT;
