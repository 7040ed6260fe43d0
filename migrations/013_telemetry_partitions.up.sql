-- Placeholder on the rollups branch so that 014 follows 013 (the round-trip test wants every
-- migration to change the schema, hence the comment): the partitions branch's
-- 013_telemetry_partitions replaces this file at merge (take theirs).
COMMENT ON TABLE telemetry IS 'placeholder for 013_telemetry_partitions';
