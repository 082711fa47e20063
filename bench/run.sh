#!/usr/bin/env bash
# `make bench`: runs the benchmark suite on this machine, side by side in one run, and rewrites
# BENCHMARKS.md (bench/report.py) from the JSON results in .data/bench/results/.
#
# Sections (each figure judged by a ratio of two measurements taken in this same run):
#   loadtool    0. the load generator's own floor: wrk (-t1) and maas-loadtest side by side
#                  against nginx's fixed answer, the same digits body: wrk -c1 p50 against
#                  maas-loadtest's open loop at a low rate (target: within 1.5x), and closed-loop
#                  throughput at concurrency 32 (target: >= 0.8x wrk's).
#   gateway     1. gateway overhead: the same open-loop load (1,000 requests/s) straight to a
#                  trivially fast upstream (nginx returning a fixed OIP answer) and through
#                  maas-gateway with authentication and metering on; added p50 and p99.
#               2. peer proxy: the highest closed-loop throughput with p99 under 10 ms,
#                  maas-gateway against nginx as a plain reverse proxy to the same upstream.
#               3. metering accuracy: 2xx answers the client saw through the gateway against
#                  usage rows in PostgreSQL.
#               6. rate limiter: latency added by the in-process and the Redis limiter (open
#                  loop, same path), and accuracy (admitted against the GCRA bound).
#   backend     4. dynamic batching: a dense 1024 -> 4096 -> 4096 -> 1024 FP32
#                  model on CPU, release maas-backend, binary tensor bodies of random rows:
#                  (a) HTTP rows/s at concurrency 64 with batching / raw in-process forward of
#                  the same batch size (`maas-bench forward`); (b) batched / unbatched at
#                  concurrency 64; (c) p50 at concurrency 1, batched minus unbatched, against
#                  max_queue_delay_us.
#   auth        7. authentication on a cache hit (API key, RS256 JWT), criterion.
#   torchserve  5. maas-backend against TorchServe 0.12 serving the same TorchScript file on CPU,
#                  batching configured alike, same JSON bodies, same closed-loop load: throughput
#                  and p99 ratios.
#   ingest      8. metering ingest: usage events appended to a spool and drained
#                  into PostgreSQL (insert + hourly rollup, batches of 5,000), events/s, against
#                  the 50,000 events/s target and the gateway's peak request rate of figure 2.
#   split       9. model split into pipeline stages: a dense model of 8 layers
#                  of 4096 x 4096 FP32, rows/s of 1 stage (one process, whole model) against 2
#                  stages (front + serve-stage, 4 layers and 1 intra-op thread each) at the same
#                  closed-loop load, and the measured bubble fraction against GPipe's
#                  (stages - 1) / (micro_batches + stages - 1).
#   pools      10. backend pools: (a) a [[pools]] pool of one backend (discovery, health checks,
#                  P2C) against figure 2's [upstream] shorthand, same upstream, closed loop side
#                  by side; (b) a pool of one fast and one 20 ms slower backend, P2C on in-flight
#                  against round-robin: p99 of the pool and the slow backend's share.
#   metrics    11. metrics overhead: the gateway's closed-loop throughput with Prometheus metrics
#                  on against the same build with `[metrics] enabled = false`, alternating rounds.
#   dashboard  12. dashboard queries: 10M usage events of 100 tenants generated in PostgreSQL,
#                  p95 of every dashboard call against 200 ms; the same report from the hourly
#                  rollups against the raw events (bench/dashboard.sh).
#   soak       13. soak: maas-gateway (metering on) in front of maas-backend for
#                  MAAS_BENCH_SOAK_DURATION seconds at a steady open-loop load; resident set and
#                  open file descriptors of both at the start and the end (target: within 10%,
#                  no fd growth).
# A section that fails records why (results/<section>.failed) and the others still run;
# BENCHMARKS.md says "not measured: <why>" for it.
#
# Environment:
#   MAAS_BENCH_ONLY=backend,torchserve   run only these sections (default: all,
#                                        loadtool,gateway,backend,torchserve,auth,ingest,split,pools,metrics,
#                                        dashboard,soak)
#   MAAS_BENCH_DASHBOARD_EVENTS=10000000 usage events generated (dashboard)
#   MAAS_BENCH_METRICS_DURATION=5        seconds per measured run (metrics; 3 rounds each)
#   MAAS_BENCH_DURATION=10               seconds per measured run (gateway section)
#   MAAS_BENCH_LOADTOOL_DURATION=5       seconds per measured run (loadtool)
#   MAAS_BENCH_WRK_DURATION=5            seconds per wrk run (gateway section: figures 1, 2, 6)
#   MAAS_BENCH_BACKEND_DURATION=<same>   seconds per measured run (backend, torchserve)
#   MAAS_BENCH_THREADS=2                 libtorch intra-op threads (maas-backend, maas-bench forward,
#                                        TorchServe's worker)
#   MAAS_BENCH_INGEST_EVENTS=200000      usage events per ingest run (ingest)
#   MAAS_BENCH_SPLIT_DURATION=8          seconds per measured run (split)
#   MAAS_BENCH_SOAK_DURATION=600         seconds of steady load (soak)
#   MAAS_BENCH_SOAK_RATE=200             requests/s of that load (soak)
# Everything listens on loopback, on free ports; load loops are bounded in time; every server
# started here is stopped on exit. Needs: nginx (installed with apt-get when missing), PostgreSQL
# and Redis (scripts/with-services.sh) for the gateway section; Java 17 and a venv with
# TorchServe (.data/bench-venv, created with pip when missing) for the torchserve section.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=target/release
OUT=.data/bench
RES="$OUT/results"
DURATION="${MAAS_BENCH_DURATION:-10}"
WRK_DURATION="${MAAS_BENCH_WRK_DURATION:-5}"
BE_DURATION="${MAAS_BENCH_BACKEND_DURATION:-$DURATION}"
THREADS="${MAAS_BENCH_THREADS:-2}"
ONLY="${MAAS_BENCH_ONLY:-loadtool,gateway,backend,torchserve,auth,ingest,split,pools,metrics,dashboard,soak}"
MET_DURATION="${MAAS_BENCH_METRICS_DURATION:-5}"
MET_ROUNDS=3
MET_CONCURRENCY=32
TS_VENV=.data/bench-venv
TS_VERSION="0.12.*"

want() { [[ ",$ONLY," == *",$1,"* ]]; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
half() { python3 -c "import sys; print(max(2.0, float(sys.argv[1]) / 2))" "$1"; }

# Servers started by the current section: "pid" or "-pgid" (a whole process group).
pids=()
stop_servers() {
    local p
    for p in "${pids[@]}"; do
        if [[ "$p" == -* ]]; then kill -TERM -- "$p" 2>/dev/null || true; else kill -TERM "$p" 2>/dev/null || true; fi
    done
    for p in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 -- "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "$p" 2>/dev/null || true
    done
    pids=()
    wait 2>/dev/null || true
}

wait_http() { # url [tries of 0.1 s] [pid of the server: give up when it exits]
    for _ in $(seq "${2:-300}"); do
        curl -sf -o /dev/null "$1" && return 0
        if [ -n "${3:-}" ] && ! kill -0 "$3" 2>/dev/null; then echo "bench: the server for $1 exited" >&2; return 1; fi
        sleep 0.1
    done
    echo "bench: $1 did not answer" >&2; return 1
}

# Records why the current section stops, then stops it.
fail() { echo "$*" > "$RES/$SECTION.failed"; echo "bench: $SECTION: $*" >&2; exit 1; }

# run_section NAME FUNCTION: runs FUNCTION in a subshell with `set -e`, its own servers and its
# own log; on failure writes results/NAME.failed (the reason given to `fail`, else the failing
# command) unless FUNCTION wrote one.
# The result files of each section (kept across runs that leave the section out).
section_files() {
    case "$1" in
        loadtool) echo "lt-*" ;;
        gateway) echo "overhead-* gw-* peak-* lim-* wrk-* redis-evalsha-* metering-rows.txt" ;;
        metrics) echo "met-*" ;;
        backend) echo "be-*" ;;
        torchserve) echo "ts-*" ;;
        auth) echo "auth.json" ;;
        ingest) echo "ingest*" ;;
        split) echo "split-*" ;;
        pools) echo "pools-*" ;;
        soak) echo "soak*" ;;
    esac
}

run_section() {
    local name="$1" fn="$2" rc f
    if ! want "$name"; then
        # Left out of this run: an earlier run's results stay (the report dates them).
        [ -f "$RES/$name.measured" ] || echo "not run: not in MAAS_BENCH_ONLY=$ONLY" > "$RES/$name.skipped"
        return 0
    fi
    for f in $(section_files "$name") "$name.failed" "$name.skipped" "$name.measured"; do
        rm -f "$RES"/$f
    done
    date -u '+%Y-%m-%d %H:%M UTC' > "$RES/$name.measured"
    echo "bench: == section $name =="
    set +e
    (
        set -eEuo pipefail
        SECTION="$name"
        trap 'echo "command failed (status $?) at bench/run.sh line $LINENO: $BASH_COMMAND (see $OUT/logs/section-$SECTION.log)" > "$RES/$SECTION.error"' ERR
        trap 'stop_servers' EXIT
        "$fn"
    ) 2>&1 | tee "$OUT/logs/section-$name.log"
    rc=${PIPESTATUS[0]}
    set -e
    if [ "$rc" != 0 ] && [ ! -f "$RES/$name.failed" ]; then
        if [ -f "$RES/$name.error" ]; then cp "$RES/$name.error" "$RES/$name.failed";
        else echo "exit status $rc; see $OUT/logs/section-$name.log" > "$RES/$name.failed"; fi
    fi
    rm -f "$RES/$name.error"
    [ "$rc" = 0 ] || echo "bench: section $name failed: $(cat "$RES/$name.failed")"
    return 0
}

# ================================================================================================
# Section loadtool: the load generator's own floor, wrk and maas-loadtest side by side.
# ================================================================================================
LT_DURATION="${MAAS_BENCH_LOADTOOL_DURATION:-5}"
LT_RATE=500

section_loadtool() {
    command -v nginx >/dev/null || fail "nginx is not installed and could not be installed"
    command -v wrk >/dev/null || fail "wrk is not installed and could not be installed"
    local UP_PORT NGX_PROXY_PORT
    start_fixed_upstream
    local URL="http://127.0.0.1:$UP_PORT/v2/models/digits/infer"
    # The same digits row for both tools: maas-loadtest builds it, wrk sends it as a file.
    local LT=("$BIN/maas-loadtest" --no-progress --url "$URL" --body file --body-file "$OUT/lt-body.json")
    python3 - "$OUT/lt-body.json" <<'PY'
import gzip, json, sys
row = gzip.open("data/digits.csv.gz", "rt").readline().strip().split(",")[:64]
body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [float(x) for x in row]}]}
open(sys.argv[1], "w").write(json.dumps(body, separators=(",", ":")))
PY
    wrk_run() { # connections name
        WRK_BODY="$OUT/lt-body.json" WRK_JSON="$RES/$2.json" \
            wrk -t1 -c"$1" -d"${LT_DURATION}s" --latency -s bench/wrk/post.lua "$URL"
    }
    echo "bench: loadtool: warm-up"
    "${LT[@]}" --mode closed --concurrency 32 --duration 1 --json "$OUT/lt-warmup.json" 2>/dev/null
    echo "bench: loadtool: concurrency 1 (${LT_DURATION} s each)"
    wrk_run 1 lt-wrk-c1
    "${LT[@]}" --mode open --rate "$LT_RATE" --concurrency 4 --duration "$LT_DURATION" \
        --name lt-open --json "$RES/lt-open.json"
    "${LT[@]}" --mode open --rate "$LT_RATE" --concurrency 4 --duration "$LT_DURATION" --busy-poll \
        --name lt-open-busy --json "$RES/lt-open-busy.json"
    "${LT[@]}" --mode closed --concurrency 1 --duration "$LT_DURATION" \
        --name lt-closed-c1 --json "$RES/lt-closed-c1.json"
    echo "bench: loadtool: concurrency 32"
    wrk_run 32 lt-wrk-c32
    "${LT[@]}" --mode closed --concurrency 32 --duration "$LT_DURATION" \
        --name lt-closed-c32 --json "$RES/lt-closed-c32.json"
    printf '{"rate": %s, "duration_s": %s}\n' "$LT_RATE" "$LT_DURATION" > "$RES/lt-config.json"
}

# ================================================================================================
# Section gateway (run inside scripts/with-services.sh: needs PostgreSQL and Redis).
# ================================================================================================
# nginx on two free ports: UP_PORT answers every request with a fixed OIP answer and the
# backend's usage headers (the trivially fast upstream), NGX_PROXY_PORT is nginx as a plain
# reverse proxy to it (the peer). Sets UP_PORT and NGX_PROXY_PORT (declare them local first).
start_fixed_upstream() {
    mkdir -p "$OUT/nginx"
    local ANSWER
    UP_PORT="$(free_port)"; NGX_PROXY_PORT="$(free_port)"
    ANSWER='{"model_name":"digits","model_version":"1","outputs":[{"name":"probabilities","datatype":"FP32","shape":[1,10],"data":[0.01,0.01,0.01,0.01,0.01,0.01,0.01,0.91,0.01,0.01]}]}'
    cat > "$OUT/nginx/nginx.conf" <<NGX
worker_processes 1;
daemon on;
pid $PWD/$OUT/nginx/nginx.pid;
error_log $PWD/$OUT/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $PWD/$OUT/nginx/body;
    proxy_temp_path $PWD/$OUT/nginx/proxy;
    fastcgi_temp_path $PWD/$OUT/nginx/fastcgi;
    uwsgi_temp_path $PWD/$OUT/nginx/uwsgi;
    scgi_temp_path $PWD/$OUT/nginx/scgi;
    keepalive_requests 1000000;
    upstream fixed { server 127.0.0.1:$UP_PORT; keepalive 128; }
    # The trivially fast upstream: a fixed OIP answer with the backend's usage headers.
    server {
        listen 127.0.0.1:$UP_PORT;
        location / {
            default_type application/json;
            add_header x-maas-inference-count 1 always;
            add_header x-maas-compute-us 10 always;
            return 200 '$ANSWER';
        }
    }
    # The peer: nginx as a plain reverse proxy to the same upstream.
    server {
        listen 127.0.0.1:$NGX_PROXY_PORT;
        location / {
            proxy_pass http://fixed;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
NGX
    nginx -c "$PWD/$OUT/nginx/nginx.conf" || fail "nginx did not start (see $OUT/nginx/error.log)"
    stop_nginx() { [ -f "$OUT/nginx/nginx.pid" ] && kill -QUIT "$(cat "$OUT/nginx/nginx.pid")" 2>/dev/null || true; }
    trap 'stop_servers; stop_nginx' EXIT
    wait_http "http://127.0.0.1:$UP_PORT/" || fail "nginx did not answer"
}

# CPU time (user + system, seconds) of the processes named in CPU_PIDS ("label=pid" words), as a
# JSON object on stdout: what each process spent on a run (wrk_run takes the difference).
CPU_PIDS=""
cpu_seconds() {
    # shellcheck disable=SC2086
    python3 -c '
import json, os, sys
tick = os.sysconf("SC_CLK_TCK")
out = {}
for word in sys.argv[1:]:
    label, pid = word.split("=")
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        out[label] = (int(fields[11]) + int(fields[12])) / tick
    except OSError:
        pass
print(json.dumps(out))' $CPU_PIDS
}

# wrk_run NAME URL CONNECTIONS [KEY]: one wrk run (one thread, `--latency`, bench/wrk/infer.lua
# posting the digits infer body) for WRK_DURATION seconds. RES/NAME.json: its summary
# (requests/s, latency percentiles in microseconds, non-2xx answers, socket errors), the
# connections, and `cpu_s`, the CPU seconds each process of CPU_PIDS spent meanwhile; wrk's own
# text output goes to OUT/logs/NAME.txt.
wrk_run() {
    local name="$1" url="$2" conns="$3" key="${4:-}" before after
    before="$(cpu_seconds)"
    MAAS_BENCH_WRK_KEY="$key" wrk -t1 -c"$conns" -d"${WRK_DURATION}s" --latency -s bench/wrk/infer.lua "$url" \
        >"$OUT/logs/$name.txt" 2>"$RES/$name.json" || fail "wrk $name failed (see $OUT/logs/$name.txt)"
    after="$(cpu_seconds)"
    python3 -c '
import json, sys
path, conns, before, after = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
r = json.load(open(path))
r["connections"] = conns
r["cpu_s"] = {k: round(after[k] - before[k], 3) for k in after if k in before}
json.dump(r, open(path, "w"))' "$RES/$name.json" "$conns" "$before" "$after" \
        || fail "wrk $name wrote no summary (see $RES/$name.json)"
    echo "bench: wrk $name: $(cat "$RES/$name.json")"
}

# redis_evalsha NAME CLIENTS: a bare EVALSHA round trip of the limiter's own admit.lua with the
# shape section 6's tenant rule gives it (no releases carried, one GCRA item and one concurrency item, never refused),
# redis-benchmark against the section's Redis; its CSV line goes to RES/NAME.csv.
redis_evalsha() {
    local name="$1" clients="$2" host port sha
    host="$(python3 -c 'import sys, urllib.parse; print(urllib.parse.urlparse(sys.argv[1]).hostname)' "$REDIS_URL")"
    port="$(python3 -c 'import sys, urllib.parse; print(urllib.parse.urlparse(sys.argv[1]).port or 6379)' "$REDIS_URL")"
    sha="$(redis-cli -h "$host" -p "$port" SCRIPT LOAD "$(cat gateway/src/limits/limiter/admit.lua)")"
    redis-benchmark -h "$host" -p "$port" -c "$clients" -n $((20000 * clients)) --csv \
        EVALSHA "$sha" 2 'maas:bench:{b}:rate' 'maas:bench:{b}:conc' bench-rid 1 0 g 10 100000000 c 256 0 \
        > "$RES/$name.csv" || fail "redis-benchmark $name failed"
    echo "bench: redis-benchmark $name: $(tail -n 1 "$RES/$name.csv")"
}

section_gateway_inner() {
    local UP_PORT NGX_PROXY_PORT GW_PORT KEY WKEY
    start_fixed_upstream

    # --- the gateway in front of the same upstream ----------------------------------------------
    GW_PORT="$(free_port)"
    MAAS_GATEWAY_LISTEN="127.0.0.1:$GW_PORT" MAAS_GATEWAY_METRICS__LISTEN=127.0.0.1:0 MAAS_GATEWAY_UPSTREAM__BACKENDS="[\"127.0.0.1:$UP_PORT\"]" \
        MAAS_GATEWAY_GRACE_PERIOD_S=2 MAAS_GATEWAY_GRACEFUL_SHUTDOWN_TIMEOUT_S=5 RUST_LOG=warn \
        MAAS_GATEWAY_METERING__SPOOL_DIR="$PWD/$OUT/spool" \
        "$BIN/maas-gateway" serve --config config/gateway.toml >"$OUT/logs/gateway.log" 2>&1 &
    local gw_pid=$!
    pids+=("$gw_pid")
    wait_http "http://127.0.0.1:$GW_PORT/v2/health/live" || fail "maas-gateway did not start (see $OUT/logs/gateway.log)"
    KEY="$("$BIN/maas-gateway" keys create --tenant bench --name "bench-$(date +%s)")"
    # wrk's key has a tenant of its own: wrk leaves requests in flight when its time is up (the
    # gateway still meters them), so its answers stay out of figure 3's exact count.
    WKEY="$("$BIN/maas-gateway" keys create --tenant bench-wrk --name "wrk-$(date +%s)")"

    # Context: pingora itself with no filters (no authentication, limits or metering), same
    # threads, same upstream: what the gateway's own work is added to.
    local BARE_PORT bare_pid
    BARE_PORT="$(free_port)"
    "$BIN/examples/bare_proxy" "127.0.0.1:$BARE_PORT" "127.0.0.1:$UP_PORT" >"$OUT/logs/bare-proxy.log" 2>&1 &
    bare_pid=$!
    pids+=("$bare_pid")
    wait_http "http://127.0.0.1:$BARE_PORT/" 50 "$bare_pid" || fail "bare_proxy did not start (see $OUT/logs/bare-proxy.log)"
    # nginx runs one worker for both of its servers (the upstream and the peer proxy).
    CPU_PIDS="nginx=$(pgrep -P "$(cat "$OUT/nginx/nginx.pid")" | head -n 1) gateway=$gw_pid bare=$bare_pid"
    local BARE_URL="http://127.0.0.1:$BARE_PORT/v2/models/digits/infer"
    local LT=("$BIN/maas-loadtest" --no-progress --body digits --digits data/digits.csv.gz)
    local DIRECT_URL="http://127.0.0.1:$UP_PORT/v2/models/digits/infer"
    local GW_URL="http://127.0.0.1:$GW_PORT/v2/models/digits/infer"
    local NGX_URL="http://127.0.0.1:$NGX_PROXY_PORT/v2/models/digits/infer"

    echo "bench: warm-up"
    "${LT[@]}" --url "$GW_URL" --key "$KEY" --mode closed --concurrency 8 --duration 2 \
        --name gw-warmup --json "$RES/gw-warmup.json" 2>/dev/null
    "${LT[@]}" --url "$NGX_URL" --mode closed --concurrency 8 --duration 1 --name ngx-warmup \
        --json "$OUT/ngx-warmup.json" 2>/dev/null

    echo "bench: 1. gateway overhead at 1,000 requests/s (open loop, ${DURATION} s each)"
    "${LT[@]}" --url "$DIRECT_URL" --mode open --rate 1000 --concurrency 64 --duration "$DURATION" \
        --name overhead-direct --json "$RES/overhead-direct.json" --plot "$OUT/overhead-direct.svg"
    "${LT[@]}" --url "$GW_URL" --key "$KEY" --mode open --rate 1000 --concurrency 64 \
        --duration "$DURATION" --name gw-overhead-gateway --json "$RES/gw-overhead-gateway.json" \
        --plot "$OUT/overhead-gateway.svg"
    "${LT[@]}" --url "$BARE_URL" --mode open --rate 1000 --concurrency 64 --duration "$DURATION" \
        --name overhead-bare --json "$RES/overhead-bare.json"
    echo "bench: 1. the same paths with wrk, one connection (${WRK_DURATION} s each)"
    wrk_run wrk-c1-direct "$DIRECT_URL" 1
    wrk_run wrk-c1-nginx "$NGX_URL" 1
    wrk_run wrk-c1-bare "$BARE_URL" 1
    wrk_run wrk-c1-gateway "$GW_URL" 1 "$WKEY"

    # --- 6. the rate limiter on the same path ----------------------------------------------------
    # Tenant bench-limits has a tenant rule no run reaches (100,000 requests/s, burst 10,000, 256
    # in flight), so every request runs the limiter and none is refused: the latency added by the
    # in-process limiter (this gateway, [limits] backend = "local") and by the Redis limiter (a
    # second gateway with backend = "redis", against its own unlimited baseline).
    local LKEY AKEY1 AKEY2 GW2_PORT GW2_URL gw2_pid
    LKEY="$("$BIN/maas-gateway" keys create --tenant bench-limits --name "bench-$(date +%s)")"
    AKEY1="$("$BIN/maas-gateway" keys create --tenant bench-accuracy --name "local-$(date +%s)")"
    AKEY2="$("$BIN/maas-gateway" keys create --tenant bench-accuracy --name "redis-$(date +%s)")"
    psql "$DATABASE_URL" -qc "INSERT INTO rate_limits (id, tenant_id, level, rate, burst, concurrency)
        SELECT gen_random_uuid(), id, 'tenant', 100000, 10000, 256 FROM tenants WHERE name = 'bench-limits'"
    # Accuracy: each key may send $LIM_RATE requests/s with a burst of $LIM_BURST.
    psql "$DATABASE_URL" -qc "INSERT INTO rate_limits (id, api_key_id, level, rate, burst)
        SELECT gen_random_uuid(), k.id, 'key', $LIM_RATE, $LIM_BURST FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
        WHERE t.name = 'bench-accuracy'"
    GW2_PORT="$(free_port)"
    MAAS_GATEWAY_LISTEN="127.0.0.1:$GW2_PORT" MAAS_GATEWAY_METRICS__LISTEN=127.0.0.1:0 MAAS_GATEWAY_UPSTREAM__BACKENDS="[\"127.0.0.1:$UP_PORT\"]" \
        MAAS_GATEWAY_GRACE_PERIOD_S=2 MAAS_GATEWAY_GRACEFUL_SHUTDOWN_TIMEOUT_S=5 RUST_LOG=warn \
        MAAS_GATEWAY_METERING__SPOOL_DIR="$PWD/$OUT/spool-redis" MAAS_GATEWAY_LIMITS__BACKEND=redis \
        MAAS_GATEWAY_LIMITS__REDIS_TIMEOUT_MS="$LIM_REDIS_TIMEOUT_MS" \
        "$BIN/maas-gateway" serve --config config/gateway.toml >"$OUT/logs/gateway-redis.log" 2>&1 &
    gw2_pid=$!
    pids+=("$gw2_pid")
    wait_http "http://127.0.0.1:$GW2_PORT/v2/health/live" || fail "the Redis-limited maas-gateway did not start (see $OUT/logs/gateway-redis.log)"
    GW2_URL="http://127.0.0.1:$GW2_PORT/v2/models/digits/infer"
    CPU_PIDS="$CPU_PIDS gateway2=$gw2_pid"
    "${LT[@]}" --url "$GW2_URL" --key "$KEY" --mode closed --concurrency 8 --duration 2 \
        --name gw-warmup-redis --json "$RES/gw-warmup-redis.json" 2>/dev/null
    echo "bench: 6. limiter latency at 1,000 requests/s (open loop, ${DURATION} s each)"
    "${LT[@]}" --url "$GW_URL" --key "$LKEY" --mode open --rate 1000 --concurrency 64 \
        --duration "$DURATION" --name lim-local --json "$RES/lim-local.json"
    "${LT[@]}" --url "$GW2_URL" --key "$KEY" --mode open --rate 1000 --concurrency 64 \
        --duration "$DURATION" --name gw-limits-redis-base --json "$RES/gw-limits-redis-base.json"
    "${LT[@]}" --url "$GW2_URL" --key "$LKEY" --mode open --rate 1000 --concurrency 64 \
        --duration "$DURATION" --name lim-redis --json "$RES/lim-redis.json"
    echo "bench: 6. limiter accuracy: $LIM_RATE requests/s, burst $LIM_BURST (loadtest/scenarios/limits.toml)"
    MAAS_LIMITED_KEY="$AKEY1" "${LT[@]}" --scenario loadtest/scenarios/limits.toml --url "$GW_URL" \
        --duration "$DURATION" --name lim-accuracy-local --json "$RES/lim-accuracy-local.json"
    MAAS_LIMITED_KEY="$AKEY2" "${LT[@]}" --scenario loadtest/scenarios/limits.toml --url "$GW2_URL" \
        --duration "$DURATION" --name lim-accuracy-redis --json "$RES/lim-accuracy-redis.json"
    echo "bench: 6. the Redis limiter with wrk: gateway 2, unlimited key against limited key, 1 and 32 connections"
    local WLKEY
    WLKEY="$("$BIN/maas-gateway" keys create --tenant bench-limits --name "wrk-$(date +%s)")"
    wrk_run wrk-c1-redis-base "$GW2_URL" 1 "$WKEY"
    wrk_run wrk-c1-redis "$GW2_URL" 1 "$WLKEY"
    wrk_run wrk-c32-redis-base "$GW2_URL" 32 "$WKEY"
    wrk_run wrk-c32-redis "$GW2_URL" 32 "$WLKEY"
    redis_evalsha redis-evalsha-c1 1
    redis_evalsha redis-evalsha-c32 32
    kill -TERM "$gw2_pid"; wait "$gw2_pid" 2>/dev/null || true
    printf '{"rate": %s, "burst": %s, "redis_timeout_ms": %s, "redis_failures": %s}\n' "$LIM_RATE" "$LIM_BURST" \
        "$LIM_REDIS_TIMEOUT_MS" "$(grep -c 'rate limiter: Redis failed' "$OUT/logs/gateway-redis.log" || true)" > "$RES/lim-config.json"
    pids=("$gw_pid" "$bare_pid")

    echo "bench: 2. peak throughput with p99 < 10 ms (closed loop)"
    local c peak_d
    peak_d="$(half "$DURATION")"
    for c in 4 8 16 32; do
        "${LT[@]}" --url "$NGX_URL" --mode closed --concurrency "$c" --duration "$peak_d" \
            --name "peak-nginx-c$c" --json "$RES/peak-nginx-c$c.json"
        "${LT[@]}" --url "$GW_URL" --key "$KEY" --mode closed --concurrency "$c" \
            --duration "$peak_d" --name "gw-peak-gateway-c$c" --json "$RES/gw-peak-gateway-c$c.json"
        "${LT[@]}" --url "$BARE_URL" --mode closed --concurrency "$c" --duration "$peak_d" \
            --name "peak-bare-c$c" --json "$RES/peak-bare-c$c.json"
    done
    echo "bench: 2. the same paths with wrk, 32 connections (${WRK_DURATION} s each)"
    wrk_run wrk-c32-direct "$DIRECT_URL" 32
    wrk_run wrk-c32-nginx "$NGX_URL" 32
    wrk_run wrk-c32-bare "$BARE_URL" 32
    wrk_run wrk-c32-gateway "$GW_URL" 32 "$WKEY"
    # SIGKILL: it holds no state, and pingora's SIGTERM would wait out a graceful shutdown.
    kill -KILL "$bare_pid" 2>/dev/null; wait "$bare_pid" 2>/dev/null || true

    echo "bench: 3. metering accuracy"
    # Usage reaches PostgreSQL through the spool a moment after the answers: wait until the
    # count stops growing (at most 30 s), then stop the gateway with SIGTERM and count again.
    local q="SELECT count(*) FROM usage_events u JOIN tenants t ON t.id = u.tenant_id \
        WHERE t.name = 'bench' AND u.http_status BETWEEN 200 AND 299"
    local last=-1 now i
    for i in $(seq 60); do
        now="$(psql "$DATABASE_URL" -Atc "$q")"
        [ "$now" = "$last" ] && break
        last="$now"; sleep 0.5
    done
    kill -TERM "$gw_pid"; wait "$gw_pid" 2>/dev/null || true; pids=()
    psql "$DATABASE_URL" -Atc "$q" > "$RES/metering-rows.txt"
}

LIM_RATE=200
LIM_BURST=20
# The Redis limiter's timeout here: the load generator, two gateways, Redis and PostgreSQL share
# two cores, where the production default (20 ms) sends some decisions to the fail-open
# fallback, which by design does not keep the shared bound. The report counts those decisions.
LIM_REDIS_TIMEOUT_MS=200

section_gateway() {
    [ -z "${GATEWAY_BUILD_FAILED:-}" ] || fail "$GATEWAY_BUILD_FAILED"
    command -v nginx >/dev/null || fail "nginx is not installed and could not be installed"
    command -v wrk >/dev/null || fail "wrk is not installed and could not be installed"
    # A fresh PostgreSQL and Redis for this section only; the section itself runs in a second
    # invocation of this script under scripts/with-services.sh.
    scripts/with-services.sh env MAAS_BENCH_SECTION_INNER=gateway "$0"
}

# ================================================================================================
# Section backend: dynamic batching against raw forward and against no batching.
# ================================================================================================
BE_DIMS=1024,4096,4096,1024
BE_MAX_BATCH=64
BE_DELAY_US=500
BE_CONCURRENCY=64

# Prints maas-backend's /metrics counters for MODEL as one JSON object (the report takes deltas);
# a pipeline stage's series is keyed "name/stage".
scrape_maas() { # url model out.json
    curl -sf "$1" | python3 -c '
import json, re, sys
model, out = sys.argv[1], sys.argv[2]
vals = {}
for line in sys.stdin:
    m = re.match(r"^(maas_\w+)\{model=\"([^\"]*)\",version=\"(\d+)\"(?:,stage=\"(\d+)\")?\} (\S+)$", line.strip())
    if m and m.group(2) == model:
        key = m.group(1) + ("/" + m.group(4) if m.group(4) else "")
        vals[key] = vals.get(key, 0) + float(m.group(5))
json.dump(vals, open(out, "w"))
' "$2" "$3"
}

start_backend() { # repo port log
    "$BIN/maas-backend" serve --repo "$1" --listen "127.0.0.1:$2" --intra-op-threads "$THREADS" \
        --shutdown-timeout-s 5 >"$3" 2>&1 &
    pids+=("$!")
    wait_http "http://127.0.0.1:$2/v2/health/ready" 1200 "$!" \
        || fail "maas-backend did not become ready (see $3: $(tail -n 3 "$3" | tr '\n' ' '))"
}

section_backend() {
    local dir="$OUT/backend" repo port base lt_be common batched unbatched
    repo="$dir/repo"
    mkdir -p "$repo"
    common=$(printf '[instances]\ncount = 1\ndevice = "cpu"\nintra_op_threads = %s\n' "$THREADS")
    # As config/model-dense-batched.toml: gathers up to 64 rows, waits at most 500 us.
    batched=$(printf 'max_batch_size = %s\n[dynamic_batching]\nmax_queue_delay_us = %s\npreferred_batch_sizes = [32, 64]\nmax_queue_size = 1024\n%s' \
        "$BE_MAX_BATCH" "$BE_DELAY_US" "$common")
    # Same model, no [dynamic_batching]: every request is its own forward pass.
    unbatched=$(printf 'max_batch_size = %s\n%s' "$BE_MAX_BATCH" "$common")
    "$BIN/maas-bench" init-dense --repo "$repo" --model dense-batched --dims "$BE_DIMS" --seed 42 --config "$batched"
    "$BIN/maas-bench" init-dense --repo "$repo" --model dense-unbatched --dims "$BE_DIMS" --seed 42 --config "$unbatched"
    port="$(free_port)"
    start_backend "$repo" "$port" "$OUT/logs/backend.log"
    base="http://127.0.0.1:$port"
    lt_be=("$BIN/maas-loadtest" --no-progress --body random --encoding binary --batch 1 --mode closed)
    cat > "$RES/be-config.json" <<JSON
{"dims": [${BE_DIMS}], "max_batch_size": $BE_MAX_BATCH, "max_queue_delay_us": $BE_DELAY_US,
 "preferred_batch_sizes": [32, 64], "concurrency": $BE_CONCURRENCY, "threads": $THREADS,
 "duration_s": $BE_DURATION}
JSON

    echo "bench: 4. backend batching: warm-up"
    "${lt_be[@]}" --url "$base/v2/models/dense-batched/infer" --concurrency "$BE_CONCURRENCY" \
        --duration 2 --name be-warmup --json "$OUT/be-warmup.json" 2>/dev/null
    "${lt_be[@]}" --url "$base/v2/models/dense-unbatched/infer" --concurrency 4 \
        --duration 1 --name be-warmup --json "$OUT/be-warmup.json" 2>/dev/null

    # One measured run of MODEL at concurrency C for S seconds into be-MODEL-cC[.PART].json, with
    # the backend's counters before and after (the report's average batch size).
    be_run() { # model concurrency seconds [part]
        local name="be-$1-c$2${4:+.$4}"
        echo "bench: 4. $1 at concurrency $2 ($3 s, binary bodies)"
        scrape_maas "$base/metrics" "$1" "$RES/$name.before.json"
        "${lt_be[@]}" --url "$base/v2/models/$1/infer" --concurrency "$2" --duration "$3" \
            --name "$name" --json "$RES/$name.json" --plot "$OUT/$name.svg"
        scrape_maas "$base/metrics" "$1" "$RES/$name.after.json"
    }
    # Raw in-process forward passes of the batch size, in this same process tree (the server
    # idle meanwhile); taken before and after the batched HTTP run, the report keeps the faster.
    raw_forward() { # part
        echo "bench: 4. raw in-process forward, batch $BE_MAX_BATCH, $THREADS threads"
        "$BIN/maas-bench" forward --repo "$repo" --model dense-batched --batch "$BE_MAX_BATCH" \
            --threads "$THREADS" --seconds "$short" | tail -n 1 > "$RES/be-forward-b$BE_MAX_BATCH.$1.json"
        cat "$RES/be-forward-b$BE_MAX_BATCH.$1.json"
    }
    local short
    short="$(half "$BE_DURATION")"
    # (a) and (b): raw, batched, raw, then unbatched.
    raw_forward 1
    be_run dense-batched "$BE_CONCURRENCY" "$BE_DURATION"
    raw_forward 2
    # Context for (a): the raw forward pass at the batch size the batcher actually formed.
    local observed
    observed="$(python3 -c '
import json, sys
b, a = (json.load(open(p)) for p in sys.argv[1:3])
rows = a["maas_inference_count_total"] - b["maas_inference_count_total"]
execs = a["maas_inference_exec_count_total"] - b["maas_inference_exec_count_total"]
print(max(1, round(rows / execs)) if execs else 1)' \
        "$RES/be-dense-batched-c$BE_CONCURRENCY.before.json" "$RES/be-dense-batched-c$BE_CONCURRENCY.after.json")"
    echo "bench: 4. raw in-process forward at the observed average batch, $observed rows"
    "$BIN/maas-bench" forward --repo "$repo" --model dense-batched --batch "$observed" \
        --threads "$THREADS" --seconds "$short" | tail -n 1 > "$RES/be-forward-observed.json"
    be_run dense-unbatched "$BE_CONCURRENCY" "$BE_DURATION"
    # (c): a difference of two p50s of a few ms on a shared machine, so in the order
    # unbatched, batched, batched, unbatched (drift over the four cancels in the means).
    be_run dense-unbatched 1 "$short" 1
    be_run dense-batched 1 "$short" 1
    be_run dense-batched 1 "$short" 2
    be_run dense-unbatched 1 "$short" 2
}

# ================================================================================================
# Section torchserve: maas-backend against TorchServe 0.12, same TorchScript file.
# ================================================================================================
TS_MAX_BATCH=64
TS_DELAY_MS=1           # TorchServe's max_batch_delay is whole milliseconds ...
TS_CONCURRENCY=64

ensure_torchserve() {
    if ! command -v java >/dev/null; then
        echo "bench: installing Java 17 (TorchServe's frontend)"
        if [ "$(id -u)" = 0 ]; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless >/dev/null
        else
            sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless >/dev/null
        fi || fail "Java 17 is missing and could not be installed"
    fi
    local marker="$TS_VENV/.torchserve-0.12"
    if [ -f "$marker" ] && "$TS_VENV/bin/python" -c 'import torch, ts, model_archiver' 2>/dev/null; then
        return 0
    fi
    echo "bench: creating $TS_VENV with TorchServe $TS_VERSION (reuses .venv's torch)"
    rm -rf "$TS_VENV"
    python3 -m venv "$TS_VENV" || fail "cannot create $TS_VENV"
    # torch==2.11.0 is already in .venv (scripts/setup.sh): a .pth line puts .venv's
    # site-packages behind this venv's own, instead of a second 4.7 GB copy.
    local site own
    site="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    own="$("$TS_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    realpath "$site" > "$own/maas_dotvenv.pth"
    "$TS_VENV/bin/python" -c 'import torch; assert torch.__version__.startswith("2.11.0")' \
        || fail "the bench venv cannot import .venv's torch 2.11.0 (run make setup)"
    "$TS_VENV/bin/pip" install -q --disable-pip-version-check "torchserve==$TS_VERSION" \
        "torch-model-archiver==$TS_VERSION" pyyaml numpy psutil requests packaging \
        || fail "pip could not install torchserve==$TS_VERSION into $TS_VENV"
    touch "$marker"
}

# Appends the TorchServe worker's batch sizes in model_metrics.log lines FROM.. (one
# PredictionTime line per batch, listing its request ids) as JSON.
ts_batches() { # metrics.log from_line out.json
    python3 - "$1" "$2" "$3" <<'PY'
import json, re, sys
path, start, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sizes = []
with open(path) as f:
    for i, line in enumerate(f):
        if i < start or "PredictionTime" not in line:
            continue
        m = re.search(r"requestID:([^|]*?),timestamp:", line)
        if m:
            sizes.append(len([x for x in m.group(1).split(",") if x]))
json.dump({"batches": len(sizes), "rows": sum(sizes)}, open(out, "w"))
PY
}

section_torchserve() {
    local dir="$OUT/ts" abs p_inf p_mgmt p_met mport maas ts ts_pgid
    mkdir -p "$dir/store" "$dir/logs" "$dir/tmp" "$dir/maas-repo/dense-ts/1"
    abs="$PWD/$dir"
    ensure_torchserve
    local TSBIN="$PWD/$TS_VENV/bin"
    "$TSBIN/python" -c 'import ts, model_archiver' || fail "TorchServe does not import from $TS_VENV"
    java -version 2>&1 | head -n 1 > "$RES/ts-java.txt"
    "$TSBIN/python" -c 'import ts.version as v; print(v.__version__)' > "$RES/ts-version.txt" 2>/dev/null \
        || cat "$TS_VENV"/lib/python3*/site-packages/ts/version.txt > "$RES/ts-version.txt"

    echo "bench: 5. the TorchScript model and its request body"
    .venv/bin/python bench/torchserve/make_torchscript.py "$dir/model.pt" "$dir/body.json" \
        --dims "$BE_DIMS" --seed 42 --batch 1
    ln -f "$dir/model.pt" "$dir/maas-repo/dense-ts/1/model.pt" 2>/dev/null || cp "$dir/model.pt" "$dir/maas-repo/dense-ts/1/model.pt"
    # Batching configured alike: up to 64 rows per forward pass, the first request waits at most
    # TorchServe's max_batch_delay (1 ms); no preferred sizes (TorchServe has none).
    cat > "$dir/maas-repo/dense-ts/config.toml" <<TOML
platform = "torchscript"
max_batch_size = $TS_MAX_BATCH

[dynamic_batching]
max_queue_delay_us = $((TS_DELAY_MS * 1000))
max_queue_size = 1024

[instances]
count = 1
device = "cpu"
intra_op_threads = $THREADS

[[inputs]]
name = "input"
datatype = "FP32"
dims = [${BE_DIMS%%,*}]

[[outputs]]
name = "output"
datatype = "FP32"
dims = [${BE_DIMS##*,}]
TOML
    cat > "$RES/ts-config.json" <<JSON
{"max_batch_size": $TS_MAX_BATCH, "max_batch_delay_ms": $TS_DELAY_MS, "concurrency": $TS_CONCURRENCY,
 "threads": $THREADS, "duration_s": $BE_DURATION, "dims": [${BE_DIMS}]}
JSON

    "$TSBIN/torch-model-archiver" --model-name dense --version 1 --serialized-file "$dir/model.pt" \
        --handler bench/torchserve/ts_handler.py --export-path "$dir/store" --archive-format no-archive --force \
        || fail "torch-model-archiver failed"
    p_inf="$(free_port)"; p_mgmt="$(free_port)"; p_met="$(free_port)"
    cat > "$dir/config.properties" <<PROPS
inference_address=http://127.0.0.1:$p_inf
management_address=http://127.0.0.1:$p_mgmt
metrics_address=http://127.0.0.1:$p_met
service_envelope=kservev2
disable_token_authorization=true
enable_model_api=true
default_workers_per_model=1
job_queue_size=1024
default_response_timeout=120
install_py_dep_per_model=false
vmargs=-Xmx1g
PROPS
    echo "bench: 5. starting TorchServe"
    # Its own session (setsid), so stopping the group stops the launcher, Java and the Python
    # worker; TMPDIR keeps its pid file private.
    (cd "$dir" && exec env TMPDIR="$abs/tmp" LOG_LOCATION="$abs/logs" METRICS_LOCATION="$abs/logs" \
        MAAS_BENCH_TS_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS" \
        setsid "$TSBIN/torchserve" --start --foreground --ncs \
        --ts-config "$abs/config.properties" --model-store "$abs/store" --disable-token-auth \
        >"$abs/logs/torchserve.out" 2>&1) &
    ts_pgid=$!
    pids+=("-$ts_pgid")
    wait_http "http://127.0.0.1:$p_inf/ping" 1200 "$ts_pgid" \
        || fail "TorchServe did not answer /ping (see $dir/logs/torchserve.out: $(grep -m1 -i -E 'error|exception' "$dir/logs/torchserve.out" || true))"
    curl -sf -X POST "http://127.0.0.1:$p_mgmt/models?url=dense&model_name=dense&batch_size=$TS_MAX_BATCH&max_batch_delay=$TS_DELAY_MS&initial_workers=1&synchronous=true&response_timeout=120" \
        > "$dir/register.json" || fail "TorchServe could not register the model (see $dir/logs/model_log.log)"
    cat "$dir/register.json"

    mport="$(free_port)"
    start_backend "$dir/maas-repo" "$mport" "$OUT/logs/backend-ts.log"
    maas="http://127.0.0.1:$mport/v2/models/dense-ts/infer"
    ts="http://127.0.0.1:$p_inf/v2/models/dense/infer"
    # One request each, checked: both answer 200 with the same numbers.
    curl -sf -H 'content-type: application/json' --data-binary @"$dir/body.json" "$maas" > "$dir/answer-maas.json" \
        || fail "maas-backend did not answer the TorchScript request"
    curl -sf -H 'content-type: application/json' --data-binary @"$dir/body.json" "$ts" > "$dir/answer-ts.json" \
        || fail "TorchServe did not answer the request (see $dir/logs/model_log.log)"
    python3 - "$dir/answer-maas.json" "$dir/answer-ts.json" "$RES/ts-agreement.json" <<'PY' || fail "the two servers disagree on the model's output"
import json, sys
a = json.load(open(sys.argv[1]))["outputs"][0]["data"]
b = json.load(open(sys.argv[2]))["outputs"][0]["data"]
assert len(a) == len(b), (len(a), len(b))
diff = max(abs(x - y) for x, y in zip(a, b))
json.dump({"elements": len(a), "max_abs_diff": diff}, open(sys.argv[3], "w"))
assert diff < 1e-3, diff
PY

    local lt=("$BIN/maas-loadtest" --no-progress --body file --body-file "$dir/body.json" --mode closed)
    echo "bench: 5. warm-up"
    "${lt[@]}" --url "$maas" --concurrency "$TS_CONCURRENCY" --duration 2 --name warm --json "$OUT/ts-warm.json" 2>/dev/null
    "${lt[@]}" --url "$ts" --concurrency "$TS_CONCURRENCY" --duration 2 --name warm --json "$OUT/ts-warm.json" 2>/dev/null
    ts_run_maas() { # concurrency seconds [part]
        local name="ts-maas-c$1${3:+.$3}"
        echo "bench: 5. maas-backend at concurrency $1 ($2 s, JSON bodies)"
        scrape_maas "http://127.0.0.1:$mport/metrics" dense-ts "$RES/$name.before.json"
        "${lt[@]}" --url "$maas" --concurrency "$1" --duration "$2" --name "$name" \
            --json "$RES/$name.json" --plot "$OUT/$name.svg"
        scrape_maas "http://127.0.0.1:$mport/metrics" dense-ts "$RES/$name.after.json"
    }
    ts_run_torchserve() { # concurrency seconds [part]
        local name="ts-torchserve-c$1${3:+.$3}" from
        echo "bench: 5. TorchServe at concurrency $1 ($2 s, JSON bodies)"
        from="$(wc -l < "$dir/logs/model_metrics.log" 2>/dev/null || echo 0)"
        "${lt[@]}" --url "$ts" --concurrency "$1" --duration "$2" --name "$name" \
            --json "$RES/$name.json" --plot "$OUT/$name.svg"
        sleep 0.5
        if [ -f "$dir/logs/model_metrics.log" ]; then
            ts_batches "$dir/logs/model_metrics.log" "$from" "$RES/$name.batches.json"
        fi
    }
    # In the order maas, TorchServe, TorchServe, maas, half the time each, so that drift in the
    # machine's load cancels between the two servers.
    local half_d
    half_d="$(half "$BE_DURATION")"
    ts_run_maas "$TS_CONCURRENCY" "$half_d" 1
    ts_run_torchserve "$TS_CONCURRENCY" "$half_d" 1
    ts_run_torchserve "$TS_CONCURRENCY" "$half_d" 2
    ts_run_maas "$TS_CONCURRENCY" "$half_d" 2
    ts_run_maas 1 "$half_d"
    ts_run_torchserve 1 "$half_d"
}

# ================================================================================================
# Section auth: authentication on a cache hit (criterion).
# ================================================================================================
section_auth_inner() {
    cargo bench -q -p maas-gateway --bench auth -- --noplot 2>&1 | grep -E '^auth/|time:' || true
    python3 - "$RES/auth.json" <<'PY'
import glob, json, os, sys
out = {}
for path in glob.glob("target/criterion/auth/*/new/estimates.json"):
    name = path.split(os.sep)[-3]
    e = json.load(open(path))
    out[name] = {k: {"ns": e[k]["point_estimate"], "lo": e[k]["confidence_interval"]["lower_bound"],
                     "hi": e[k]["confidence_interval"]["upper_bound"]} for k in ("median", "mean")}
if not out:
    sys.exit("no criterion results under target/criterion/auth")
json.dump(out, open(sys.argv[1], "w"), indent=1)
PY
}

section_auth() {
    rm -rf target/criterion/auth
    scripts/with-services.sh env MAAS_BENCH_SECTION_INNER=auth "$0"
}

# ================================================================================================
if [ "${MAAS_BENCH_SECTION_INNER:-}" = auth ]; then
    set -E
    SECTION=auth
    trap 'echo "command failed (status $?) at bench/run.sh line $LINENO: $BASH_COMMAND" > "$RES/$SECTION.error"' ERR
    section_auth_inner
    exit 0
fi

# ================================================================================================
# Section ingest: sustained metering ingest into PostgreSQL.
# ================================================================================================
INGEST_EVENTS="${MAAS_BENCH_INGEST_EVENTS:-200000}"

# Runs under scripts/with-services.sh: the ignored test `ingest_benchmark` (gateway/tests/
# metering.rs), release build, on a fresh database of that server; it writes results/ingest.json.
section_ingest_inner() {
    echo "bench: 8. metering ingest: $INGEST_EVENTS events, spool -> PostgreSQL"
    MAAS_INGEST_EVENTS="$INGEST_EVENTS" MAAS_INGEST_JSON="$PWD/$RES/ingest.json" RUST_LOG=warn \
        cargo test --release -p maas-gateway --test metering -- --ignored --exact ingest_benchmark \
        --nocapture
    [ -s "$RES/ingest.json" ] || fail "ingest_benchmark wrote no result (see $OUT/logs/section-ingest.log)"
    cat "$RES/ingest.json"; echo
}

section_ingest() {
    [ -z "${INGEST_BUILD_FAILED:-}" ] || fail "$INGEST_BUILD_FAILED"
    # A fresh PostgreSQL for this section only, as for the gateway section.
    scripts/with-services.sh env MAAS_BENCH_SECTION_INNER=ingest "$0"
}

# ================================================================================================
# Section split: a dense model split into pipeline stages in two processes.
# ================================================================================================
SPLIT_DIMS=4096,4096,4096,4096,4096,4096,4096,4096,4096   # 8 layers of 4096 x 4096
SPLIT_MICRO=4           # micro-batches per forward batch
SPLIT_BATCH=32          # rows per request
SPLIT_CONCURRENCY=4     # requests in flight: forward batches of up to 128 rows, micro-batches of 32

section_split() {
    local dir="$OUT/split" repo port sport base duration batching
    repo="$dir/repo"
    duration="${MAAS_BENCH_SPLIT_DURATION:-8}"
    mkdir -p "$repo"
    batching=$(printf 'max_batch_size = %s\n[dynamic_batching]\nmax_queue_delay_us = 2000\n' \
        "$((SPLIT_BATCH * SPLIT_CONCURRENCY))")
    echo "bench: 9. split: writing the 8 x 4096 x 4096 model"
    "$BIN/maas-bench" init-dense --repo "$repo" --model dense8 --dims "$SPLIT_DIMS" --seed 42 \
        --config "$(printf '%s\n[instances]\nintra_op_threads = %s\n' "$batching" "$THREADS")"
    # The same weights (a link to version 1) as: the whole model on 1 thread, and 2 stages.
    sport="$(free_port)"
    for m in dense8-t1 dense8-split; do
        mkdir -p "$repo/$m"; ln -s ../dense8/1 "$repo/$m/1"
    done
    python3 - "$repo" "$sport" "$SPLIT_MICRO" <<'PY'
import re, sys
repo, port, micro = sys.argv[1:4]
text = re.sub(r"intra_op_threads = \d+", "intra_op_threads = 1", open(f"{repo}/dense8/config.toml").read())
open(f"{repo}/dense8-t1/config.toml", "w").write(text)
text += (f'\n[pipeline]\nmicro_batches = {micro}\n[[pipeline.stages]]\nlayers = [0, 4]\ndevice = "cpu"\n'
         f'[[pipeline.stages]]\nlayers = [4, 8]\naddress = "127.0.0.1:{port}"\n')
open(f"{repo}/dense8-split/config.toml", "w").write(text)
PY
    "$BIN/maas-backend" serve-stage --repo "$repo" --model dense8-split --layers 4..8 \
        --listen "127.0.0.1:$sport" --intra-op-threads 1 --shutdown-timeout-s 5 >"$OUT/logs/split-stage.log" 2>&1 &
    pids+=("$!")
    wait_http "http://127.0.0.1:$sport/v2/health/ready" 1200 "$!" \
        || fail "serve-stage did not become ready (see $OUT/logs/split-stage.log: $(tail -n 3 "$OUT/logs/split-stage.log" | tr '\n' ' '))"
    port="$(free_port)"
    start_backend "$repo" "$port" "$OUT/logs/split-front.log"
    base="http://127.0.0.1:$port"
    cat > "$RES/split-config.json" <<JSON
{"dims": [${SPLIT_DIMS}], "micro_batches": $SPLIT_MICRO, "stages": 2, "rows_per_request": $SPLIT_BATCH,
 "concurrency": $SPLIT_CONCURRENCY, "max_batch_size": $((SPLIT_BATCH * SPLIT_CONCURRENCY)),
 "threads": $THREADS, "duration_s": $duration}
JSON
    split_run() { # model
        echo "bench: 9. split: $1, concurrency $SPLIT_CONCURRENCY x $SPLIT_BATCH rows ($duration s)"
        scrape_maas "$base/metrics" "$1" "$RES/split-$1.before.json"
        "$BIN/maas-loadtest" --no-progress --body random --encoding binary --mode closed \
            --batch "$SPLIT_BATCH" --concurrency "$SPLIT_CONCURRENCY" --warmup 2 --duration "$duration" \
            --url "$base/v2/models/$1/infer" --name "split-$1" --json "$RES/split-$1.json"
        scrape_maas "$base/metrics" "$1" "$RES/split-$1.after.json"
    }
    split_run dense8
    split_run dense8-split
    split_run dense8-t1
}

# ================================================================================================
# Section pools (run inside scripts/with-services.sh: the gateways need PostgreSQL for keys).
# ================================================================================================
POOLS_SLOW_MS=20
POOLS_CONCURRENCY=16

# A gateway serving the TOML fragment $2 on port $1 (admin API on $3), log $4; appends its pid.
start_pool_gateway() { # port pools_toml admin_port name
    local port="$1" pools="$2" admin="$3" name="$4"
    printf 'listen = "127.0.0.1:%s"\ngrace_period_s = 0\n[admin]\nlisten = "127.0.0.1:%s"\n[metering]\nspool_dir = "%s"\n%s\n' \
        "$port" "$admin" "$PWD/$OUT/spool-$name" "$pools" > "$OUT/pools/$name.toml"
    MAAS_GATEWAY_ADMIN__OPERATOR_TOKEN=bench-operator MAAS_GATEWAY_METRICS__LISTEN=127.0.0.1:0 RUST_LOG=warn \
        "$BIN/maas-gateway" serve --config "$OUT/pools/$name.toml" >"$OUT/logs/gateway-$name.log" 2>&1 &
    pids+=("$!")
    wait_http "http://127.0.0.1:$port/v2/health/live" 100 "$!" || fail "maas-gateway ($name) did not start (see $OUT/logs/gateway-$name.log)"
}

section_pools_inner() {
    mkdir -p "$OUT/pools"
    local FAST_PORT SLOW_PORT ANSWER INDEX KEY
    FAST_PORT="$(free_port)"; SLOW_PORT="$(free_port)"
    ANSWER='{"model_name":"digits","model_version":"1","outputs":[{"name":"probabilities","datatype":"FP32","shape":[1,10],"data":[0.01,0.01,0.01,0.01,0.01,0.01,0.01,0.91,0.01,0.01]}]}'
    INDEX='[{"name":"digits","version":"1","state":"READY","reason":""}]'
    # The fast backend: nginx with the fixed answer of figure 2, and a repository index.
    cat > "$OUT/pools/nginx.conf" <<NGX
worker_processes 1;
daemon on;
pid $PWD/$OUT/pools/nginx.pid;
error_log $PWD/$OUT/pools/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $PWD/$OUT/pools/body;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$FAST_PORT;
        default_type application/json;
        location = /v2/repository/index { return 200 '$INDEX'; }
        location / {
            add_header x-maas-inference-count 1 always;
            add_header x-maas-compute-us 10 always;
            return 200 '$ANSWER';
        }
    }
}
NGX
    nginx -c "$PWD/$OUT/pools/nginx.conf" || fail "nginx did not start (see $OUT/pools/error.log)"
    stop_pools_nginx() { [ -f "$OUT/pools/nginx.pid" ] && kill -QUIT "$(cat "$OUT/pools/nginx.pid")" 2>/dev/null || true; }
    trap 'stop_servers; stop_pools_nginx' EXIT
    # The slow backend: the same answers after POOLS_SLOW_MS ms (a thread per connection).
    cat > "$OUT/pools/slow.py" <<'PY'
import http.server, sys, time
port, delay_ms, answer, index = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3].encode(), sys.argv[4].encode()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def answer(self, body, delay):
        n = int(self.headers.get("content-length") or 0)
        if n: self.rfile.read(n)
        if delay: time.sleep(delay_ms / 1000)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-maas-inference-count", "1")
        self.send_header("x-maas-compute-us", "10")
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self): self.answer(answer, False)
    def do_POST(self):
        if self.path == "/v2/repository/index": self.answer(index, False)
        else: self.answer(answer, True)
http.server.ThreadingHTTPServer.daemon_threads = True
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
PY
    python3 "$OUT/pools/slow.py" "$SLOW_PORT" "$POOLS_SLOW_MS" "$ANSWER" "$INDEX" >"$OUT/logs/pools-slow.log" 2>&1 &
    pids+=("$!")
    wait_http "http://127.0.0.1:$FAST_PORT/v2/health/ready" || fail "nginx did not answer"
    wait_http "http://127.0.0.1:$SLOW_PORT/v2/health/ready" 50 "$!" || fail "the slow backend did not start"

    local P_SHORT P_ONE P_P2C P_RR A_SHORT A_ONE A_P2C A_RR
    P_SHORT="$(free_port)"; P_ONE="$(free_port)"; P_P2C="$(free_port)"; P_RR="$(free_port)"
    A_SHORT="$(free_port)"; A_ONE="$(free_port)"; A_P2C="$(free_port)"; A_RR="$(free_port)"
    # a. Figure 2's setup ([upstream] backends: one pool serving every model, no discovery)
    #    against a [[pools]] pool of the same one backend with discovery and P2C.
    start_pool_gateway "$P_SHORT" "[upstream]
backends = [\"127.0.0.1:$FAST_PORT\"]" "$A_SHORT" shorthand
    start_pool_gateway "$P_ONE" "[[pools]]
name = \"one\"
backends = [\"127.0.0.1:$FAST_PORT\"]" "$A_ONE" one
    # b. One fast and one slow backend, P2C against round-robin.
    start_pool_gateway "$P_P2C" "[[pools]]
name = \"two\"
policy = \"p2c\"
backends = [\"127.0.0.1:$FAST_PORT\", \"127.0.0.1:$SLOW_PORT\"]" "$A_P2C" p2c
    start_pool_gateway "$P_RR" "[[pools]]
name = \"two\"
policy = \"round_robin\"
backends = [\"127.0.0.1:$FAST_PORT\", \"127.0.0.1:$SLOW_PORT\"]" "$A_RR" rr
    KEY="$("$BIN/maas-gateway" keys create --tenant bench-pools --name "bench-$(date +%s)")"
    local LT=("$BIN/maas-loadtest" --no-progress --body digits --digits data/digits.csv.gz)
    local url="/v2/models/digits/infer" c d
    d="$(half "$DURATION")"

    echo "bench: warm-up"
    local port
    for port in "$P_SHORT" "$P_ONE" "$P_P2C" "$P_RR"; do
        "${LT[@]}" --url "http://127.0.0.1:$port$url" --key "$KEY" --mode closed --concurrency 8 \
            --duration 1 --name pools-warmup --json "$OUT/pools/warmup-$port.json" 2>/dev/null
    done
    echo "bench: 10a. one pool of one backend against the [upstream] shorthand (closed loop)"
    for c in 8 16; do
        "${LT[@]}" --url "http://127.0.0.1:$P_SHORT$url" --key "$KEY" --mode closed --concurrency "$c" \
            --duration "$d" --name "pools-shorthand-c$c" --json "$RES/pools-shorthand-c$c.json"
        "${LT[@]}" --url "http://127.0.0.1:$P_ONE$url" --key "$KEY" --mode closed --concurrency "$c" \
            --duration "$d" --name "pools-one-c$c" --json "$RES/pools-one-c$c.json"
    done
    echo "bench: 10b. P2C against round-robin, one backend ${POOLS_SLOW_MS} ms slower (closed loop, concurrency $POOLS_CONCURRENCY)"
    "${LT[@]}" --url "http://127.0.0.1:$P_P2C$url" --key "$KEY" --mode closed --concurrency "$POOLS_CONCURRENCY" \
        --duration "$DURATION" --name pools-p2c --json "$RES/pools-p2c.json"
    curl -sf -H 'authorization: Bearer bench-operator' "http://127.0.0.1:$A_P2C/admin/v1/pools" > "$RES/pools-p2c-state.json"
    "${LT[@]}" --url "http://127.0.0.1:$P_RR$url" --key "$KEY" --mode closed --concurrency "$POOLS_CONCURRENCY" \
        --duration "$DURATION" --name pools-rr --json "$RES/pools-rr.json"
    curl -sf -H 'authorization: Bearer bench-operator' "http://127.0.0.1:$A_RR/admin/v1/pools" > "$RES/pools-rr-state.json"
    printf '{"slow_ms": %s, "concurrency": %s, "slow_port": %s}\n' "$POOLS_SLOW_MS" "$POOLS_CONCURRENCY" "$SLOW_PORT" > "$RES/pools-config.json"
}

section_pools() {
    [ -z "${GATEWAY_BUILD_FAILED:-}" ] || fail "$GATEWAY_BUILD_FAILED"
    command -v nginx >/dev/null || fail "nginx is not installed and could not be installed"
    command -v wrk >/dev/null || fail "wrk is not installed and could not be installed"
    scripts/with-services.sh env MAAS_BENCH_SECTION_INNER=pools "$0"
}

# ================================================================================================
# Section metrics: the gateway's throughput with Prometheus metrics on against the same build
# with `[metrics] enabled = false`, side by side on the same upstream (run inside
# scripts/with-services.sh: needs PostgreSQL).
# ================================================================================================
start_bench_gateway() { # port-variable name extra-env... : sets port-variable to its port
    local var="$1" name="$2" port; shift 2
    port="$(free_port)"
    env MAAS_GATEWAY_LISTEN="127.0.0.1:$port" MAAS_GATEWAY_METRICS__LISTEN=127.0.0.1:0 \
        MAAS_GATEWAY_UPSTREAM__BACKENDS="[\"127.0.0.1:$UP_PORT\"]" \
        MAAS_GATEWAY_GRACE_PERIOD_S=2 MAAS_GATEWAY_GRACEFUL_SHUTDOWN_TIMEOUT_S=5 RUST_LOG=warn \
        MAAS_GATEWAY_METERING__SPOOL_DIR="$PWD/$OUT/spool-$name" "$@" \
        "$BIN/maas-gateway" serve --config config/gateway.toml >"$OUT/logs/gateway-$name.log" 2>&1 &
    pids+=("$!")
    wait_http "http://127.0.0.1:$port/v2/health/live" 300 "$!" || fail "maas-gateway ($name) did not start (see $OUT/logs/gateway-$name.log)"
    printf -v "$var" '%s' "$port"
}

section_metrics_inner() {
    local UP_PORT NGX_PROXY_PORT ON_PORT OFF_PORT KEY round
    start_fixed_upstream
    start_bench_gateway ON_PORT metrics-on
    start_bench_gateway OFF_PORT metrics-off MAAS_GATEWAY_METRICS__ENABLED=false
    KEY="$("$BIN/maas-gateway" keys create --tenant bench-metrics --name "bench-$(date +%s)")"
    local LT=("$BIN/maas-loadtest" --no-progress --body digits --digits data/digits.csv.gz --key "$KEY"
        --mode closed --concurrency "$MET_CONCURRENCY")
    echo "bench: metrics: warm-up"
    for port in "$ON_PORT" "$OFF_PORT"; do
        "${LT[@]}" --url "http://127.0.0.1:$port/v2/models/digits/infer" --duration 2 \
            --name met-warmup --json "$OUT/met-warmup.json" 2>/dev/null
    done
    # Alternating rounds, so that a drift of the machine affects both alike.
    for round in $(seq 1 "$MET_ROUNDS"); do
        echo "bench: metrics: round $round, on then off (closed loop, $MET_CONCURRENCY connections, ${MET_DURATION} s each)"
        "${LT[@]}" --url "http://127.0.0.1:$ON_PORT/v2/models/digits/infer" --duration "$MET_DURATION" \
            --name "met-on.$round" --json "$RES/met-on.$round.json"
        "${LT[@]}" --url "http://127.0.0.1:$OFF_PORT/v2/models/digits/infer" --duration "$MET_DURATION" \
            --name "met-off.$round" --json "$RES/met-off.$round.json"
    done
    echo "{\"concurrency\": $MET_CONCURRENCY, \"rounds\": $MET_ROUNDS, \"duration_s\": $MET_DURATION}" > "$RES/met-config.json"
}

section_metrics() {
    [ -z "${GATEWAY_BUILD_FAILED:-}" ] || fail "$GATEWAY_BUILD_FAILED"
    command -v nginx >/dev/null || fail "nginx is not installed and could not be installed"
    command -v wrk >/dev/null || fail "wrk is not installed and could not be installed"
    scripts/with-services.sh env MAAS_BENCH_SECTION_INNER=metrics "$0"
}

# ================================================================================================
# Section dashboard: the dashboard's queries on 10M usage events (bench/dashboard.sh, in a
# PostgreSQL of its own).
# ================================================================================================
section_dashboard() {
    rm -f "$RES"/dashboard.json
    cargo build --release -p maas-gateway -p maas-billing --bins
    scripts/with-services.sh bench/dashboard.sh "$RES" "$OUT/logs"
    [ -s "$RES/dashboard.json" ] || fail "bench/dashboard.sh wrote no result (see $OUT/logs/section-dashboard.log)"
}

# ================================================================================================
# Section soak: maas-gateway (authentication and metering on, PostgreSQL from
# scripts/with-services.sh) in front of maas-backend serving a small dense model, at a steady
# open-loop load for SOAK_DURATION seconds. The resident set (VmRSS) and open file descriptors
# of both processes are sampled after a warm-up at the same load, every SOAK_SAMPLE_S seconds,
# and at the end: a leak shows as growth from start to end.
# ================================================================================================
SOAK_DURATION="${MAAS_BENCH_SOAK_DURATION:-600}"
SOAK_RATE="${MAAS_BENCH_SOAK_RATE:-200}"
SOAK_WARMUP_S=20
SOAK_SAMPLE_S=10

# One JSON sample of processes gateway and backend: seconds since the load began, VmRSS (kB) and
# open file descriptors of each.
soak_sample() { # t gateway-pid backend-pid
    python3 - "$@" <<'PY'
import json, os, sys
t, pids = float(sys.argv[1]), {"gateway": sys.argv[2], "backend": sys.argv[3]}
out = {"t": t}
for name, pid in pids.items():
    rss = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:"))
    out[name] = {"rss_kb": rss, "fds": len(os.listdir(f"/proc/{pid}/fd"))}
print(json.dumps(out))
PY
}

section_soak_inner() {
    local dir="$OUT/soak" repo BE_PORT GW_PORT KEY be_pid gw_pid sampler started UP_PORT
    repo="$dir/repo"
    mkdir -p "$repo"
    # The digits model's shape (64 -> 128 relu -> 10) with random weights: what matters here is
    # the servers' memory and descriptors, not the answers.
    "$BIN/maas-bench" init-dense --repo "$repo" --model digits --dims 64,128,10 >/dev/null
    BE_PORT="$(free_port)"
    start_backend "$repo" "$BE_PORT" "$OUT/logs/soak-backend.log"
    be_pid="${pids[-1]}"
    # The metrics section's gateway starter, in front of this backend.
    UP_PORT="$BE_PORT"
    start_bench_gateway GW_PORT soak
    gw_pid="${pids[-1]}"
    KEY="$("$BIN/maas-gateway" keys create --tenant bench-soak --name "soak-$(date +%s)")"
    local LT=("$BIN/maas-loadtest" --no-progress --body digits --digits data/digits.csv.gz --key "$KEY"
        --url "http://127.0.0.1:$GW_PORT/v2/models/digits/infer" --mode open --rate "$SOAK_RATE" --concurrency 32)
    echo "bench: 13. soak: warm-up, $SOAK_WARMUP_S s at $SOAK_RATE requests/s"
    "${LT[@]}" --duration "$SOAK_WARMUP_S" --name soak-warmup --json "$OUT/soak-warmup.json"
    echo "bench: 13. soak: $SOAK_DURATION s at $SOAK_RATE requests/s through the gateway"
    : > "$RES/soak-samples.jsonl"
    started="$(date +%s.%N)"
    (
        while sleep "$SOAK_SAMPLE_S"; do
            soak_sample "$(python3 -c "import time; print(round(time.time() - $started, 1))")" \
                "$gw_pid" "$be_pid" >> "$RES/soak-samples.jsonl" || break
        done
    ) &
    sampler=$!
    soak_sample 0 "$gw_pid" "$be_pid" > "$RES/soak-start.json"
    "${LT[@]}" --duration "$SOAK_DURATION" --name soak-load --json "$RES/soak-load.json"
    soak_sample "$(python3 -c "import time; print(round(time.time() - $started, 1))")" \
        "$gw_pid" "$be_pid" > "$RES/soak-end.json"
    kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
    printf '{"duration_s": %s, "rate": %s, "warmup_s": %s, "sample_s": %s}\n' "$SOAK_DURATION" "$SOAK_RATE" \
        "$SOAK_WARMUP_S" "$SOAK_SAMPLE_S" > "$RES/soak-config.json"
}

section_soak() {
    [ -z "${GATEWAY_BUILD_FAILED:-}" ] || fail "$GATEWAY_BUILD_FAILED"
    scripts/with-services.sh env MAAS_BENCH_SECTION_INNER=soak "$0"
}

# ================================================================================================
if [ "${MAAS_BENCH_SECTION_INNER:-}" = soak ]; then
    # Second invocation, under scripts/with-services.sh: the soak section's body only.
    set -E
    SECTION=soak
    trap 'echo "command failed (status $?) at bench/run.sh line $LINENO: $BASH_COMMAND (see $OUT/logs/section-soak.log)" > "$RES/$SECTION.error"' ERR
    trap 'stop_servers' EXIT
    section_soak_inner
    exit 0
fi
if [ "${MAAS_BENCH_SECTION_INNER:-}" = ingest ]; then
    # Second invocation, under scripts/with-services.sh: the ingest section's body only.
    set -E
    SECTION=ingest
    trap 'echo "command failed (status $?) at bench/run.sh line $LINENO: $BASH_COMMAND (see $OUT/logs/section-ingest.log)" > "$RES/$SECTION.error"' ERR
    section_ingest_inner
    exit 0
fi
if [ "${MAAS_BENCH_SECTION_INNER:-}" = pools ]; then
    # Second invocation, under scripts/with-services.sh: the pools section's body only.
    set -E
    SECTION=pools
    trap 'echo "command failed (status $?) at bench/run.sh line $LINENO: $BASH_COMMAND (see $OUT/logs/section-pools.log)" > "$RES/$SECTION.error"' ERR
    section_pools_inner
    exit 0
fi
if [ "${MAAS_BENCH_SECTION_INNER:-}" = metrics ]; then
    # Second invocation, under scripts/with-services.sh: the metrics section's body only.
    set -E
    SECTION=metrics
    trap 'echo "command failed (status $?) at bench/run.sh line $LINENO: $BASH_COMMAND (see $OUT/logs/section-metrics.log)" > "$RES/$SECTION.error"' ERR
    section_metrics_inner
    exit 0
fi
if [ "${MAAS_BENCH_SECTION_INNER:-}" = gateway ]; then
    # Second invocation, under scripts/with-services.sh: the gateway section's body only.
    set -E
    SECTION=gateway
    trap 'echo "command failed (status $?) at bench/run.sh line $LINENO: $BASH_COMMAND (see $OUT/logs/section-gateway.log)" > "$RES/$SECTION.error"' ERR
    section_gateway_inner
    exit 0
fi

scripts/setup.sh
# Results of the sections this run leaves out are kept (MAAS_BENCH_ONLY); everything else is new.
find "$OUT" -mindepth 1 -maxdepth 1 ! -name results -exec rm -rf {} + 2>/dev/null || true
mkdir -p "$RES" "$OUT/logs"
trap 'stop_servers' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Bench peers (Debian packages, installed when missing; tests need neither): nginx (the fixed
# upstream and the peer proxy) and wrk (the load tool's calibration, figures 1, 2 and 6 beside
# maas-loadtest).
peers=()
if want loadtool || want gateway || want pools || want metrics; then command -v nginx >/dev/null || peers+=(nginx); fi
if want loadtool || want gateway; then command -v wrk >/dev/null || peers+=(wrk); fi
if [ ${#peers[@]} -gt 0 ]; then
    echo "bench: installing ${peers[*]}"
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${peers[@]}" >/dev/null;
    else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${peers[@]}" >/dev/null; fi || true
fi

# The backend, the load generator and the bench's own tools (maas-bench: benchmark models,
# in-process timings) are needed by every section but ingest and gateway (which needs only the
# load generator); the gateway and billing by the gateway section, whose build failure must not
# stop the others.
if want backend || want torchserve || want split || want pools || want metrics || want soak; then
    cargo build --release -p maas-backend -p maas-loadtest -p maas-bench
elif want gateway || want loadtool; then
    cargo build --release -p maas-loadtest
fi
export GATEWAY_BUILD_FAILED=""
if want gateway || want pools || want metrics || want soak; then
    # bare_proxy: pingora with no filters, the floor of figure 2 (gateway/examples/bare_proxy.rs).
    if ! cargo build --release -p maas-gateway -p maas-billing --bins --example bare_proxy 2>&1 | tee "$OUT/logs/build-gateway.log"; then
        GATEWAY_BUILD_FAILED="the release build of maas-gateway / maas-billing failed ($(grep -m1 -E '^error' "$OUT/logs/build-gateway.log" || echo 'see the build log'))"
    fi
fi
# The ingest section runs a test binary of maas-gateway (release); built here so that its
# build time stays out of the measurement and its failure out of the other sections.
export INGEST_BUILD_FAILED=""
if want ingest; then
    if ! cargo test --release -p maas-gateway --test metering --no-run 2>&1 | tee "$OUT/logs/build-ingest.log"; then
        INGEST_BUILD_FAILED="the release build of maas-gateway's metering tests failed ($(grep -m1 -E '^error' "$OUT/logs/build-ingest.log" || echo 'see the build log'))"
    fi
fi

# The criterion benchmark, built here for the same reason.
if want auth; then
    cargo bench -q -p maas-gateway --bench auth --no-run
fi

run_section loadtool section_loadtool
run_section gateway section_gateway
run_section backend section_backend
run_section torchserve section_torchserve
run_section auth section_auth
run_section ingest section_ingest
run_section split section_split
run_section pools section_pools
run_section metrics section_metrics
run_section dashboard section_dashboard
run_section soak section_soak

{
    rustc --version
    "$BIN/maas-backend" --version 2>/dev/null || true
    .venv/bin/python -c 'import torch; print("torch", torch.__version__)' 2>/dev/null || true
} > "$RES/versions.txt"
python3 bench/report.py "$RES" BENCHMARKS.md
echo "bench: wrote BENCHMARKS.md"
