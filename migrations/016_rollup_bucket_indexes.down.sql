-- gito: no-transaction
DROP INDEX CONCURRENTLY IF EXISTS telemetry_rollup_1h_bucket_brin;
DROP INDEX CONCURRENTLY IF EXISTS telemetry_rollup_1m_bucket_brin;
