-- Rollup rows are derived from raw rows, whose foreign key to `devices` already refuses a row of
-- an unknown device; checking each rollup row against `devices` again cost the follower as much
-- as writing it (in SQL, 313,000 minute rows: 1.6-2.0 s into a table without the key, 3.3-3.5 s
-- with it; bench/RESULTS.md, "Rollups without a foreign key"). What the keys still did was delete
-- a deleted device's rollups (ON DELETE CASCADE): a statement-level trigger does that now, after
-- every statement that deletes devices (the API's, a tenant's cascade, one typed by hand).
--
-- No rollup row can outlive its device: 019's trigger makes such a statement wait for the rollup
-- writers' turn (`rollups::WRITER`) before it locks a device, and a writer that takes the turn
-- after the deletion commits no longer sees the device's raw rows.
CREATE FUNCTION devices_take_their_rollups() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    -- `= ANY (ARRAY(...))`: an index scan per table whatever the number of devices deleted; a
    -- join with the transition table may be planned as a scan of the whole rollup table.
    DELETE FROM telemetry_rollup_1m WHERE device_id = ANY (ARRAY(SELECT id FROM gone));
    DELETE FROM telemetry_rollup_1h WHERE device_id = ANY (ARRAY(SELECT id FROM gone));
    DELETE FROM telemetry_rollup_1d WHERE device_id = ANY (ARRAY(SELECT id FROM gone));
    RETURN NULL;
END
$$;

CREATE TRIGGER devices_take_their_rollups AFTER DELETE ON devices
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION devices_take_their_rollups();

ALTER TABLE telemetry_rollup_1m DROP CONSTRAINT telemetry_rollup_1m_device_id_fkey;
ALTER TABLE telemetry_rollup_1h DROP CONSTRAINT telemetry_rollup_1h_device_id_fkey;
ALTER TABLE telemetry_rollup_1d DROP CONSTRAINT telemetry_rollup_1d_device_id_fkey;
