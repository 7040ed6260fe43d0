-- The processor's device cache then no longer hears of changes: run processors of this version
-- only (older ones expire their entries instead).
DROP TRIGGER device_types_notify_truncate ON device_types;
DROP TRIGGER device_types_notify_delete ON device_types;
DROP TRIGGER device_types_notify_update ON device_types;
DROP TRIGGER devices_notify_truncate ON devices;
DROP TRIGGER devices_notify_update ON devices;
DROP TRIGGER devices_notify_insert_delete ON devices;
DROP FUNCTION devices_notify();
