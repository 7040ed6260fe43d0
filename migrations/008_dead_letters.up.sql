-- Messages the processor received but can never store as they are (not an envelope, a device that
-- does not exist or is another tenant's, a row the database refuses). They are kept as received
-- instead of being dropped, so that nothing acknowledged is silently gone: operators list them and
-- replay them (GET and POST /tenants/{tenant_id}/dead-letters...). See
-- api/src/processor/dead_letters.rs.
CREATE TABLE dead_letters (
    id              UUID        PRIMARY KEY,
    -- The tenant the topic names, if there is one; NULL when it names none (an invalid topic, a
    -- tenant that does not exist). Its dead letters go with the tenant.
    tenant_id       UUID        REFERENCES tenants (id) ON DELETE CASCADE,
    topic           TEXT        NOT NULL,
    payload         BYTEA       NOT NULL,
    -- SHA-256 of the topic, a NUL byte and the payload: a redelivered message is kept once.
    digest          BYTEA       NOT NULL,
    -- A short code: invalid_topic, invalid_envelope, no_metrics, invalid_metric, unknown_device,
    -- constraint, invalid_value, store_failed.
    reason          TEXT        NOT NULL,
    -- The error as the processor saw it, for humans.
    error           TEXT        NOT NULL,
    -- How often it failed: received again, or replayed without success.
    failures        INTEGER     NOT NULL DEFAULT 1,
    first_failed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_failed_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT dead_letters_digest_key UNIQUE (digest),
    CONSTRAINT dead_letters_digest_check CHECK (length(digest) = 32)
);

CREATE INDEX dead_letters_tenant_id_id_idx ON dead_letters (tenant_id, id);
