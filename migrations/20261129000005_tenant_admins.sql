-- Tenant admins (issue 4 item 1, issue 6 item 6): people of a tenant who may read that tenant's
-- usage, invoices and exports over the admin API, and nothing else.
--
-- A tenant admin authenticates with a bearer token `maas_ta_` + 48 lowercase hex digits (192
-- random bits), shown once at creation. As for API keys, only the SHA-256 of the whole token
-- (hex, lowercase) is stored, with a non-secret display prefix (e.g. "maas_ta_3f9a1c2") for
-- listings. A revoked admin (`revoked_at` set) is refused with 401; deleting the tenant deletes
-- its admins.

CREATE TABLE tenant_admins (
    id              UUID PRIMARY KEY,
    tenant_id       UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    prefix          TEXT NOT NULL,
    token_sha256    TEXT NOT NULL UNIQUE CHECK (token_sha256 ~ '^[0-9a-f]{64}$'),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at      TIMESTAMPTZ
);

CREATE INDEX tenant_admins_tenant_idx ON tenant_admins (tenant_id);
