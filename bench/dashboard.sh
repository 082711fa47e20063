#!/usr/bin/env bash
# Section 12 of `make bench` (bench/run.sh runs it inside scripts/with-services.sh, which gives
# DATABASE_URL): the dashboard's queries on real volumes. Generates MAAS_BENCH_DASHBOARD_EVENTS
# usage events (default 10,000,000) for 100 tenants in PostgreSQL with generate_series
# (bench/dashboard_data.sql), starts the release maas-gateway with its admin API, and times
# every call the dashboard makes (bench/dashboard_queries.py): p50 / p95 per call against the
# 200 ms target, and the same usage report from the hourly rollups against the raw events.
#
# Usage: bench/dashboard.sh RESULTS_DIR LOG_DIR
# (MAAS_BENCH_DASHBOARD_PROFILE=debug runs the debug binaries, for a quick check of the script.)
set -euo pipefail
cd "$(dirname "$0")/.."
res="$1"
logs="$2"
events="${MAAS_BENCH_DASHBOARD_EVENTS:-10000000}"
tenants=100
bin="target/${MAAS_BENCH_DASHBOARD_PROFILE:-release}"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

"$bin/maas-billing" migrate >/dev/null
echo "bench: dashboard: generating $events usage events for $tenants tenants in PostgreSQL"
start=$(date +%s.%N)
psql "$DATABASE_URL" -q -v events="$events" -v tenants="$tenants" -f bench/dashboard_data.sql \
    >"$logs/dashboard-data.log" 2>&1 || { tail -n 20 "$logs/dashboard-data.log" >&2; exit 1; }
load_s=$(python3 -c "import sys; print(round($(date +%s.%N) - $start, 1))")
grep -E "^ *[0-9]+$" "$logs/dashboard-data.log" | tail -n 2 || true
echo "bench: dashboard: data generated in $load_s s"

admin_port="$(free_port)"
listen_port="$(free_port)"
token="bench-operator-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
MAAS_GATEWAY_LISTEN="127.0.0.1:$listen_port" MAAS_GATEWAY_ADMIN__LISTEN="127.0.0.1:$admin_port" \
    MAAS_GATEWAY_ADMIN__OPERATOR_TOKEN="$token" MAAS_GATEWAY_METRICS__LISTEN=127.0.0.1:0 \
    MAAS_GATEWAY_UPSTREAM__BACKENDS='["127.0.0.1:9"]' MAAS_GATEWAY_GRACE_PERIOD_S=0 RUST_LOG=warn \
    MAAS_GATEWAY_METERING__SPOOL_DIR="$PWD/.data/bench/spool-dashboard" \
    "$bin/maas-gateway" serve --config config/gateway.toml >"$logs/gateway-dashboard.log" 2>&1 &
gw=$!
trap 'kill -TERM $gw 2>/dev/null || true; wait $gw 2>/dev/null || true' EXIT
for _ in $(seq 300); do
    curl -fsS -o /dev/null "http://127.0.0.1:$admin_port/admin/v1/openapi.json" 2>/dev/null && break
    kill -0 $gw 2>/dev/null || { echo "bench: dashboard: the gateway exited" >&2; tail -n 20 "$logs/gateway-dashboard.log" >&2; exit 1; }
    sleep 0.1
done
python3 bench/dashboard_queries.py --base "http://127.0.0.1:$admin_port" --operator-token "$token" \
    --tenants "$tenants" --events "$events" --load-s "$load_s" --out "$res/dashboard.json"
