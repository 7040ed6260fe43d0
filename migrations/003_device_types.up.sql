-- Device types classify devices. telemetry_schema describes the metrics a type reports, e.g.
-- {"CHIMNEY_TEMP": {"unit": "°C", "min": 0, "max": 600}}.
CREATE TABLE device_types (
    id               UUID        PRIMARY KEY,
    tenant_id        UUID        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name             TEXT        NOT NULL,
    description      TEXT,
    telemetry_schema JSONB,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT device_types_tenant_id_id_key UNIQUE (tenant_id, id),
    CONSTRAINT device_types_tenant_id_name_key UNIQUE (tenant_id, name)
);
