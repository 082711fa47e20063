#!/usr/bin/env bash
# The GPU check: one prepared script that proves the CUDA paths on a machine with one NVIDIA GPU
# and PyTorch 2.11 but no Rust toolchain, and writes one JSON file of results that
# bench/report.py turns into the "GPU" section of BENCHMARKS.md.
#
#   scripts/gpu-check.sh build      here: release binaries (stripped) and the test binaries
#                                   that have a GPU half, into $MAAS_GPU_CHECK_BIN (default
#                                   .data/gpu-check/bin), and their total size
#   scripts/gpu-check.sh run        there: every measurement below, results in
#                                   $MAAS_GPU_CHECK_OUT (default .data/bench/results/gpu.json)
#   scripts/gpu-check.sh run --dry-run
#                                   the same on this CPU with small sizes (MAAS_GPU_CHECK_DEVICE
#                                   =cpu), to prove the script end to end; its JSON says
#                                   "dry_run": true and the report does not show it as a GPU run
#
# What `run` measures (targets from the project's GPU issue; sizes are the full ones, the dry
# run divides them):
#   tests        every carried test binary, run whole: passed, and no "SKIPPED ... (GPU half)"
#   ceiling      raw tch bf16 matmul 8192^3 on the device, TFLOP/s
#   dense        8 layers of 8192x8192 in bf16, batch 4096, in process: TFLOP/s and % of the
#                ceiling (target >= 60%)
#   http         that model served by maas-backend on the device with dynamic batching, driven
#                by maas-loadtest at batch 4096 over HTTP (binary tensors): rows/s against the
#                in-process forward_rows at the same batch (target >= 0.6)
#   training     maas-train on digits on the device and on the CPU: test accuracies within 1%
#   pipeline     a dense model split in two stages, one on the device and one on the CPU, against
#                the same weights in one piece on the CPU: equal outputs (within 1e-4)
#
# libtorch comes from the machine's own PyTorch (`python3 -c 'import torch'`) through
# LD_LIBRARY_PATH; the model repository is made there by `maas-bench init-dense`.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MODE="${1:-}"
DRY=0
[ "${2:-}" = "--dry-run" ] && DRY=1
BIN="${MAAS_GPU_CHECK_BIN:-$ROOT/.data/gpu-check/bin}"

# The backend's unit-test binary (cargo's JSON messages name it), built with extra arguments.
lib_test_binary() {
    cargo test "$@" -p maas-backend --lib --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["lib"]:
        print(m["executable"])'
}

case "$MODE" in
build)
    # Release builds of the four binaries and the unit-test binary of the
    # backend (its GPU halves need no services or files). Stripped: debug info is most of a
    # binary's size and the 64 MiB carry limit of the GPU machine is for all of them together.
    cd "$ROOT"
    mkdir -p "$BIN/tests"
    cargo build --release -p maas-backend -p maas-train -p maas-loadtest -p maas-bench --bins
    test_bin=$(lib_test_binary --release)
    cp target/release/maas-backend target/release/maas-train target/release/maas-loadtest \
        target/release/maas-bench "$BIN/"
    cp "$test_bin" "$BIN/tests/maas_backend_lib"
    cp data/digits.csv.gz "$BIN/"
    strip "$BIN"/maas-backend "$BIN"/maas-train "$BIN"/maas-loadtest "$BIN"/maas-bench "$BIN"/tests/*
    du -b "$BIN"/* "$BIN"/tests/* | sort -n
    echo "gpu-check: total $(du -cb "$BIN" | tail -1 | cut -f1) bytes in $BIN (limit 67108864)"
    exit 0
    ;;
run) ;;
*)
    echo "usage: scripts/gpu-check.sh build | run [--dry-run]" >&2
    exit 2
    ;;
esac

STARTED=$(date +%s)
OUTFILE="${MAAS_GPU_CHECK_OUT:-$ROOT/.data/bench/results/gpu.json}"
WORK="$(mktemp -d /tmp/maas-gpu-check.XXXXXX)"
mkdir -p "$(dirname "$OUTFILE")"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

if [ "$DRY" = 1 ]; then
    DEVICE="${MAAS_GPU_CHECK_DEVICE:-cpu}"
    WIDTH=256 LAYERS=8 BATCH=64 N=512 SECONDS_EACH=1 HTTP_S=2 EPOCHS=3
    PY="${MAAS_GPU_CHECK_PYTHON:-$ROOT/.venv/bin/python}"
    # Here the binaries may be the debug build's.
    [ -x "$BIN/maas-backend" ] || BIN="$ROOT/target/debug"
else
    DEVICE="${MAAS_GPU_CHECK_DEVICE:-cuda:0}"
    WIDTH=8192 LAYERS=8 BATCH=4096 N=8192 SECONDS_EACH=5 HTTP_S=15 EPOCHS=30
    PY="${MAAS_GPU_CHECK_PYTHON:-python3}"
fi
TORCH_LIB="$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
TORCH_VERSION="$("$PY" -c 'import torch; print(torch.__version__)')"
GPU_NAME="$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")')"
echo "gpu-check: device $DEVICE, GPU $GPU_NAME, PyTorch $TORCH_VERSION, binaries in $BIN"

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { # url seconds
    local i
    for i in $(seq 1 $(($2 * 10))); do
        curl -sf "$1" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "gpu-check: $1 not ready after $2 s" >&2
    return 1
}

# 1. Test binaries (their GPU halves); in a dry run the debug build's backend unit tests.
TESTS=("$BIN"/tests/*)
if [ "$DRY" = 1 ] && [ ! -d "$BIN/tests" ]; then
    TESTS=("$(cd "$ROOT" && lib_test_binary)")
fi
: > "$WORK/tests.txt"
for t in "${TESTS[@]}"; do
    [ -x "$t" ] || continue
    if "$t" --test-threads 2 > "$WORK/test.log" 2>&1; then status=passed; else status=failed; fi
    skipped=$(grep -c "^SKIPPED .*(GPU half)" "$WORK/test.log" || true)
    summary=$(grep "^test result" "$WORK/test.log" | tail -1 || true)
    echo "$(basename "$t")|$status|$skipped|$summary" >> "$WORK/tests.txt"
    echo "gpu-check: tests $(basename "$t"): $status, $skipped GPU halves skipped; $summary"
done

# 2. The ceiling: raw bf16 matmul.
"$BIN/maas-bench" matmul --device "$DEVICE" --n "$N" --kind bf16 --seconds "$SECONDS_EACH" > "$WORK/ceiling.json"
echo "gpu-check: ceiling $(cat "$WORK/ceiling.json")"

# 3. The dense model in bf16, in process.
dims=$(printf "$WIDTH%.0s," $(seq 0 "$LAYERS")); dims="${dims%,}"
REPO="$WORK/repo"
mkdir -p "$REPO"
serve_cfg=$(printf 'precision = "bf16"\nmax_batch_size = %s\n[dynamic_batching]\nmax_queue_delay_us = 2000\n[instances]\ndevice = "%s"\n' "$BATCH" "$DEVICE")
"$BIN/maas-bench" init-dense --repo "$REPO" --model dense --dims "$dims" --seed 1 --config "$serve_cfg" >/dev/null
"$BIN/maas-bench" forward --repo "$REPO" --model dense --batch "$BATCH" --seconds "$SECONDS_EACH" > "$WORK/dense.json"
echo "gpu-check: dense $(cat "$WORK/dense.json")"

# 4. The same model over HTTP with dynamic batching, requests of BATCH rows; 2 in flight so
# one is encoded while the other computes.
port=$(free_port)
"$BIN/maas-backend" serve --repo "$REPO" --listen "127.0.0.1:$port" --max-body-bytes 268435456 \
    > "$WORK/backend.log" 2>&1 &
PIDS+=($!)
wait_ready "http://127.0.0.1:$port/v2/models/dense/ready" 120
"$BIN/maas-loadtest" --no-progress --body random --encoding binary --batch "$BATCH" --mode closed \
    --url "http://127.0.0.1:$port/v2/models/dense/infer" --concurrency 2 --duration 1 \
    --name warmup --json "$WORK/warmup.json" >/dev/null 2>&1
"$BIN/maas-loadtest" --no-progress --body random --encoding binary --batch "$BATCH" --mode closed \
    --url "http://127.0.0.1:$port/v2/models/dense/infer" --concurrency 2 --duration "$HTTP_S" \
    --name http --json "$WORK/http.json" >/dev/null
curl -sf "http://127.0.0.1:$port/metrics" | grep '^maas_gpu_memory_used_bytes' > "$WORK/gpu-memory.txt" || true
kill "${PIDS[-1]}" 2>/dev/null || true
echo "gpu-check: http $(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["ok_throughput_rps"], "req/s")' "$WORK/http.json")"

# 5. Training on the device against the CPU, same seed.
DIGITS="$BIN/digits.csv.gz"
[ -f "$DIGITS" ] || DIGITS="$ROOT/data/digits.csv.gz"
for d in "$DEVICE" cpu; do
    "$BIN/maas-train" train --data "$DIGITS" --repo "$WORK/train-${d//:/-}" --model digits \
        --epochs "$EPOCHS" --devices "$d" > "$WORK/train-${d//:/-}.txt" 2>"$WORK/train-${d//:/-}.log"
done

# 6. A pipeline with one stage on the device and one on the CPU, against the whole on the CPU.
pipe_cfg=$(printf 'max_batch_size = 64\n[pipeline]\nmicro_batches = 4\n[[pipeline.stages]]\nlayers = [0, 1]\ndevice = "%s"\n[[pipeline.stages]]\nlayers = [1, 2]\ndevice = "cpu"\n' "$DEVICE")
"$BIN/maas-bench" init-dense --repo "$WORK/pipe" --model split --dims 64,256,10 --seed 3 --config "$pipe_cfg" >/dev/null
"$BIN/maas-bench" init-dense --repo "$WORK/pipe" --model whole --dims 64,256,10 --seed 3 --config 'max_batch_size = 64' >/dev/null
port=$(free_port)
"$BIN/maas-backend" serve --repo "$WORK/pipe" --listen "127.0.0.1:$port" > "$WORK/pipe.log" 2>&1 &
PIDS+=($!)
wait_ready "http://127.0.0.1:$port/v2/models/split/ready" 60
"$PY" - "$port" > "$WORK/pipeline.json" <<'PY'
import json, random, sys, urllib.request
port = sys.argv[1]
random.seed(5)
rows = [[random.uniform(-1, 1) for _ in range(64)] for _ in range(32)]
def infer(model):
    body = json.dumps({"inputs": [{"name": "input", "shape": [32, 64], "datatype": "FP32", "data": rows}]}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/{model}/infer", body, {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))["outputs"][0]["data"]
a, b = infer("split"), infer("whole")
print(json.dumps({"rows": 32, "max_abs_difference": max(abs(x - y) for x, y in zip(a, b)), "elements": len(a)}))
PY
kill "${PIDS[-1]}" 2>/dev/null || true

# The one results file.
"$PY" - "$WORK" "$OUTFILE" "$DEVICE" "$DRY" "$GPU_NAME" "$TORCH_VERSION" "$STARTED" <<'PY'
import datetime, json, os, re, socket, sys, time
work, out, device, dry, gpu, torch_version, started = sys.argv[1:8]
load = lambda n: json.load(open(os.path.join(work, n)))
tests = []
for line in open(os.path.join(work, "tests.txt")):
    name, status, skipped, summary = line.rstrip("\n").split("|", 3)
    tests.append({"binary": name, "status": status, "gpu_halves_skipped": int(skipped), "summary": summary})
ceiling, dense, http = load("ceiling.json"), load("dense.json"), load("http.json")
http_rows = http["ok_throughput_rps"] * dense["batch"]
def accuracy(d):
    text = open(os.path.join(work, f"train-{d.replace(':', '-')}.txt")).read()
    return float(re.search(r"test accuracy: ([0-9.]+)", text).group(1))
acc_dev, acc_cpu = accuracy(device), accuracy("cpu")
memory = [l.split() for l in open(os.path.join(work, "gpu-memory.txt")) if l.strip()]
pipeline = load("pipeline.json")
result = {
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "machine": socket.gethostname(), "gpu": gpu, "device": device, "torch": torch_version,
    "dry_run": dry == "1", "seconds": round(time.time() - int(started), 1),
    "tests": tests,
    "ceiling": ceiling,
    "dense": dict(dense, percent_of_ceiling=100 * dense["tflops"] / ceiling["tflops"], target_percent=60),
    "http": {"batch": dense["batch"], "requests_per_s": http["ok_throughput_rps"], "rows_per_s": http_rows,
             "statuses": http["statuses"], "p50_ms": http["latency_us"]["p50"] / 1e3,
             "ratio_to_forward": http_rows / dense["rows_per_s"], "target_ratio": 0.6,
             "gpu_memory_used_bytes": {m[0]: float(m[1]) for m in memory}},
    "training": {"device_accuracy": acc_dev, "cpu_accuracy": acc_cpu,
                 "difference": abs(acc_dev - acc_cpu), "target_difference": 0.01},
    "pipeline": dict(pipeline, stages=[device, "cpu"], target_max_abs_difference=1e-4),
}
json.dump(result, open(out, "w"), indent=1)
print(f"gpu-check: wrote {out} in {result['seconds']} s")
PY
