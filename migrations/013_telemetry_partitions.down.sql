-- Placeholder: see the up migration.
COMMENT ON TABLE telemetry IS NULL;
