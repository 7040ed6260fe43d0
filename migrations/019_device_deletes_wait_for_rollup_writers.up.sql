-- A device deletion locks the device row, then its rollup rows (ON DELETE CASCADE); a rollup
-- writer (the follower's rollup step, a backfill step) locks rollup rows, then checks their
-- devices (a foreign key). Each could wait for the other: PostgreSQL then aborts one of them
-- (40P01, seen in the test suite with a DELETE typed in psql). So every statement that deletes
-- devices (the API's, a tenant's cascade, one typed by hand) first takes its turn with the rollup
-- writers: the transaction-level advisory lock they hold while they write (`rollups::WRITER`,
-- "gitowrit"), taken before any device row is locked. A deletion waits for the step in progress
-- (at most a few seconds); a step waits for the deletion's commit.
CREATE FUNCTION devices_wait_for_rollup_writers() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7451615080555374964);
    RETURN NULL;
END
$$;

CREATE TRIGGER devices_wait_for_rollup_writers BEFORE DELETE ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION devices_wait_for_rollup_writers();
