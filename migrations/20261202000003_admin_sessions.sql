-- Dashboard sessions: a browser signs in once with a tenant admin token or the operator token
-- and then sends an opaque session cookie (`maas_session`: `maas_s_` + 64 hex digits, 256
-- random bits). As for keys, only the SHA-256 of the session token is stored. A session ends at
-- `expires_at` or when it is revoked (sign-out sets `revoked_at`); a tenant admin's session
-- also ends with the admin (revoked admins are refused at lookup, deleted ones cascade).
--
--   tenant_admin_id     the tenant admin signed in; NULL: the operator
--   operator_sha256     for the operator, the SHA-256 of the operator token signed in with, so
--                       that a new operator token ends every operator session
CREATE TABLE admin_sessions (
    token_sha256        TEXT PRIMARY KEY CHECK (token_sha256 ~ '^[0-9a-f]{64}$'),
    tenant_admin_id     UUID REFERENCES tenant_admins (id) ON DELETE CASCADE,
    operator_sha256     TEXT CHECK (operator_sha256 ~ '^[0-9a-f]{64}$'),
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at          TIMESTAMPTZ NOT NULL,
    revoked_at          TIMESTAMPTZ,
    CHECK (num_nonnulls(tenant_admin_id, operator_sha256) = 1)
);

CREATE INDEX admin_sessions_expires_idx ON admin_sessions (expires_at);
