-- Requests the gateway refused itself (401, 403, 404, 429, its own 503, ...) are not stored one
-- row each: each gateway counts them per tenant (NULL when the caller could not be
-- identified), outcome and UTC minute, and adds its counts here every few seconds, so the
-- database's write rate is bounded whatever the flood rate. The same counts are added to
-- `usage_hourly` (requests, error_requests; key and model NULL) so that reports from the
-- rollup keep counting refusals.
CREATE TABLE refused_requests (
    tenant_id   UUID,
    minute      TIMESTAMPTZ NOT NULL,
    -- the gateway's outcome label, e.g. unauthenticated, forbidden, rate_limited, quota
    outcome     TEXT NOT NULL,
    requests    BIGINT NOT NULL CHECK (requests >= 0),
    CONSTRAINT refused_requests_key UNIQUE NULLS NOT DISTINCT (tenant_id, minute, outcome)
);

CREATE INDEX refused_requests_tenant_minute_idx ON refused_requests (tenant_id, minute);
