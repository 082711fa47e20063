-- Rate limits, concurrency limits, monthly quotas and budgets (issue 5).
--
-- A rule belongs to exactly one owner: a plan (the default for every tenant on it), a tenant
-- (overrides its plan), or an API key (overrides its tenant and plan for that key's own
-- counter). `level` says which counter the rule governs:
--   'key'    each API key's own counter (JWT requests have no key and skip this level);
--   'tenant' the tenant's counter, all keys and models together;
--   'model'  the tenant's counter for one model (`model` names it; NULL: each model apart).
-- For each level the most specific rule wins, field by field not merged: key > tenant > plan,
-- and for 'model' a rule naming the model beats one with model NULL at the same owner.
-- A NULL limit column means "no limit of that kind" at that level.

CREATE TABLE rate_limits (
    id                          UUID PRIMARY KEY,
    plan                        TEXT REFERENCES plans (name) ON DELETE CASCADE,
    tenant_id                   UUID REFERENCES tenants (id) ON DELETE CASCADE,
    api_key_id                  UUID REFERENCES api_keys (id) ON DELETE CASCADE,
    level                       TEXT NOT NULL CHECK (level IN ('key', 'tenant', 'model')),
    model                       TEXT,
    -- GCRA: `rate` requests per `period_s` seconds, `burst` of them at once.
    rate                        INTEGER CHECK (rate > 0),
    period_s                    INTEGER NOT NULL DEFAULT 1 CHECK (period_s > 0),
    burst                       INTEGER CHECK (burst > 0),
    -- requests in flight at once
    concurrency                 INTEGER CHECK (concurrency > 0),
    -- inference units (rows) per calendar month, UTC
    monthly_inference_quota     BIGINT CHECK (monthly_inference_quota >= 0),
    -- list-price value of the month's usage, micro-USD (plan_prices), UTC month
    monthly_budget_micro_usd    BIGINT CHECK (monthly_budget_micro_usd >= 0),
    created_at                  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (num_nonnulls(plan, tenant_id, api_key_id) = 1),
    CHECK (api_key_id IS NULL OR level = 'key'),
    CHECK (model IS NULL OR level = 'model'),
    CHECK (burst IS NULL OR rate IS NOT NULL)
);

CREATE UNIQUE INDEX rate_limits_owner_level_model_idx
    ON rate_limits (COALESCE(plan, ''), COALESCE(tenant_id::text, ''), COALESCE(api_key_id::text, ''),
                    level, COALESCE(model, ''));
CREATE INDEX rate_limits_tenant_idx ON rate_limits (tenant_id) WHERE tenant_id IS NOT NULL;
CREATE INDEX rate_limits_key_idx ON rate_limits (api_key_id) WHERE api_key_id IS NOT NULL;
