-- gito: lock_timeout=5s
-- gito: statement_timeout=0
-- Back to one plain `telemetry` table. The historical partition `telemetry_legacy` (the table as
-- it was before 013) becomes `telemetry` again without a copy; the rows of every other partition
-- (what was written since 013, and the default partition's) are copied into it under an ACCESS
-- EXCLUSIVE lock, so this takes as long as copying those rows: plan it when they are few, or
-- export them first (docs/MIGRATIONS.md, "013"). When retention already dropped the legacy
-- partition, a new plain table receives every row.
DO $$
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'public.telemetry'::regclass) <> 'p' THEN
        RETURN;
    END IF;
    LOCK TABLE telemetry IN ACCESS EXCLUSIVE MODE;
    IF EXISTS (
        SELECT 1 FROM pg_inherits
        WHERE inhrelid = to_regclass('public.telemetry_legacy') AND inhparent = 'telemetry'::regclass
    ) THEN
        ALTER TABLE telemetry DETACH PARTITION telemetry_legacy;
        ALTER TABLE telemetry_legacy DROP CONSTRAINT IF EXISTS telemetry_legacy_ts_check;
    ELSE
        CREATE TABLE telemetry_legacy (
            device_id  UUID             NOT NULL,
            ts         TIMESTAMPTZ      NOT NULL,
            metric     TEXT             NOT NULL,
            value      DOUBLE PRECISION,
            value_json JSONB,
            flagged    BOOLEAN          NOT NULL DEFAULT false,
            CONSTRAINT telemetry_legacy_device_id_fkey FOREIGN KEY (device_id)
                REFERENCES devices (id) ON DELETE CASCADE,
            CONSTRAINT telemetry_legacy_device_id_metric_ts_key UNIQUE (device_id, metric, ts)
        );
        CREATE INDEX telemetry_legacy_device_id_ts_idx ON telemetry_legacy (device_id, ts DESC);
    END IF;
    INSERT INTO telemetry_legacy (device_id, ts, metric, value, value_json, flagged)
    SELECT device_id, ts, metric, value, value_json, flagged FROM telemetry;
    DROP TABLE telemetry;
    ALTER TABLE telemetry_legacy RENAME TO telemetry;
    ALTER INDEX telemetry_legacy_device_id_ts_idx RENAME TO telemetry_device_id_ts_idx;
    ALTER TABLE telemetry RENAME CONSTRAINT telemetry_legacy_device_id_metric_ts_key
        TO telemetry_device_id_metric_ts_key;
    ALTER TABLE telemetry RENAME CONSTRAINT telemetry_legacy_device_id_fkey
        TO telemetry_device_id_fkey;
END
$$;
