-- What the processor needs: idempotent telemetry writes, flags for values a device type's schema
-- does not expect, and alert rules with their alerts.

-- A redelivered envelope carries the same device, metric and event time: it must not add a row.
-- Also serves "latest value per metric" (DISTINCT ON (metric) ... ORDER BY metric, ts DESC).
-- gito-lint: allow unique-constraint-builds-index: every deployment applied 006 before this rule existed (production is past it); a database that still runs it is a new one, whose telemetry table is empty. Ack lines are outside the checksum.
ALTER TABLE telemetry
    ADD COLUMN flagged BOOLEAN NOT NULL DEFAULT false,
    ADD CONSTRAINT telemetry_device_id_metric_ts_key UNIQUE (device_id, metric, ts);

CREATE TABLE alert_rules (
    id             UUID             PRIMARY KEY,
    tenant_id      UUID             NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name           TEXT             NOT NULL,
    metric         TEXT             NOT NULL,
    operator       TEXT             NOT NULL,
    threshold      DOUBLE PRECISION NOT NULL,
    -- At most one scope; none means every device of the tenant.
    device_id      UUID,
    device_type_id UUID,
    device_type    TEXT,
    created_at     TIMESTAMPTZ      NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ      NOT NULL DEFAULT now(),
    CONSTRAINT alert_rules_tenant_id_id_key UNIQUE (tenant_id, id),
    CONSTRAINT alert_rules_operator_check CHECK (operator IN ('>', '>=', '<', '<=', '==', '!=')),
    CONSTRAINT alert_rules_one_scope_check
        CHECK (num_nonnulls(device_id, device_type_id, device_type) <= 1),
    CONSTRAINT alert_rules_device_fk FOREIGN KEY (tenant_id, device_id)
        REFERENCES devices (tenant_id, id) ON DELETE CASCADE,
    CONSTRAINT alert_rules_device_type_fk FOREIGN KEY (tenant_id, device_type_id)
        REFERENCES device_types (tenant_id, id) ON DELETE CASCADE
);

CREATE INDEX alert_rules_tenant_id_metric_idx ON alert_rules (tenant_id, metric);

CREATE TABLE alerts (
    id              UUID             PRIMARY KEY,
    tenant_id       UUID             NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    rule_id         UUID             NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    device_id       UUID             NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    value           DOUBLE PRECISION NOT NULL,
    state           TEXT             NOT NULL DEFAULT 'open',
    opened_at       TIMESTAMPTZ      NOT NULL,
    acknowledged_at TIMESTAMPTZ,
    resolved_at     TIMESTAMPTZ,
    CONSTRAINT alerts_state_check CHECK (state IN ('open', 'acknowledged', 'resolved'))
);

-- One unresolved alert per rule and device, whoever evaluates.
CREATE UNIQUE INDEX alerts_one_unresolved_idx ON alerts (rule_id, device_id) WHERE state <> 'resolved';
CREATE INDEX alerts_tenant_id_state_idx ON alerts (tenant_id, state, opened_at DESC);

-- Where evaluation of a rule for a device stands: values older than last_ts (a replayed backlog,
-- another processor's late batch) no longer change the alert.
CREATE TABLE alert_rule_states (
    rule_id   UUID        NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    device_id UUID        NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    last_ts   TIMESTAMPTZ NOT NULL,
    firing    BOOLEAN     NOT NULL,
    PRIMARY KEY (rule_id, device_id)
);
