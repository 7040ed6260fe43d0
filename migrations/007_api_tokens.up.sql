-- Tenant API tokens. A token reads `gito_<key_id>_<secret>`: the key id finds the row, the
-- secret is only ever stored as its SHA-256 and compared in constant time. Revoking a token
-- deletes its row, so the next request with it is refused.
CREATE TABLE api_tokens (
    id            UUID        PRIMARY KEY,
    tenant_id     UUID        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name          TEXT        NOT NULL,
    key_id        TEXT        NOT NULL,
    secret_sha256 BYTEA       NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT api_tokens_key_id_key UNIQUE (key_id),
    CONSTRAINT api_tokens_secret_sha256_check CHECK (length(secret_sha256) = 32)
);

CREATE INDEX api_tokens_tenant_id_id_idx ON api_tokens (tenant_id, id);

-- gito-api replicas cache tokens and evict them when told: any deletion or change of a token,
-- however it happens, notifies them with its key id; a TRUNCATE with '*' (forget them all).
-- See api/src/http/token_cache.rs.
CREATE FUNCTION api_tokens_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        PERFORM pg_notify('gito_api_tokens', '*');
    ELSE
        PERFORM pg_notify('gito_api_tokens', OLD.key_id);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER api_tokens_revoked AFTER UPDATE OR DELETE ON api_tokens
    FOR EACH ROW EXECUTE FUNCTION api_tokens_notify();
CREATE TRIGGER api_tokens_truncated AFTER TRUNCATE ON api_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION api_tokens_notify();
