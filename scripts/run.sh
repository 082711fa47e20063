#!/usr/bin/env bash
# The main job of `make run` (called inside scripts/with-services.sh, which provides
# DATABASE_URL): trains the demo model `digits` and imports the seed's Keras file as the demo
# model `seed-keras` if they have no version, starts one backend and one gateway, creates a demo
# tenant and API key, and prints ready-to-paste curls that classify a real row of the digits
# data and a probe row of the Keras model through the gateway. The admin API and the dashboard
# are on, with an operator token generated for this run, and a tenant admin of the demo tenant
# is created: the script prints the dashboard URL and the tokens to sign in with. Ctrl-C stops
# everything.
#
# Environment (all optional):
#   MAAS_PROFILE        cargo profile folder of the binaries (default: release)
#   MAAS_REPO           model repository folder (default: model_repository)
#   MAAS_BACKEND_LISTEN backend address (default: 127.0.0.1:8001)
#   MAAS_GATEWAY_LISTEN gateway address (default: 127.0.0.1:8080)
#   MAAS_ADMIN_LISTEN   admin API and dashboard address (default: 127.0.0.1:8081)
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${MAAS_PROFILE:-release}"
bin="target/$profile"
repo="${MAAS_REPO:-model_repository}"
backend_addr="${MAAS_BACKEND_LISTEN:-127.0.0.1:8001}"
gateway_addr="${MAAS_GATEWAY_LISTEN:-127.0.0.1:8080}"
admin_addr="${MAAS_ADMIN_LISTEN:-127.0.0.1:8081}"
# A fresh operator token for this run (192 bits from the OS random source).
operator_token="maas_op_$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
logs=".data/run/logs"
mkdir -p "$logs" "$repo"

# The servers run in their own sessions (setsid), so the terminal's Ctrl-C reaches only this
# script, which then stops them with SIGTERM: the gateway's graceful shutdown writes its
# pending usage events (SIGINT would make pingora exit at once).
pids=()
stop_all() {
    trap - EXIT INT TERM
    local p
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do   # gateway first, then backend
        p="${pids[$i]}"
        kill -TERM "$p" 2>/dev/null || continue
        for _ in $(seq 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap stop_all EXIT
trap 'echo; echo "stopping..."; exit 0' INT TERM

port_busy() { python3 -c "import socket,sys; s=socket.socket(); sys.exit(0 if s.connect_ex(('${1%:*}', ${1##*:}))==0 else 1)"; }
for a in "$backend_addr" "$gateway_addr" "$admin_addr"; do
    if port_busy "$a"; then echo "run: $a is already in use; set MAAS_BACKEND_LISTEN / MAAS_GATEWAY_LISTEN / MAAS_ADMIN_LISTEN" >&2; exit 1; fi
done

if ! compgen -G "$repo/digits/[0-9]*/model.safetensors" >/dev/null; then
    echo "run: training the demo model 'digits' (64 -> 128 relu -> 10 softmax) on data/digits.csv.gz"
    "$bin/maas-train" train --data data/digits.csv.gz --repo "$repo" --model digits 2>"$logs/train.log"
fi
if ! compgen -G "$repo/seed-keras/[0-9]*/model.safetensors" >/dev/null; then
    echo "run: importing the seed's Keras model 'seed-keras' (100 -> 128 relu -> 10 softmax) from data/seed-keras/model.h5"
    "$bin/maas-train" import keras data/seed-keras/model.h5 --repo "$repo" --name seed-keras 2>"$logs/import.log" \
        || { echo "run: the Keras import failed; see $logs/import.log" >&2; tail -n 5 "$logs/import.log" >&2; exit 1; }
fi

wait_for() { # url, name, pid
    for _ in $(seq 300); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        kill -0 "$3" 2>/dev/null || { echo "run: $2 exited; see $logs/$2.log" >&2; tail -n 20 "$logs/$2.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "run: $2 did not become ready; see $logs/$2.log" >&2; exit 1
}

setsid "$bin/maas-backend" serve --repo "$repo" --listen "$backend_addr" >"$logs/backend.log" 2>&1 &
pids+=($!)
wait_for "http://$backend_addr/v2/health/ready" backend "${pids[-1]}"

MAAS_GATEWAY_LISTEN="$gateway_addr" MAAS_GATEWAY_UPSTREAM__BACKENDS="[\"$backend_addr\"]" \
    MAAS_GATEWAY_GRACE_PERIOD_S=2 MAAS_GATEWAY_GRACEFUL_SHUTDOWN_TIMEOUT_S=3 \
    MAAS_GATEWAY_METERING__SPOOL_DIR="$PWD/.data/run/spool" \
    MAAS_GATEWAY_ADMIN__LISTEN="$admin_addr" MAAS_GATEWAY_ADMIN__OPERATOR_TOKEN="$operator_token" \
    setsid "$bin/maas-gateway" serve --config config/gateway.toml >"$logs/gateway.log" 2>&1 &
pids+=($!)
wait_for "http://$gateway_addr/v2/health/ready" gateway "${pids[-1]}"

key="$("$bin/maas-gateway" keys create --tenant demo --name "demo-$(date -u +%Y%m%dT%H%M%SZ)")"

# A tenant admin of the demo tenant, through the admin API (found by name).
admin_api() { # method path [json body]
    curl -fsS -X "$1" "http://$admin_addr$2" -H "Authorization: Bearer $operator_token" \
        ${3:+-H 'Content-Type: application/json' -d "$3"}
}
json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
demo_id="$(admin_api GET /admin/v1/tenants/by-name/demo | json_field id)"
tenant_admin="$(admin_api POST "/admin/v1/tenants/$demo_id/admins" \
    "{\"name\": \"demo-admin-$(date -u +%Y%m%dT%H%M%SZ)\"}" | json_field token)"

# A real row of the digits data set: 64 pixel values, then its label.
row="$(zcat data/digits.csv.gz | sed -n 11p)"
pixels="${row%,*}"
label="${row##*,}"
# The first probe row of the seed's Keras model and the class Keras itself predicts for it.
probe="$(sed -n 1p data/seed-keras/probe_inputs.csv)"
probe_class="$(sed -n 1p data/seed-keras/probe_outputs.csv | python3 -c 'import sys; v=[float(x) for x in sys.stdin.read().split(",")]; print(v.index(max(v)))')"

cat <<MSG

maas is running: gateway http://$gateway_addr -> backend http://$backend_addr (models 'digits', 'seed-keras')
Logs: $logs/   Usage rows: PostgreSQL table usage_events ($DATABASE_URL)

Classify a real handwritten digit (row 11 of data/digits.csv.gz, label $label) through the gateway:

curl -s http://$gateway_addr/v2/models/digits/infer \\
  -H 'Authorization: Bearer $key' \\
  -H 'Content-Type: application/json' \\
  -d '{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[$pixels]}]}'

The answer's "probabilities" has its largest value at index $label.

The seed's Keras model (imported from data/seed-keras/model.h5) on its first probe row:

curl -s http://$gateway_addr/v2/models/seed-keras/infer \\
  -H 'Authorization: Bearer $key' \\
  -H 'Content-Type: application/json' \\
  -d '{"inputs":[{"name":"input","shape":[1,100],"datatype":"FP32","data":[$probe]}]}'

Its "probabilities" match Keras's own (data/seed-keras/probe_outputs.csv, row 1): largest at index $probe_class.

(Each make run creates a new key; keys from earlier runs stay valid.)

Dashboard (README "Dashboard"): http://$admin_addr/dashboard
  Sign in as the demo tenant's admin with:  $tenant_admin
  or as the operator (every tenant) with:   $operator_token
  (the operator token is new on each make run; the admin API is at http://$admin_addr/admin/v1/,
  its OpenAPI document at http://$admin_addr/admin/v1/openapi.json)

Prometheus metrics (README "Observability"): curl -s http://${MAAS_GATEWAY_METRICS__LISTEN:-127.0.0.1:9464}/metrics
  and curl -s http://$backend_addr/metrics

Usage recorded so far for the tenant 'demo' (this month, as JSON):
  DATABASE_URL=$DATABASE_URL $bin/maas-billing usage --tenant demo

Press Ctrl-C to stop everything (backend, gateway, PostgreSQL, Redis).
MSG

wait -n "${pids[@]}" || true
echo "run: a server exited; see $logs/" >&2
exit 1
