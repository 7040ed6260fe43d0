DROP TABLE alert_rule_states;
DROP TABLE alerts;
DROP TABLE alert_rules;
ALTER TABLE telemetry
    DROP CONSTRAINT telemetry_device_id_metric_ts_key,
    DROP COLUMN flagged;
