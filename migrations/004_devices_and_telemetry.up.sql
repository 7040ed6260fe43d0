-- Devices as the original system had them: fully classified, every hierarchy column NOT NULL.
-- (005 relaxes this so that the bridge can create devices before anyone classifies them.)
CREATE TABLE devices (
    id              UUID        PRIMARY KEY,
    tenant_id       UUID        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    organization_id UUID        NOT NULL,
    site_id         UUID        NOT NULL,
    device_group_id UUID        NOT NULL,
    device_type_id  UUID        NOT NULL,
    device_type     TEXT,
    external_id     TEXT,
    name            TEXT        NOT NULL,
    status          TEXT        NOT NULL DEFAULT 'active',
    last_seen_at    TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT devices_tenant_id_id_key UNIQUE (tenant_id, id),
    -- NULLs are distinct: many devices may have no external id, but a present one is unique.
    CONSTRAINT devices_tenant_id_external_id_key UNIQUE (tenant_id, external_id),
    CONSTRAINT devices_organization_fk FOREIGN KEY (tenant_id, organization_id)
        REFERENCES organizations (tenant_id, id),
    CONSTRAINT devices_site_fk FOREIGN KEY (tenant_id, site_id)
        REFERENCES sites (tenant_id, id),
    CONSTRAINT devices_device_group_fk FOREIGN KEY (tenant_id, device_group_id)
        REFERENCES device_groups (tenant_id, id),
    CONSTRAINT devices_device_type_fk FOREIGN KEY (tenant_id, device_type_id)
        REFERENCES device_types (tenant_id, id),
    CONSTRAINT devices_status_check CHECK (status IN ('active', 'inactive', 'maintenance'))
);

CREATE INDEX devices_tenant_id_device_type_idx ON devices (tenant_id, device_type);
CREATE INDEX devices_tenant_id_device_type_id_idx ON devices (tenant_id, device_type_id);

-- One row per metric sample. Reads are per device over a time range, newest first.
CREATE TABLE telemetry (
    device_id  UUID             NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    ts         TIMESTAMPTZ      NOT NULL,
    metric     TEXT             NOT NULL,
    value      DOUBLE PRECISION,
    value_json JSONB
);

CREATE INDEX telemetry_device_id_ts_idx ON telemetry (device_id, ts DESC);
