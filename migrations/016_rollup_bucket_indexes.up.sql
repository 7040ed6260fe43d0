-- gito: no-transaction
-- The rollup follower (015) rolls up a complete hour from its minutes and a complete day from its
-- hours, reading them by bucket: BRIN indexes (rows arrive in bucket order), built without
-- blocking writes.
CREATE INDEX CONCURRENTLY IF NOT EXISTS telemetry_rollup_1m_bucket_brin
    ON telemetry_rollup_1m USING brin (bucket);
CREATE INDEX CONCURRENTLY IF NOT EXISTS telemetry_rollup_1h_bucket_brin
    ON telemetry_rollup_1h USING brin (bucket);
