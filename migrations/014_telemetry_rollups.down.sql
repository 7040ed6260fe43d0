DROP TABLE telemetry_rollup_backfill;
DROP TABLE telemetry_rollup_1d;
DROP TABLE telemetry_rollup_1h;
DROP TABLE telemetry_rollup_1m;
