-- Restoring NOT NULL must not delete anything behind the operator's back: when unclassified
-- devices exist, stop with the column and the number of rows, and change nothing.
DO $$
DECLARE
    col  TEXT;
    rows BIGINT;
BEGIN
    FOREACH col IN ARRAY ARRAY['organization_id', 'site_id', 'device_group_id', 'device_type_id'] LOOP
        EXECUTE format('SELECT count(*) FROM devices WHERE %I IS NULL', col) INTO rows;
        IF rows > 0 THEN
            RAISE EXCEPTION 'cannot restore NOT NULL on devices.%: % row(s) hold NULL', col, rows
                USING HINT = 'assign those devices via PATCH /tenants/{tenant_id}/devices/{id} or delete them, then downgrade again';
        END IF;
    END LOOP;
END
$$;

ALTER TABLE devices
    ALTER COLUMN organization_id SET NOT NULL,
    ALTER COLUMN site_id SET NOT NULL,
    ALTER COLUMN device_group_id SET NOT NULL,
    ALTER COLUMN device_type_id SET NOT NULL;
