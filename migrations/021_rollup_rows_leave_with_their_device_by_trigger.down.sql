-- The foreign keys back, for the binary before 021, as they were. Each is added NOT VALID, then
-- validated: a scan of the rollup table that holds off its writers (the follower and the backfill,
-- which are stopped anyway while a migration is rolled back, docs/MIGRATIONS.md) and finds no
-- orphan, since 021's trigger deleted every deleted device's rollups.
ALTER TABLE telemetry_rollup_1m ADD CONSTRAINT telemetry_rollup_1m_device_id_fkey
    FOREIGN KEY (device_id) REFERENCES devices (id) ON DELETE CASCADE NOT VALID;
ALTER TABLE telemetry_rollup_1m VALIDATE CONSTRAINT telemetry_rollup_1m_device_id_fkey;
ALTER TABLE telemetry_rollup_1h ADD CONSTRAINT telemetry_rollup_1h_device_id_fkey
    FOREIGN KEY (device_id) REFERENCES devices (id) ON DELETE CASCADE NOT VALID;
ALTER TABLE telemetry_rollup_1h VALIDATE CONSTRAINT telemetry_rollup_1h_device_id_fkey;
ALTER TABLE telemetry_rollup_1d ADD CONSTRAINT telemetry_rollup_1d_device_id_fkey
    FOREIGN KEY (device_id) REFERENCES devices (id) ON DELETE CASCADE NOT VALID;
ALTER TABLE telemetry_rollup_1d VALIDATE CONSTRAINT telemetry_rollup_1d_device_id_fkey;

DROP TRIGGER devices_take_their_rollups ON devices;
DROP FUNCTION devices_take_their_rollups();
