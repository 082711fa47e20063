-- Tenancy: tenants and their API keys.
-- API keys are stored only as the SHA-256 hash of the secret (hex, lowercase);
-- `prefix` is the non-secret display prefix (e.g. "maas_3f9a1c") shown in listings.

CREATE TABLE tenants (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    status      TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    plan        TEXT NOT NULL DEFAULT 'default',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id              UUID PRIMARY KEY,
    tenant_id       UUID NOT NULL REFERENCES tenants (id),
    name            TEXT NOT NULL,
    prefix          TEXT NOT NULL,
    secret_sha256   TEXT NOT NULL UNIQUE CHECK (secret_sha256 ~ '^[0-9a-f]{64}$'),
    -- NULL: every model; otherwise the model names this key may call.
    allowed_models  TEXT[],
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at      TIMESTAMPTZ,
    revoked_at      TIMESTAMPTZ,
    last_used_at    TIMESTAMPTZ
);

CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id);
