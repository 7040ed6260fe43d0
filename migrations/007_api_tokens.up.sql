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
