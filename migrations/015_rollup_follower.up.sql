-- Rollups kept by a follower instead of in the processor's transaction (docs/ARCHITECTURE.md,
-- "Rollups"). The processor only stores raw rows, and logs the minute of each row it stores before
-- `invalidated_before`; the follower materializes whole minutes from raw rows up to
-- `materialized_before`, whole hours from minutes and whole days from hours once complete, and
-- recomputes the logged minutes (migration 016 indexes the rollups by bucket for it). New tables and one index built on no
-- partition (ON ONLY: instant); the partition maintainer builds that index on each existing
-- partition CONCURRENTLY and attaches it, new partitions get it at creation.
SET LOCAL lock_timeout = '5s';

CREATE TABLE telemetry_rollup_state (
    singleton           BOOLEAN     PRIMARY KEY DEFAULT true CHECK (singleton),
    -- A stored row older than this logs its minute in telemetry_rollup_invalidations. Moved only
    -- while no processor transaction is in flight (rollups::LOCK).
    invalidated_before  TIMESTAMPTZ NOT NULL,
    -- Every minute before this was rolled up from raw rows (the logged minutes aside); at most
    -- invalidated_before.
    materialized_before TIMESTAMPTZ NOT NULL,
    -- Every hour before this was rolled up from its minutes (the logged minutes' hours aside),
    -- and every day before days_before from its hours: an hour is rolled up once it is complete.
    hours_before        TIMESTAMPTZ NOT NULL,
    days_before         TIMESTAMPTZ NOT NULL,
    -- Rollup rows from this on were written by processors before 015 and are removed by the
    -- follower's first step (the follower rolls those minutes up again from raw rows).
    cleanup_from        TIMESTAMPTZ,
    CHECK (days_before <= hours_before AND hours_before <= materialized_before
           AND materialized_before <= invalidated_before)
);

-- Both edges start at the beginning of today (UTC): the rollups before it are complete (014's
-- processors kept them in their transactions); today's are rebuilt by the follower.
INSERT INTO telemetry_rollup_state
    (invalidated_before, materialized_before, hours_before, days_before, cleanup_from)
SELECT d, d, d, d, d FROM (SELECT date_bin('1 day', now(), TIMESTAMPTZ '2000-01-01 00:00:00+00') AS d) today;

-- Minutes (per device and metric) that received rows after the follower had passed them.
CREATE TABLE telemetry_rollup_invalidations (
    device_id UUID        NOT NULL,
    metric    TEXT        NOT NULL,
    bucket    TIMESTAMPTZ NOT NULL
);
CREATE INDEX telemetry_rollup_invalidations_device_id_bucket_idx
    ON telemetry_rollup_invalidations (device_id, bucket);

-- The follower reads raw rows by time range.
CREATE INDEX telemetry_ts_brin ON ONLY telemetry USING brin (ts);

-- Partitions under 8 MB (empty ones, those ahead of now, a new database's) get it now: a SHARE lock
-- on a table that small lasts milliseconds. Bigger ones get it from the partition maintainer,
-- CREATE INDEX CONCURRENTLY, writes going on (docs/OPERATIONS.md).
DO $$
DECLARE
    part TEXT;
BEGIN
    FOR part IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'telemetry'::regclass AND pg_relation_size(c.oid) < 8 * 1024 * 1024
    LOOP
        EXECUTE format('CREATE INDEX %I ON %I USING brin (ts)', part || '_ts_brin', part);
        EXECUTE format('ALTER INDEX telemetry_ts_brin ATTACH PARTITION %I', part || '_ts_brin');
    END LOOP;
END $$;
