-- The foreign keys back, for the binary before 021. NOT VALID: checked for every row written from
-- now on and cascading deletions as before, without scanning the rollups under a lock that blocks
-- their writers; the rows already there have no orphan (021's trigger deleted every deleted
-- device's rollups). `ALTER TABLE ... VALIDATE CONSTRAINT` in a quiet hour checks them too
-- (docs/MIGRATIONS.md).
ALTER TABLE telemetry_rollup_1m ADD CONSTRAINT telemetry_rollup_1m_device_id_fkey
    FOREIGN KEY (device_id) REFERENCES devices (id) ON DELETE CASCADE NOT VALID;
ALTER TABLE telemetry_rollup_1h ADD CONSTRAINT telemetry_rollup_1h_device_id_fkey
    FOREIGN KEY (device_id) REFERENCES devices (id) ON DELETE CASCADE NOT VALID;
ALTER TABLE telemetry_rollup_1d ADD CONSTRAINT telemetry_rollup_1d_device_id_fkey
    FOREIGN KEY (device_id) REFERENCES devices (id) ON DELETE CASCADE NOT VALID;

DROP TRIGGER devices_take_their_rollups ON devices;
DROP FUNCTION devices_take_their_rollups();
