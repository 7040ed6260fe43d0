-- The rollup follower reads a minute of raw rows at a time through the BRIN index on `ts` of the
-- partition that holds it (015), and an hour of minute rows through the BRIN on `bucket` (016). A
-- BRIN index describes only the page ranges it has summarized; every range added since is read
-- whole by every scan. Without `autosummarize`, only VACUUM summarizes, and autovacuum comes to an
-- insert-only partition after 20 % more rows: by evening, a day's partition carries hours of
-- unsummarized pages that each minute's step reads again (bench/RESULTS.md, "BRIN ranges
-- summarized as they fill"). With it, a range is queued for summary as soon as inserts move past
-- it, and autovacuum summarizes it within a round (`autovacuum_naptime`).
--
-- Only a storage parameter of each index changes: a catalog update under the index's ACCESS
-- EXCLUSIVE lock, held for an instant (writers of the table wait that long) and bounded by
-- `GITO_MIGRATION_LOCK_TIMEOUT`. The partitioned index `telemetry_ts_brin` itself takes no storage
-- parameter (PostgreSQL refuses one): each partition's index gets it, and the maintainer creates
-- each new partition's with it (api/src/partitions.rs).
ALTER INDEX telemetry_rollup_1m_bucket_brin SET (autosummarize = on);
ALTER INDEX telemetry_rollup_1h_bucket_brin SET (autosummarize = on);
DO $$
DECLARE
    index regclass;
BEGIN
    FOR index IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'telemetry_ts_brin'::regclass
    LOOP
        EXECUTE format('ALTER INDEX %s SET (autosummarize = on)', index);
    END LOOP;
END
$$;
