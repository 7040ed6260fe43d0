-- How many days of telemetry a tenant keeps (NULL: GITO_TELEMETRY_RETENTION_DAYS, or forever when
-- that is unset). Set by the admin with PATCH /tenants/{tenant_id}; enforced by dropping whole
-- telemetry partitions or by batched deletes, and by the processor, which does not store samples
-- already older than it (docs/OPERATIONS.md, "Retention").
-- Lock-safe: a nullable column without a default, a constraint added NOT VALID, validated apart.
SET LOCAL lock_timeout = '5s';

ALTER TABLE tenants ADD COLUMN retention_days INTEGER;
ALTER TABLE tenants ADD CONSTRAINT tenants_retention_days_check
    CHECK (retention_days > 0) NOT VALID;
ALTER TABLE tenants VALIDATE CONSTRAINT tenants_retention_days_check;
