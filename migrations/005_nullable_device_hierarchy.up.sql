-- Devices may exist before anyone classifies them: the bridge creates them from MQTT topics with
-- no organization, site, group or device type. The composite foreign keys still hold for every
-- value that is present (MATCH SIMPLE skips a row whose referencing column is NULL).
ALTER TABLE devices
    ALTER COLUMN organization_id DROP NOT NULL,
    ALTER COLUMN site_id DROP NOT NULL,
    ALTER COLUMN device_group_id DROP NOT NULL,
    ALTER COLUMN device_type_id DROP NOT NULL;
