DROP TABLE device_metrics;
DROP TABLE classification_rules;
