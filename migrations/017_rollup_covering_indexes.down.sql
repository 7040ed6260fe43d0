-- gito: no-transaction
ALTER TABLE telemetry_rollup_1d RESET (autovacuum_vacuum_insert_scale_factor);
ALTER TABLE telemetry_rollup_1h RESET (autovacuum_vacuum_insert_scale_factor);
DROP INDEX CONCURRENTLY IF EXISTS telemetry_rollup_1d_covering;
DROP INDEX CONCURRENTLY IF EXISTS telemetry_rollup_1h_covering;
