-- Classification rules: "a device whose external_id matches PATTERN gets these targets". The API
-- applies the highest-priority matching rule when it creates a device (ties: the oldest rule) and,
-- on demand, to existing devices. `pattern` is MQTT-style (`+` one level, `#` the rest);
-- `pattern_regex` is its translation (api/src/domain/topic_pattern.rs, the one definition),
-- written by the API next to it so that PostgreSQL can match without a second definition.
-- Both tables are new: their indexes and constraints lock nothing that exists.
CREATE TABLE classification_rules (
    id              UUID        PRIMARY KEY,
    tenant_id       UUID        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    pattern         TEXT        NOT NULL,
    pattern_regex   TEXT        NOT NULL,
    device_type_id  UUID,
    organization_id UUID,
    site_id         UUID,
    device_group_id UUID,
    priority        INTEGER     NOT NULL DEFAULT 0,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- A target that is still named by a rule cannot be deleted (409): reassign the rule first.
    CONSTRAINT classification_rules_device_type_fk FOREIGN KEY (tenant_id, device_type_id)
        REFERENCES device_types (tenant_id, id),
    CONSTRAINT classification_rules_organization_fk FOREIGN KEY (tenant_id, organization_id)
        REFERENCES organizations (tenant_id, id),
    CONSTRAINT classification_rules_site_fk FOREIGN KEY (tenant_id, site_id)
        REFERENCES sites (tenant_id, id),
    CONSTRAINT classification_rules_device_group_fk FOREIGN KEY (tenant_id, device_group_id)
        REFERENCES device_groups (tenant_id, id),
    CONSTRAINT classification_rules_target_check CHECK (
        num_nonnulls(device_type_id, organization_id, site_id, device_group_id) > 0)
);

CREATE INDEX classification_rules_tenant_id_priority_idx
    ON classification_rules (tenant_id, priority DESC, id);
-- The composite foreign keys' referencing side, so that deleting a target does not scan.
CREATE INDEX classification_rules_device_type_idx ON classification_rules (tenant_id, device_type_id);
CREATE INDEX classification_rules_organization_idx ON classification_rules (tenant_id, organization_id);
CREATE INDEX classification_rules_site_idx ON classification_rules (tenant_id, site_id);
CREATE INDEX classification_rules_device_group_idx ON classification_rules (tenant_id, device_group_id);

-- Which metrics each device has sent: the processor inserts a pair the first time it sees it (and
-- refreshes last_seen_at at most every few minutes), for a device type's "discovered metrics" and
-- the classification inbox's grouping by metric set.
CREATE TABLE device_metrics (
    device_id     UUID        NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    metric        TEXT        NOT NULL,
    first_seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT device_metrics_pkey PRIMARY KEY (device_id, metric)
);
