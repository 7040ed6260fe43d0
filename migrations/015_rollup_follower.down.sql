-- Back to rollups in the processor's transaction (014): the rollups are complete up to
-- materialized_before, so the 014 backfill rebuilds them all from raw rows.
DROP INDEX telemetry_ts_brin;
DROP TABLE telemetry_rollup_invalidations;
DROP TABLE telemetry_rollup_state;
UPDATE telemetry_rollup_backfill SET done = false, after_device = NULL;
