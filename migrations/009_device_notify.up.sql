-- The processor caches what it needs of a device (tenant, type, the type's telemetry schema) and
-- must never use a stale entry; gito-bridge must forget a deleted device at once. So every change
-- that matters announces itself on channel `gito_devices`, whoever makes it (the API, psql, a
-- tenant's cascade), as JSON:
--   {"op": "changed", "id": ...}                                     a device created or changed
--   {"op": "deleted", "id": ..., "tenant_id": ..., "external_id": ...} a device deleted
--   {"op": "type", "id": ...}                   a device type's schema changed, or the type deleted
--   *                                                          TRUNCATE: forget every device
-- Updates that change nothing the processor reads (last_seen_at on every batch, names, the
-- hierarchy) stay silent. See api/src/processor/watch.rs.
CREATE FUNCTION devices_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        PERFORM pg_notify('gito_devices', '*');
    ELSIF TG_TABLE_NAME = 'device_types' THEN
        PERFORM pg_notify('gito_devices', json_build_object('op', 'type', 'id', OLD.id)::text);
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('gito_devices', json_build_object(
            'op', 'deleted', 'id', OLD.id, 'tenant_id', OLD.tenant_id, 'external_id', OLD.external_id
        )::text);
    ELSE
        PERFORM pg_notify('gito_devices', json_build_object('op', 'changed', 'id', NEW.id)::text);
        IF TG_OP = 'UPDATE' AND OLD.id <> NEW.id THEN
            PERFORM pg_notify('gito_devices', json_build_object('op', 'changed', 'id', OLD.id)::text);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER devices_notify_insert_delete AFTER INSERT OR DELETE ON devices
    FOR EACH ROW EXECUTE FUNCTION devices_notify();
CREATE TRIGGER devices_notify_update AFTER UPDATE ON devices
    FOR EACH ROW
    WHEN ((OLD.id, OLD.tenant_id, OLD.device_type_id, OLD.device_type)
          IS DISTINCT FROM (NEW.id, NEW.tenant_id, NEW.device_type_id, NEW.device_type))
    EXECUTE FUNCTION devices_notify();
CREATE TRIGGER devices_notify_truncate AFTER TRUNCATE ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION devices_notify();

CREATE TRIGGER device_types_notify_update AFTER UPDATE ON device_types
    FOR EACH ROW
    WHEN ((OLD.id, OLD.telemetry_schema) IS DISTINCT FROM (NEW.id, NEW.telemetry_schema))
    EXECUTE FUNCTION devices_notify();
CREATE TRIGGER device_types_notify_delete AFTER DELETE ON device_types
    FOR EACH ROW EXECUTE FUNCTION devices_notify();
CREATE TRIGGER device_types_notify_truncate AFTER TRUNCATE ON device_types
    FOR EACH STATEMENT EXECUTE FUNCTION devices_notify();
