-- gito: no-transaction
-- gito: statement_timeout=0
-- `telemetry` becomes a table range-partitioned by `ts`, on a populated database, without a long
-- exclusive lock: the old table becomes one partition, `telemetry_legacy`, holding everything
-- before a bound B (the start of tomorrow, UTC, fixed when this migration first runs). Attaching
-- it needs no scan because a validated CHECK (ts < B) already proves it; rows at or after B
-- (future event times, and what writers send during the conversion) are diverted into a side
-- table by a trigger and moved into the new daily partitions during the short switch.
--
-- Each statement commits on its own; each one is idempotent, so that after a crash
-- `gito-api migrate repair --roll-forward` (or running every statement again) finishes the job.
-- Only the switch (statement 9) takes an ACCESS EXCLUSIVE lock, for catalog work plus moving the
-- diverted rows; it waits at most 2 s for it and retries, so it never queues writers for long.
-- The long part (VALIDATE CONSTRAINT, statement 8) reads the table under SHARE UPDATE EXCLUSIVE,
-- which lets reads and writes go on. See docs/MIGRATIONS.md, "013".

-- Runs one statement, waiting at most 2 s for its locks, up to 30 times (a lock wait that gives
-- up releases what the attempt held, so writers queued behind it go on meanwhile).
CREATE OR REPLACE FUNCTION gito_013_with_lock_retry(statement TEXT) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    attempt INTEGER := 0;
BEGIN
    LOOP
        BEGIN
            PERFORM set_config('lock_timeout', '2s', true);
            EXECUTE statement;
            RETURN;
        EXCEPTION WHEN lock_not_available THEN
            attempt := attempt + 1;
            IF attempt >= 30 THEN
                RAISE;
            END IF;
            RAISE NOTICE 'gito 013: lock not available (attempt %), retrying: %', attempt, statement;
            PERFORM pg_sleep(least(attempt, 5));
        END;
    END LOOP;
END
$$;

-- Whether `telemetry` is still the plain table (false once the switch has run).
CREATE OR REPLACE FUNCTION gito_013_unconverted() RETURNS BOOLEAN
LANGUAGE sql AS $$
    SELECT relkind = 'r' FROM pg_class WHERE oid = 'public.telemetry'::regclass
$$;

-- The bound, chosen once: a re-run keeps the first run's value.
CREATE TABLE IF NOT EXISTS telemetry_conversion (
    singleton BOOLEAN     PRIMARY KEY DEFAULT true CHECK (singleton),
    bound     TIMESTAMPTZ NOT NULL
);

INSERT INTO telemetry_conversion (bound)
SELECT (date_trunc('day', now() AT TIME ZONE 'UTC') + INTERVAL '1 day') AT TIME ZONE 'UTC'
WHERE gito_013_unconverted()
ON CONFLICT (singleton) DO NOTHING;

CREATE TABLE IF NOT EXISTS telemetry_conversion_rows (
    device_id  UUID             NOT NULL,
    ts         TIMESTAMPTZ      NOT NULL,
    metric     TEXT             NOT NULL,
    value      DOUBLE PRECISION,
    value_json JSONB,
    flagged    BOOLEAN          NOT NULL DEFAULT false,
    UNIQUE (device_id, metric, ts)
);

-- Rows at or after the bound go to the side table (a gito that knows nothing of this keeps
-- writing with INSERT ... ON CONFLICT DO NOTHING; a diverted row reads to it as a duplicate).
CREATE OR REPLACE FUNCTION telemetry_conversion_divert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.ts >= (SELECT bound FROM telemetry_conversion) THEN
        INSERT INTO telemetry_conversion_rows (device_id, ts, metric, value, value_json, flagged)
        VALUES (NEW.device_id, NEW.ts, NEW.metric, NEW.value, NEW.value_json, NEW.flagged)
        ON CONFLICT DO NOTHING;
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$;

DO $$
BEGIN
    IF gito_013_unconverted() THEN
        PERFORM gito_013_with_lock_retry(
            'CREATE OR REPLACE TRIGGER telemetry_conversion_divert BEFORE INSERT ON telemetry
             FOR EACH ROW EXECUTE FUNCTION telemetry_conversion_divert()');
    END IF;
END
$$;

-- The rows already at or after the bound move to the side table (one statement: all or none).
DO $$
DECLARE
    b TIMESTAMPTZ;
BEGIN
    IF gito_013_unconverted() THEN
        SELECT bound INTO b FROM telemetry_conversion;
        WITH moved AS (
            DELETE FROM telemetry WHERE ts >= b
            RETURNING device_id, ts, metric, value, value_json, flagged
        )
        INSERT INTO telemetry_conversion_rows (device_id, ts, metric, value, value_json, flagged)
        SELECT device_id, ts, metric, value, value_json, flagged FROM moved
        ON CONFLICT DO NOTHING;
    END IF;
END
$$;

-- The proof ATTACH needs. NOT VALID: added without a scan, checked for new rows from now on.
DO $$
BEGIN
    IF gito_013_unconverted() AND NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conrelid = 'telemetry'::regclass AND conname = 'telemetry_legacy_ts_check'
    ) THEN
        PERFORM gito_013_with_lock_retry(format(
            'ALTER TABLE telemetry ADD CONSTRAINT telemetry_legacy_ts_check CHECK (ts < %L) NOT VALID',
            (SELECT bound FROM telemetry_conversion)));
    END IF;
END
$$;

-- The long scan, under SHARE UPDATE EXCLUSIVE: reads and writes go on. A no-op when valid.
DO $$
BEGIN
    IF gito_013_unconverted() THEN
        PERFORM gito_013_with_lock_retry(
            'ALTER TABLE telemetry VALIDATE CONSTRAINT telemetry_legacy_ts_check');
    END IF;
END
$$;

-- The switch: one transaction, catalog work plus the diverted rows.
CREATE OR REPLACE FUNCTION gito_013_switch() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    b   TIMESTAMPTZ;
    day TIMESTAMPTZ;
BEGIN
    IF NOT gito_013_unconverted() THEN
        RETURN;
    END IF;
    SELECT bound INTO b FROM telemetry_conversion;
    LOCK TABLE telemetry IN ACCESS EXCLUSIVE MODE;
    ALTER TABLE telemetry RENAME TO telemetry_legacy;
    ALTER INDEX telemetry_device_id_ts_idx RENAME TO telemetry_legacy_device_id_ts_idx;
    ALTER TABLE telemetry_legacy RENAME CONSTRAINT telemetry_device_id_metric_ts_key
        TO telemetry_legacy_device_id_metric_ts_key;
    ALTER TABLE telemetry_legacy RENAME CONSTRAINT telemetry_device_id_fkey
        TO telemetry_legacy_device_id_fkey;
    DROP TRIGGER telemetry_conversion_divert ON telemetry_legacy;

    CREATE TABLE telemetry (
        device_id  UUID             NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
        ts         TIMESTAMPTZ      NOT NULL,
        metric     TEXT             NOT NULL,
        value      DOUBLE PRECISION,
        value_json JSONB,
        flagged    BOOLEAN          NOT NULL DEFAULT false,
        CONSTRAINT telemetry_device_id_metric_ts_key UNIQUE (device_id, metric, ts)
    ) PARTITION BY RANGE (ts);
    CREATE INDEX telemetry_device_id_ts_idx ON telemetry (device_id, ts DESC);

    -- No scan: the validated CHECK implies the partition constraint; the matching indexes and
    -- the foreign key are attached, not rebuilt.
    EXECUTE format(
        'ALTER TABLE telemetry ATTACH PARTITION telemetry_legacy FOR VALUES FROM (MINVALUE) TO (%L)', b);
    -- A week of daily partitions; the maintainer (api/src/partitions.rs) keeps ahead of time.
    FOR i IN 0..6 LOOP
        day := b + make_interval(days => i);
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF telemetry FOR VALUES FROM (%L) TO (%L)',
            'telemetry_p' || to_char(day AT TIME ZONE 'UTC', 'YYYYMMDD'),
            day, day + INTERVAL '1 day');
    END LOOP;
    CREATE TABLE telemetry_default PARTITION OF telemetry DEFAULT;

    INSERT INTO telemetry (device_id, ts, metric, value, value_json, flagged)
    SELECT device_id, ts, metric, value, value_json, flagged FROM telemetry_conversion_rows
    ON CONFLICT DO NOTHING;
    DROP TABLE telemetry_conversion_rows;
END
$$;

SELECT gito_013_with_lock_retry('SELECT gito_013_switch()');

-- Whatever the conversion left (also when a re-run recreated it after the switch).
DROP TRIGGER IF EXISTS telemetry_conversion_divert ON telemetry_legacy;
DROP TABLE IF EXISTS telemetry_conversion_rows;
DROP TABLE IF EXISTS telemetry_conversion;
DROP FUNCTION IF EXISTS telemetry_conversion_divert();
DROP FUNCTION IF EXISTS gito_013_switch();
DROP FUNCTION IF EXISTS gito_013_unconverted();
DROP FUNCTION IF EXISTS gito_013_with_lock_retry(TEXT);
