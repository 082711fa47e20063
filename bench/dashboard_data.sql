-- Dashboard benchmark data (bench/dashboard.sh): :tenants tenants on plan 'bench', 5 keys and
-- one tenant admin each (token 'maas_ta_' + the tenant number in 48 hex digits), and :events
-- usage events spread evenly over the last 60 days, generated in SQL (generate_series),
-- inserted in chunks of a million, then rolled up hourly exactly as the gateway's writer does
-- (usage_hourly) and analysed.
\set ON_ERROR_STOP on
\timing on

INSERT INTO plans (name, description) VALUES ('bench', 'dashboard benchmark');
INSERT INTO plan_prices (plan, model, per_request_micro_usd, per_1k_inferences_micro_usd,
                         per_compute_second_micro_usd, included_requests)
VALUES ('bench', '*', 10, 1000, 100000, 1000), ('bench', 'digits', 20, 2000, 0, 0);
INSERT INTO rate_limits (id, plan, level, monthly_inference_quota, monthly_budget_micro_usd)
VALUES (gen_random_uuid(), 'bench', 'tenant', 100000000, 500000000);

CREATE FUNCTION pg_temp.tenant_id(t bigint) RETURNS uuid IMMUTABLE LANGUAGE sql AS
$$ SELECT (lpad(to_hex(t), 8, '0') || '-0000-7000-8000-000000000000')::uuid $$;
CREATE FUNCTION pg_temp.key_id(t bigint, k bigint) RETURNS uuid IMMUTABLE LANGUAGE sql AS
$$ SELECT (lpad(to_hex(t), 8, '0') || '-' || lpad(to_hex(k), 4, '0') || '-7000-8000-000000000001')::uuid $$;

INSERT INTO tenants (id, name, plan)
SELECT pg_temp.tenant_id(t), 'bench-tenant-' || t, 'bench' FROM generate_series(1, :tenants) t;
INSERT INTO api_keys (id, tenant_id, name, prefix, secret_sha256)
SELECT pg_temp.key_id(t, k), pg_temp.tenant_id(t), 'key-' || k, 'maas_' || lpad(to_hex(t * 8 + k), 7, '0'),
       encode(sha256(('bench-key-' || t || '-' || k)::bytea), 'hex')
FROM generate_series(1, :tenants) t, generate_series(0, 4) k;
INSERT INTO tenant_admins (id, tenant_id, name, prefix, token_sha256)
SELECT gen_random_uuid(), pg_temp.tenant_id(t), 'bench-admin',
       left('maas_ta_' || lpad(to_hex(t), 48, '0'), 15),
       encode(sha256(('maas_ta_' || lpad(to_hex(t), 48, '0'))::bytea), 'hex')
FROM generate_series(1, :tenants) t;

SELECT maas_create_usage_partition(now() - make_interval(days => d))
FROM generate_series(0, 62, 14) d;
SELECT maas_create_usage_partition(now() - interval '61 days');

-- Event i: tenant i % tenants, key (i / tenants) % 5, model i % 3, 5% answered 500, started
-- (i / events) x 60 days ago.
INSERT INTO usage_events (request_id, started_at, tenant_id, api_key_id, model, model_version,
    http_status, inference_count, compute_us, request_bytes, response_bytes, latency_us)
SELECT gen_random_uuid(),
       now() - (i::double precision / :events) * interval '60 days',
       pg_temp.tenant_id(1 + i % :tenants),
       pg_temp.key_id(1 + i % :tenants, (i / :tenants) % 5),
       (ARRAY['digits', 'dense', 'seed-keras'])[1 + i % 3], '1',
       CASE WHEN i % 20 = 0 THEN 500 ELSE 200 END,
       CASE WHEN i % 20 = 0 THEN 0 ELSE 1 + i % 8 END,
       CASE WHEN i % 20 = 0 THEN 0 ELSE 500 + i % 3000 END,
       200, 120, 1500 + i % 1000
FROM generate_series(0, :events - 1) i;

INSERT INTO usage_hourly (tenant_id, api_key_id, model, hour, requests, billable_requests,
    error_requests, inference_count, compute_us, request_bytes, response_bytes)
SELECT tenant_id, api_key_id, model, date_trunc('hour', started_at, 'UTC'), count(*),
    count(*) FILTER (WHERE http_status BETWEEN 200 AND 299),
    count(*) FILTER (WHERE http_status >= 400 OR http_status < 100),
    coalesce(sum(inference_count) FILTER (WHERE http_status BETWEEN 200 AND 299), 0),
    coalesce(sum(compute_us) FILTER (WHERE http_status BETWEEN 200 AND 299), 0),
    sum(request_bytes), sum(response_bytes)
FROM usage_events GROUP BY 1, 2, 3, 4;

VACUUM ANALYZE;
SELECT count(*) AS usage_events FROM usage_events;
SELECT count(*) AS usage_hourly FROM usage_hourly;
