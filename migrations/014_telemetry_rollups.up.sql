-- Rollups of numeric telemetry per device and metric at 1 minute, 1 hour and 1 day, kept by the
-- processor's merge in the transaction that stores the raw rows (docs/ARCHITECTURE.md, "Rollups").
-- New, empty tables: no lock on telemetry. Rollups of rows stored before 014 are built by the
-- processor's background backfill, device by device, from telemetry_rollup_backfill's position;
-- queries use a rollup for a device only once the backfill has passed it.
SET LOCAL lock_timeout = '5s';

CREATE TABLE telemetry_rollup_1m (
    device_id UUID             NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    metric    TEXT             NOT NULL,
    bucket    TIMESTAMPTZ      NOT NULL,
    count     BIGINT           NOT NULL,
    min       DOUBLE PRECISION NOT NULL,
    max       DOUBLE PRECISION NOT NULL,
    sum       DOUBLE PRECISION NOT NULL,
    first     DOUBLE PRECISION NOT NULL,
    first_ts  TIMESTAMPTZ      NOT NULL,
    last      DOUBLE PRECISION NOT NULL,
    last_ts   TIMESTAMPTZ      NOT NULL,
    PRIMARY KEY (device_id, metric, bucket)
) WITH (fillfactor = 70); -- a bucket is updated by every batch that adds to it: room for HOT updates

CREATE TABLE telemetry_rollup_1h (LIKE telemetry_rollup_1m INCLUDING ALL) WITH (fillfactor = 70);
ALTER TABLE telemetry_rollup_1h
    ADD FOREIGN KEY (device_id) REFERENCES devices (id) ON DELETE CASCADE;

CREATE TABLE telemetry_rollup_1d (LIKE telemetry_rollup_1m INCLUDING ALL) WITH (fillfactor = 70);
ALTER TABLE telemetry_rollup_1d
    ADD FOREIGN KEY (device_id) REFERENCES devices (id) ON DELETE CASCADE;

-- Where the backfill of rows stored before 014 stands: a device's rollups are complete once
-- `done`, or once its id is at most `after_device` (devices are backfilled in id order). One row.
CREATE TABLE telemetry_rollup_backfill (
    singleton    BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    done         BOOLEAN NOT NULL,
    after_device UUID
);

-- Nothing to backfill when telemetry is empty (a new database): one row read at most.
INSERT INTO telemetry_rollup_backfill (done)
SELECT NOT EXISTS (SELECT 1 FROM telemetry);
