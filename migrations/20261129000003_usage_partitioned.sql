-- Usage storage for exactly-once metering (issue 6):
--
-- * `usage_events` becomes a table partitioned by month of `started_at` (UTC months).
--   A primary key of a partitioned table must contain the partition column, so the key is
--   (request_id, started_at). Exactly-once still holds because `started_at` is a function of
--   the request: the gateway fixes it once per request id (it is the request id's UUIDv7
--   timestamp) and every spool record of the request carries that same value, so a replay
--   always lands in the same partition and hits the same key; `ON CONFLICT (request_id,
--   started_at) DO NOTHING` is the dedup.
-- * Partitions are created by `maas_create_usage_partition(ts)`, which the gateway's usage
--   writer calls for the months around "now" at start and every hour, and the insert path calls
--   on demand for any other month a batch needs (an old spool replayed, a fixture).
-- * No foreign keys from usage to tenants / api_keys: a usage row is a fact about the past and
--   must be storable even if the tenant is gone; this also keeps the ingest path to one index.
-- * `usage_hourly` is the rollup (tenant, key, model, UTC hour), updated in the same statement
--   as the insert from exactly the newly inserted rows.

ALTER TABLE usage_events RENAME TO usage_events_v1;
ALTER INDEX usage_events_tenant_time_idx RENAME TO usage_events_v1_tenant_time_idx;
ALTER TABLE usage_events_v1 RENAME CONSTRAINT usage_events_pkey TO usage_events_v1_pkey;

CREATE TABLE usage_events (
    request_id          UUID NOT NULL,
    started_at          TIMESTAMPTZ NOT NULL,
    tenant_id           UUID,
    api_key_id          UUID,
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
    latency_us          BIGINT NOT NULL,
    PRIMARY KEY (request_id, started_at)
) PARTITION BY RANGE (started_at);

CREATE INDEX usage_events_tenant_time_idx ON usage_events (tenant_id, started_at);

-- Creates (if missing) the partition of `usage_events` holding the UTC month of `ts`, named
-- usage_events_YYYY_MM, and returns its name. Safe to call concurrently (advisory lock).
CREATE FUNCTION maas_create_usage_partition(ts TIMESTAMPTZ) RETURNS TEXT
LANGUAGE plpgsql AS $$
DECLARE
    month_start TIMESTAMPTZ := date_trunc('month', ts, 'UTC');
    month_end   TIMESTAMPTZ := month_start + interval '1 month';
    part        TEXT := 'usage_events_' || to_char(month_start AT TIME ZONE 'UTC', 'YYYY_MM');
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('maas_create_usage_partition'));
    IF to_regclass(part) IS NULL THEN
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF usage_events FOR VALUES FROM (%L) TO (%L)',
            part, month_start, month_end);
    END IF;
    RETURN part;
END;
$$;

-- Partitions for the months of any existing rows and for the current and next two months.
SELECT maas_create_usage_partition(m)
FROM (
    SELECT DISTINCT date_trunc('month', started_at, 'UTC') AS m FROM usage_events_v1
    UNION
    SELECT date_trunc('month', now(), 'UTC') + make_interval(months => k)
    FROM generate_series(0, 2) AS k
) months;

INSERT INTO usage_events
SELECT request_id, started_at, tenant_id, api_key_id, model, model_version, http_status,
       inference_count, compute_us, request_bytes, response_bytes, latency_us
FROM usage_events_v1;

DROP TABLE usage_events_v1;

-- Hourly rollup. NULL tenant / key / model (e.g. a 401 from an unknown caller) form their own
-- group (NULLS NOT DISTINCT, PostgreSQL 15+), so the rollup's totals equal the raw rows'.
--   requests           every event
--   billable_requests  events answered 2xx (the only billable ones)
--   error_requests     events answered >= 400, or with no answer (status 0)
--   inference_count    rows processed, 2xx events only
--   compute_us         backend compute microseconds, 2xx events only
--   request_bytes / response_bytes   every event
CREATE TABLE usage_hourly (
    tenant_id           UUID,
    api_key_id          UUID,
    model               TEXT,
    hour                TIMESTAMPTZ NOT NULL,
    requests            BIGINT NOT NULL DEFAULT 0,
    billable_requests   BIGINT NOT NULL DEFAULT 0,
    error_requests      BIGINT NOT NULL DEFAULT 0,
    inference_count     BIGINT NOT NULL DEFAULT 0,
    compute_us          BIGINT NOT NULL DEFAULT 0,
    request_bytes       BIGINT NOT NULL DEFAULT 0,
    response_bytes      BIGINT NOT NULL DEFAULT 0,
    CONSTRAINT usage_hourly_key UNIQUE NULLS NOT DISTINCT (tenant_id, api_key_id, model, hour)
);

CREATE INDEX usage_hourly_tenant_hour_idx ON usage_hourly (tenant_id, hour);

-- The rollup of the rows carried over from the unpartitioned table.
INSERT INTO usage_hourly (tenant_id, api_key_id, model, hour, requests, billable_requests,
    error_requests, inference_count, compute_us, request_bytes, response_bytes)
SELECT tenant_id, api_key_id, model, date_trunc('hour', started_at, 'UTC'), count(*),
    count(*) FILTER (WHERE http_status BETWEEN 200 AND 299),
    count(*) FILTER (WHERE http_status >= 400 OR http_status < 100),
    coalesce(sum(inference_count) FILTER (WHERE http_status BETWEEN 200 AND 299), 0),
    coalesce(sum(compute_us) FILTER (WHERE http_status BETWEEN 200 AND 299), 0),
    sum(request_bytes), sum(response_bytes)
FROM usage_events GROUP BY 1, 2, 3, 4;

-- Pricing plans. Prices are integer micro-USD (1 USD = 1,000,000). A price row names a model,
-- or '*' for every model of the plan without its own row. Included units are per model per
-- calendar month (UTC) and are consumed before anything is charged.
CREATE TABLE plans (
    name            TEXT PRIMARY KEY,
    description     TEXT NOT NULL DEFAULT '',
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE plan_prices (
    plan                            TEXT NOT NULL REFERENCES plans (name) ON DELETE CASCADE,
    model                           TEXT NOT NULL,
    per_request_micro_usd           BIGINT NOT NULL DEFAULT 0 CHECK (per_request_micro_usd >= 0),
    per_1k_inferences_micro_usd     BIGINT NOT NULL DEFAULT 0 CHECK (per_1k_inferences_micro_usd >= 0),
    per_compute_second_micro_usd    BIGINT NOT NULL DEFAULT 0 CHECK (per_compute_second_micro_usd >= 0),
    included_requests               BIGINT NOT NULL DEFAULT 0 CHECK (included_requests >= 0),
    included_inferences             BIGINT NOT NULL DEFAULT 0 CHECK (included_inferences >= 0),
    included_compute_us             BIGINT NOT NULL DEFAULT 0 CHECK (included_compute_us >= 0),
    PRIMARY KEY (plan, model)
);

-- `tenants.plan` defaults to 'default': a free plan, so every tenant has one.
INSERT INTO plans (name, description) VALUES ('default', 'free: every model at no charge');
INSERT INTO plan_prices (plan, model) VALUES ('default', '*');
