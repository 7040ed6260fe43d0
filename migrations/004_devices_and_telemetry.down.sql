DROP TABLE telemetry;
DROP TABLE devices;
