-- Usage events: one row per request seen by the gateway, identified by its request id
-- (UUIDv7, also returned to the client as `x-request-id`). Rejected requests are recorded too
-- (tenant and key may be NULL, e.g. a 401), with their status; only 2xx rows are billable.

CREATE TABLE usage_events (
    request_id          UUID PRIMARY KEY,
    started_at          TIMESTAMPTZ NOT NULL,
    tenant_id           UUID REFERENCES tenants (id),
    api_key_id          UUID REFERENCES api_keys (id),
    model               TEXT,
    model_version       TEXT,
    http_status         SMALLINT NOT NULL,
    -- rows processed (batch dimension summed), as reported by the backend
    inference_count     BIGINT NOT NULL DEFAULT 0,
    -- backend compute time, microseconds, as reported by the backend
    compute_us          BIGINT NOT NULL DEFAULT 0,
    request_bytes       BIGINT NOT NULL,
    response_bytes      BIGINT NOT NULL,
    -- time from the first request byte to the logging phase at the gateway, microseconds
    latency_us          BIGINT NOT NULL
);

CREATE INDEX usage_events_tenant_time_idx ON usage_events (tenant_id, started_at);
