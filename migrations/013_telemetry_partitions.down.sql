-- Placeholder on the rollups branch so that 014 follows 013: the partitions branch's
-- 013_telemetry_partitions replaces this file at merge (take theirs).
SELECT 1;
