-- Back to ranges summarized by VACUUM alone, on every BRIN index that 022 or the maintainer gave
-- `autosummarize` (partitions made since keep their index, which is the same index without it).
DO $$
DECLARE
    index regclass;
BEGIN
    FOR index IN
        SELECT i.inhrelid::regclass FROM pg_inherits i
        WHERE i.inhparent = to_regclass('telemetry_ts_brin')
        UNION ALL SELECT to_regclass('telemetry_rollup_1m_bucket_brin')
        UNION ALL SELECT to_regclass('telemetry_rollup_1h_bucket_brin')
    LOOP
        IF index IS NOT NULL THEN
            EXECUTE format('ALTER INDEX %s RESET (autosummarize)', index);
        END IF;
    END LOOP;
END
$$;
