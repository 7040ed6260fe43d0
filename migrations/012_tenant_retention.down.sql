ALTER TABLE tenants DROP COLUMN retention_days;
