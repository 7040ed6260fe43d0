-- The classification hierarchy: organization > site > device group.
-- Each table carries UNIQUE (tenant_id, id) so that children can reference it with a composite
-- foreign key, which makes a reference across tenants impossible in the database itself.
CREATE TABLE organizations (
    id         UUID        PRIMARY KEY,
    tenant_id  UUID        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name       TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT organizations_tenant_id_id_key UNIQUE (tenant_id, id)
);

CREATE TABLE sites (
    id              UUID        PRIMARY KEY,
    tenant_id       UUID        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    organization_id UUID,
    name            TEXT        NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT sites_tenant_id_id_key UNIQUE (tenant_id, id),
    CONSTRAINT sites_organization_fk FOREIGN KEY (tenant_id, organization_id)
        REFERENCES organizations (tenant_id, id)
);

CREATE TABLE device_groups (
    id         UUID        PRIMARY KEY,
    tenant_id  UUID        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    site_id    UUID,
    name       TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT device_groups_tenant_id_id_key UNIQUE (tenant_id, id),
    CONSTRAINT device_groups_site_fk FOREIGN KEY (tenant_id, site_id)
        REFERENCES sites (tenant_id, id)
);
