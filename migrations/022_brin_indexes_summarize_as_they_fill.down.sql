-- Back to ranges summarized by VACUUM alone, on every BRIN index that 022 or the maintainer gave
-- `autosummarize` (partitions made since keep their index, which is the same index without it).
ALTER INDEX telemetry_rollup_1m_bucket_brin RESET (autosummarize);
ALTER INDEX telemetry_rollup_1h_bucket_brin RESET (autosummarize);
DO $$
DECLARE
    index regclass;
BEGIN
    FOR index IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'telemetry_ts_brin'::regclass
    LOOP
        EXECUTE format('ALTER INDEX %s RESET (autosummarize)', index);
    END LOOP;
END
$$;
