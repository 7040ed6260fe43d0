-- gito: no-transaction
-- A month of hourly buckets of one device and metric is 720 rows of `telemetry_rollup_1h`, each on
-- a page of its own (the follower writes an hour of every device at once). Covering indexes
-- answer such a read from the index alone: an index-only scan of a few pages instead of 720 heap
-- pages, once VACUUM has marked the pages all-visible. The hourly and daily rollups are written
-- once per hour and day, so autovacuum is asked to come after 1 % of new rows instead of 20 %.
-- Built without blocking writes; the minute rollup, written a minute at a time, keeps its key only.
CREATE INDEX CONCURRENTLY IF NOT EXISTS telemetry_rollup_1h_covering
    ON telemetry_rollup_1h (device_id, metric, bucket)
    INCLUDE (count, min, max, sum, first, first_ts, last, last_ts);
CREATE INDEX CONCURRENTLY IF NOT EXISTS telemetry_rollup_1d_covering
    ON telemetry_rollup_1d (device_id, metric, bucket)
    INCLUDE (count, min, max, sum, first, first_ts, last, last_ts);
ALTER TABLE telemetry_rollup_1h SET (autovacuum_vacuum_insert_scale_factor = 0.01);
ALTER TABLE telemetry_rollup_1d SET (autovacuum_vacuum_insert_scale_factor = 0.01);
