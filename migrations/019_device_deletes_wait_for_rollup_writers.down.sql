-- Back to deletions that may deadlock with a rollup writer (the binary before 019 retries them).
DROP TRIGGER devices_wait_for_rollup_writers ON devices;
DROP FUNCTION devices_wait_for_rollup_writers();
