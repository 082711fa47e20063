#!/usr/bin/env python3
"""Writes BENCHMARKS.md from the JSON results of bench/run.sh (maas-loadtest reports).

Usage: bench_report.py RESULTS_DIR OUTPUT.md

Every figure is a ratio or a difference of two measurements taken in the same run, on the
same machine, so the machine's speed cancels out as far as it can.

Each section of bench/run.sh (loadtool, gateway, backend, torchserve, auth, ingest, split, pools, metrics,
soak) is written on its own: a section
that failed (RESULTS_DIR/<section>.failed), was not run (<section>.skipped) or left incomplete
results gets a "not measured: <why>" line, and the others are written all the same.
"""
import datetime
import glob
import json
import os
import platform
import subprocess
import sys


def load(res, name):
    with open(os.path.join(res, name + ".json")) as f:
        return json.load(f)


def load_opt(res, name):
    try:
        return load(res, name)
    except (OSError, ValueError):
        return None


def read_text(res, name):
    try:
        with open(os.path.join(res, name)) as f:
            return f.read().strip()
    except OSError:
        return None


def cmd(*args):
    try:
        r = subprocess.run(args, capture_output=True, text=True, check=False)
        return r.stdout.strip() or r.stderr.strip()
    except OSError:
        return "not found"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def ok_2xx(report):
    return sum(n for code, n in report["statuses"].items() if 200 <= int(code) < 300)


def failures(report):
    """Answers that were not 2xx plus requests that got no answer."""
    return report["responses"] - ok_2xx(report) + report.get("transport_errors", 0)


def verdict(ok):
    return "meets target" if ok else "**misses target**"


def load_run(res, name):
    """The loadtest report `name`, or, when the run was taken in parts (name.1, name.2, ...),
    the parts combined: counts and elapsed time summed (so throughput = all 2xx / all time) and
    each latency percentile the mean of the parts' (stated in the text)."""
    one = load_opt(res, name)
    if one is not None:
        one["_parts"] = [name]
        return one
    parts = sorted(glob.glob(os.path.join(res, glob.escape(name) + ".[0-9].json")))
    if not parts:
        raise FileNotFoundError(f"no result {name}.json or {name}.N.json")
    reps = [json.load(open(p)) for p in parts]
    out = dict(reps[0])
    out["_parts"] = [os.path.basename(p)[:-5] for p in parts]
    statuses = {}
    for r in reps:
        for code, n in r["statuses"].items():
            statuses[code] = statuses.get(code, 0) + n
    out["statuses"] = statuses
    out["responses"] = sum(r["responses"] for r in reps)
    out["transport_errors"] = sum(r.get("transport_errors", 0) for r in reps)
    out["elapsed_s"] = sum(r["elapsed_s"] for r in reps)
    out["throughput_rps"] = out["responses"] / out["elapsed_s"]
    out["ok_throughput_rps"] = ok_2xx(out) / out["elapsed_s"]
    out["latency_us"] = {k: round(sum(r["latency_us"][k] for r in reps) / len(reps))
                         for k in ("p50", "p90", "p99", "p999", "max", "mean")}
    out["latency_us"]["max"] = max(r["latency_us"]["max"] for r in reps)
    return out


def run_batch(res, run):
    """Average batch over every part of a run loaded with load_run."""
    rows = execs = 0
    for part in run["_parts"]:
        before, after = load_opt(res, part + ".before"), load_opt(res, part + ".after")
        if not before or not after:
            return None
        rows += after.get("maas_inference_count_total", 0) - before.get("maas_inference_count_total", 0)
        execs += after.get("maas_inference_exec_count_total", 0) - before.get("maas_inference_exec_count_total", 0)
    return rows / execs if execs > 0 else None


def fmt_batch(b):
    return "n/a" if b is None else f"{b:.1f}"


# --- wrk (figures 1, 2 and 6 side by side with maas-loadtest) -------------------------------------


def wrk_bad(r):
    """Non-2xx answers plus socket errors of a wrk run."""
    return r["non2xx"] + r["errors"]


def cpu_us_per_request(r, *procs):
    """CPU microseconds the processes `procs` spent per request during wrk run `r` (None when
    one of them was not sampled)."""
    cpu = r.get("cpu_s", {})
    if not r["requests"] or any(p not in cpu for p in procs):
        return None
    return sum(cpu[p] for p in procs) * 1e6 / r["requests"]


def fmt_us(v):
    return "n/a" if v is None else f"{v:.1f}"


def load_redis_benchmark(res, name):
    """The data line of a `redis-benchmark --csv` run: rps and latencies in microseconds."""
    import csv
    with open(os.path.join(res, name + ".csv")) as f:
        rows = list(csv.DictReader(f))
    row = rows[-1]
    return {"rps": float(row["rps"]),
            "p50_us": float(row["p50_latency_ms"]) * 1000,
            "p99_us": float(row["p99_latency_ms"]) * 1000}


def target_line(what, value, target, ok, floor=None):
    """One `- what: value (target: meets / misses)` line; a miss names the measured floor."""
    line = f"- {what}: **{value}** (target {target}: {verdict(ok)})"
    if not ok and floor:
        line += f"; floor: {floor}"
    return line


# --- sections ------------------------------------------------------------------------------------


# --- section loadtool ----------------------------------------------------------------------------


def loadtool_section(res):
    cfg = load(res, "lt-config")
    w1, w32 = load(res, "lt-wrk-c1"), load(res, "lt-wrk-c32")
    lt_open, lt_busy = load(res, "lt-open"), load_opt(res, "lt-open-busy")
    lt_c1, lt_c32 = load(res, "lt-closed-c1"), load(res, "lt-closed-c32")
    rate = cfg["rate"]
    lines = [
        "## 0. The load generator's own floor",
        "",
        f"wrk (`-t1`, Debian's package, a Lua script posting the body) and `maas-loadtest` (one thread)",
        f"side by side against nginx's fixed OIP answer, the same digits body, {cfg['duration_s']} s per run.",
        "maas-loadtest's open loop measures from each request's intended send time (no coordinated",
        "omission); its send lag is how late it handed a request to its connection.",
        "",
        "| run | requests/s | p50 µs | p90 µs | p99 µs | send lag p50 / p99 µs |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def row(name, r, lag=None):
        lat = r["latency_us"]
        lag_text = f"{lag['p50']:,} / {lag['p99']:,}" if lag else "-"
        lines.append(f"| {name} | {r['throughput_rps']:,.0f} | {lat['p50']:,} | {lat['p90']:,} |"
                     f" {lat['p99']:,} | {lag_text} |")

    row("wrk -c1", w1)
    row(f"maas-loadtest open loop, {rate} req/s", lt_open, lt_open.get("send_lag_us"))
    if lt_busy:
        row(f"maas-loadtest open loop, {rate} req/s, --busy-poll", lt_busy, lt_busy.get("send_lag_us"))
    row("maas-loadtest closed, c=1", lt_c1)
    row("wrk -c32", w32)
    row("maas-loadtest closed, c=32", lt_c32)
    p50_ratio = lt_open["latency_us"]["p50"] / max(w1["latency_us"]["p50"], 1)
    best = min([lt_open] + ([lt_busy] if lt_busy else []), key=lambda r: r["latency_us"]["p50"])
    best_ratio = best["latency_us"]["p50"] / max(w1["latency_us"]["p50"], 1)
    tput_ratio = lt_c32["throughput_rps"] / max(w32["throughput_rps"], 1e-9)
    lines += [
        "",
        f"- Open-loop p50 at {rate} req/s: {lt_open['latency_us']['p50']:,} µs = {p50_ratio:.2f}x wrk -c1's"
        f" {w1['latency_us']['p50']:,} µs (target: <= 1.5x): {verdict(p50_ratio <= 1.5)}."
        + (f" With `--busy-poll`: {lt_busy['latency_us']['p50']:,} µs = "
           f"{lt_busy['latency_us']['p50'] / max(w1['latency_us']['p50'], 1):.2f}x." if lt_busy else ""),
        f"- Closed loop at c=32: {lt_c32['throughput_rps']:,.0f} req/s = {tput_ratio:.2f}x wrk -c32's"
        f" {w32['throughput_rps']:,.0f} (target: >= 0.8x): {verdict(tput_ratio >= 0.8)}.",
        f"- Closed loop at c=1 (back to back, as wrk -c1): p50 {lt_c1['latency_us']['p50']:,} µs ="
        f" {lt_c1['latency_us']['p50'] / max(w1['latency_us']['p50'], 1):.2f}x wrk's. The open loop's"
        " p50 exceeds it by the wake-ups an idle client pays and a back-to-back one does not: its send"
        " lag (timerfd expiry to the write) and the wake-up for the answer (what `--busy-poll` removes).",
        "",
    ]
    if best_ratio > 1.5:
        lines += [f"- Floor that stops the p50 target here: the best open-loop p50 is {best_ratio:.2f}x"
                  f" wrk -c1's; of it, send lag p50 {best.get('send_lag_us', {}).get('p50', '?')} µs.", ""]
    return lines


def gateway_section(res):
    lines = []
    # 1. Gateway overhead.
    d = load(res, "overhead-direct")
    g = load(res, "gw-overhead-gateway")
    add50 = g["latency_us"]["p50"] - d["latency_us"]["p50"]
    add99 = g["latency_us"]["p99"] - d["latency_us"]["p99"]
    lines += [
        "## 1. Gateway overhead",
        "",
        f"Open loop at {d['target_rate_rps']:.0f} requests/s for {d['elapsed_s']:.0f} s, latency from the intended",
        "send time; the upstream is nginx returning a fixed OIP answer. Through the gateway: API-key",
        "authentication (cached lookup) and metering to PostgreSQL on; no limit applies to this key",
        "(section 6 measures the rate limiter on the same path).",
        "",
        "| path | 2xx | p50 us | p90 us | p99 us | p99.9 us |",
        "|---|---|---|---|---|---|",
    ]
    bare = load_opt(res, "overhead-bare")
    paths = [("straight to upstream", d), ("through maas-gateway", g)]
    if bare:
        paths.append(("through bare pingora (context)", bare))
    for name, r in paths:
        l = r["latency_us"]
        lines.append(f"| {name} | {ok_2xx(r)} | {l['p50']} | {l['p90']} | {l['p99']} | {l['p999']} |")
    lines += [
        "",
        f"- Added p50: **{add50} us** (target <= 150 us: {verdict(add50 <= 150)})",
        f"- Added p99: **{add99} us** (target <= 1,000 us: {verdict(add99 <= 1000)})",
    ]
    if bare:
        lines.append(
            f"- Context: the hop through pingora with no filters (`gateway/examples/bare_proxy.rs`) adds "
            f"p50 {bare['latency_us']['p50'] - d['latency_us']['p50']} us and p99 "
            f"{bare['latency_us']['p99'] - d['latency_us']['p99']} us; the gateway's own work (authentication, "
            f"metering) is the rest")
    lines.append("")
    lines += wrk_overhead_lines(res, d)

    # 2. Peak throughput against nginx.
    def best(prefix):
        top = None
        rows = []
        for path in sorted(glob.glob(os.path.join(res, prefix + "-c*.json"))):
            r = json.load(open(path))
            passes = r["latency_us"]["p99"] < 10_000 and ok_2xx(r) == r["responses"] and r["responses"] > 0
            rows.append((r["concurrency"], r["ok_throughput_rps"], r["latency_us"]["p99"], passes))
            if passes and (top is None or r["ok_throughput_rps"] > top[1]):
                top = (r["concurrency"], r["ok_throughput_rps"])
        rows.sort()
        return top, rows

    nt, nrows = best("peak-nginx")
    gt, grows = best("gw-peak-gateway")
    bt, brows = best("peak-bare")
    lines += [
        "## 2. Peak throughput against nginx",
        "",
        "Closed loop at several concurrencies; the figure is the highest 2xx throughput whose p99 stays",
        "under 10 ms. Same upstream for all. For context, pingora itself with no filters",
        "(`gateway/examples/bare_proxy.rs`: no authentication, limits or metering; the same 2 threads)",
        "shows the floor the gateway's own work is added to.",
        "",
        "| concurrency | nginx req/s | nginx p99 us | maas-gateway req/s | maas-gateway p99 us | bare pingora req/s | bare pingora p99 us |",
        "|---|---|---|---|---|---|---|",
    ]
    brows = brows or [(c, float("nan"), "-", False) for c, *_ in nrows]
    for (c, nr, np, _), (_, gr, gp, _), (_, br, bp, _) in zip(nrows, grows, brows):
        lines.append(f"| {c} | {nr:.0f} | {np} | {gr:.0f} | {gp} | {br:.0f} | {bp} |")
    if nt and gt:
        ratio = gt[1] / nt[1]
        lines += [
            "",
            f"- nginx: {nt[1]:.0f} req/s (concurrency {nt[0]}); maas-gateway: {gt[1]:.0f} req/s (concurrency {gt[0]})",
            f"- Ratio gateway / nginx: **{ratio:.2f}** (target >= 0.70: {verdict(ratio >= 0.7)})",
        ]
        if bt:
            lines += [
                f"- Context: bare pingora {bt[1]:.0f} req/s (concurrency {bt[0]}), {bt[1] / nt[1]:.2f} of nginx; "
                f"the gateway reaches {gt[1] / bt[1]:.2f} of bare pingora",
            ]
        lines.append("")
    else:
        lines += ["", "- No run kept p99 under 10 ms; no ratio.", ""]

    lines += wrk_peak_lines(res, grows)

    # 3. Metering accuracy.
    seen = sum(ok_2xx(json.load(open(p))) for p in glob.glob(os.path.join(res, "gw-*.json")))
    with open(os.path.join(res, "metering-rows.txt")) as f:
        rows = int(f.read().strip() or 0)
    lines += [
        "## 3. Metering accuracy",
        "",
        "2xx answers the client saw through the gateway over every gateway run above (warm-up included),",
        "against the tenant's 2xx usage rows in PostgreSQL after a graceful stop (SIGTERM).",
        "",
        f"- Client 2xx: {seen}; usage rows: {rows}; rows / answers: **{(rows / seen if seen else 0):.6f}**"
        f" (target exactly 1: {verdict(rows == seen)})",
        "",
    ]
    return lines


def wrk_overhead_lines(res, lt_direct):
    """Figure 1 with wrk: one connection, closed loop, the same four paths; the issue's targets
    for the gateway's own work against bare pingora."""
    names = (("straight to upstream", "wrk-c1-direct"), ("nginx as reverse proxy", "wrk-c1-nginx"),
             ("bare pingora", "wrk-c1-bare"), ("maas-gateway (API key + metering)", "wrk-c1-gateway"))
    runs = {key: load_opt(res, key) for _, key in names}
    if any(r is None for r in runs.values()):
        return ["- wrk at one connection: not measured (no wrk results in this run)", ""]
    first = runs["wrk-c1-direct"]
    lines = [
        f"With wrk (one thread, one connection, closed loop, {first['duration_s']:.0f} s each, `bench/wrk/infer.lua`:",
        "the same digits body): the latency of one request at a time, wrk's own floor being a few",
        "microseconds. wrk's key belongs to a tenant of its own (its last requests in flight are",
        "metered but not counted by wrk, so they stay out of figure 3).",
        "",
        "| path (wrk, 1 connection) | req/s | p50 us | p90 us | p99 us | p99.9 us | non-2xx + errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, key in names:
        r = runs[key]
        lines.append(f"| {label} | {r['rps']:.0f} | {r['p50_us']} | {r['p90_us']} | {r['p99_us']} |"
                     f" {r['p999_us']} | {wrk_bad(r)} |")
    bare, gw, direct = runs["wrk-c1-bare"], runs["wrk-c1-gateway"], runs["wrk-c1-direct"]
    own = None
    gw_cpu, bare_cpu = cpu_us_per_request(gw, "gateway"), cpu_us_per_request(bare, "bare")
    if gw_cpu is not None and bare_cpu is not None:
        own = gw_cpu - bare_cpu
    floor = (f"the gateway's own work costs {fmt_us(own)} us of CPU per request more than bare pingora's "
             f"({fmt_us(gw_cpu)} against {fmt_us(bare_cpu)} us, CPU time over requests in these runs)")
    add50 = gw["p50_us"] - bare["p50_us"]
    ratio99 = gw["p99_us"] / bare["p99_us"] if bare["p99_us"] else float("inf")
    lt_ratio = lt_direct["latency_us"]["p50"] / direct["p50_us"] if direct["p50_us"] else float("inf")
    lines += [
        "",
        target_line("Gateway p50 at one connection minus bare pingora's", f"{add50} us", "<= 25 us",
                    add50 <= 25, floor),
        target_line("Gateway p99 at one connection / bare pingora's", f"{ratio99:.2f}", "<= 2.0",
                    ratio99 <= 2.0, floor),
        f"- The pingora hop itself (bare pingora minus straight to upstream): p50 "
        f"{bare['p50_us'] - direct['p50_us']} us; nginx's: {runs['wrk-c1-nginx']['p50_us'] - direct['p50_us']} us",
        target_line("maas-loadtest's p50 straight to upstream (open loop above) / wrk's at one connection",
                    f"{lt_ratio:.2f}", "<= 1.5", lt_ratio <= 1.5,
                    "the load generator's own floor (`maas-loadtest`, measured against the same upstream)"),
        "",
    ]
    return lines


def wrk_peak_lines(res, lt_gateway_rows):
    """Figure 2 with wrk: 32 connections, closed loop; throughput of each path, CPU per request
    of each proxy, and the issue's targets (gateway against bare pingora, the whole product
    against nginx, and what bare pingora reaches against nginx and why)."""
    names = (("straight to upstream", "wrk-c32-direct"), ("nginx as reverse proxy", "wrk-c32-nginx"),
             ("bare pingora", "wrk-c32-bare"), ("maas-gateway (API key + metering)", "wrk-c32-gateway"),
             ("maas-gateway (API key + Redis limits + metering)", "wrk-c32-redis"))
    runs = {key: load_opt(res, key) for _, key in names}
    if any(r is None for r in runs.values()):
        return ["- wrk at 32 connections: not measured (no wrk results in this run)", ""]
    direct, ngx, bare, gw, full = (runs[k] for _, k in names)
    # CPU per request of the proxy alone: nginx's worker serves the upstream too, so its proxy
    # cost is its CPU in the proxy run less its CPU per request serving the upstream alone.
    up_cpu = cpu_us_per_request(direct, "nginx")
    ngx_all = cpu_us_per_request(ngx, "nginx")
    proxy_cpu = {
        "wrk-c32-direct": None,
        "wrk-c32-nginx": None if ngx_all is None or up_cpu is None else ngx_all - up_cpu,
        "wrk-c32-bare": cpu_us_per_request(bare, "bare"),
        "wrk-c32-gateway": cpu_us_per_request(gw, "gateway"),
        "wrk-c32-redis": cpu_us_per_request(full, "gateway2"),
    }
    lines = [
        f"With wrk (one thread, 32 connections, closed loop, {direct['duration_s']:.0f} s each). CPU per request: the",
        "proxy process's user + system time over its requests (nginx: its worker's time less what it",
        "spends per request as the upstream alone); wrk, the upstream and the proxy share the 2 cores.",
        "",
        "| path (wrk, 32 connections) | req/s | p50 us | p99 us | proxy CPU us / request | non-2xx + errors |",
        "|---|---|---|---|---|---|",
    ]
    for label, key in names:
        r = runs[key]
        lines.append(f"| {label} | {r['rps']:.0f} | {r['p50_us']} | {r['p99_us']} | {fmt_us(proxy_cpu[key])} |"
                     f" {wrk_bad(r)} |")
    g_b = gw["rps"] / bare["rps"]
    f_n = full["rps"] / ngx["rps"]
    b_n = bare["rps"] / ngx["rps"]
    own = (None if proxy_cpu["wrk-c32-gateway"] is None or proxy_cpu["wrk-c32-bare"] is None
           else proxy_cpu["wrk-c32-gateway"] - proxy_cpu["wrk-c32-bare"])
    lines += [
        "",
        target_line("Gateway (API key + metering) / bare pingora, 32 connections", f"{g_b:.2f}", ">= 0.90",
                    g_b >= 0.9, f"the gateway's own work: {fmt_us(own)} us of CPU per request above bare pingora's"),
        target_line("Gateway (API key + Redis limits + metering) / nginx as reverse proxy", f"{f_n:.2f}",
                    ">= 0.70", f_n >= 0.7,
                    f"bare pingora itself reaches {b_n:.2f} of nginx here (below)"),
        f"- The pingora floor: bare pingora reaches **{b_n:.2f}** of nginx's throughput "
        f"({bare['rps']:.0f} against {ngx['rps']:.0f} req/s). Why: it spends {fmt_us(proxy_cpu['wrk-c32-bare'])} us "
        f"of CPU per request where nginx's proxy spends {fmt_us(proxy_cpu['wrk-c32-nginx'])} us, and on 2 cores shared "
        "with wrk and the upstream, throughput follows CPU per request. TCP_NODELAY is on on both of "
        "pingora's sides already; its other server knobs (`threads`, `work_stealing`, "
        "`listener_tasks_per_fd`, `upstream_keepalive_pool_size`: config/gateway.toml, and `BARE_*` "
        "for `bare_proxy`) are there to try against this CPU figure.",
    ]
    lt32 = [r for r in lt_gateway_rows if r[0] == 32]
    if lt32:
        ratio = lt32[0][1] / gw["rps"]
        lines.append(target_line("maas-loadtest's closed-loop throughput through the gateway at 32 / wrk's",
                                 f"{ratio:.2f}", ">= 0.80", ratio >= 0.8,
                                 "the load generator's own CPU per request (it shares the cores)"))
    lines.append("")
    return lines


def wrk_limiter_lines(res):
    """Figure 6 with wrk: gateway 2 (Redis limiter) with an unlimited key and a limited one at 1
    and 32 connections, and a bare EVALSHA of the limiter's own script (redis-benchmark)."""
    keys = ("wrk-c1-redis-base", "wrk-c1-redis", "wrk-c32-redis-base", "wrk-c32-redis")
    runs = {k: load_opt(res, k) for k in keys}
    if any(r is None for r in runs.values()):
        return ["- wrk: not measured (no wrk results in this run)", ""]
    try:
        ev1 = load_redis_benchmark(res, "redis-evalsha-c1")
        ev32 = load_redis_benchmark(res, "redis-evalsha-c32")
    except (OSError, KeyError, IndexError, ValueError):
        ev1 = ev32 = None
    lines = [
        "With wrk (one thread, closed loop), gateway 2: a key without limits against a key of the",
        "limited tenant, and a bare round trip of the limiter's own script (`admit.lua`, one rate and",
        "one concurrency item, as the tenant's rule gives it) with `redis-benchmark` against the same Redis.",
        "",
        "| run | req/s | p50 us | p99 us | non-2xx + errors |",
        "|---|---|---|---|---|",
    ]
    for label, key in (("1 connection, no limits", "wrk-c1-redis-base"), ("1 connection, Redis limiter", "wrk-c1-redis"),
                       ("32 connections, no limits", "wrk-c32-redis-base"),
                       ("32 connections, Redis limiter", "wrk-c32-redis")):
        r = runs[key]
        lines.append(f"| {label} | {r['rps']:.0f} | {r['p50_us']} | {r['p99_us']} | {wrk_bad(r)} |")
    if ev1 and ev32:
        lines.append(f"| bare EVALSHA, 1 client | {ev1['rps']:.0f} | {ev1['p50_us']:.0f} | {ev1['p99_us']:.0f} | - |")
        lines.append(f"| bare EVALSHA, 32 clients | {ev32['rps']:.0f} | {ev32['p50_us']:.0f} | {ev32['p99_us']:.0f} | - |")
    ratio = runs["wrk-c32-redis"]["rps"] / runs["wrk-c32-redis-base"]["rps"]
    added = runs["wrk-c1-redis"]["p50_us"] - runs["wrk-c1-redis-base"]["p50_us"]
    lines += [
        "",
        target_line("Redis-limited / unlimited throughput, 32 connections", f"{ratio:.2f}", ">= 0.90", ratio >= 0.9,
                    "each admitted request costs one script call on the same 2 cores"),
    ]
    if ev1:
        bound = 1.5 * ev1["p50_us"]
        lines.append(target_line("Added p50 at one connection", f"{added} us",
                                 f"<= 1.5 x the bare EVALSHA p50 = {bound:.0f} us", added <= bound,
                                 f"one EVALSHA round trip is {ev1['p50_us']:.0f} us here"))
    lines.append("")
    return lines


def limiter_section(res):
    cfg = load(res, "lim-config")
    base = load(res, "gw-overhead-gateway")
    local = load(res, "lim-local")
    rbase = load(res, "gw-limits-redis-base")
    redis = load(res, "lim-redis")
    lines = [
        "## 6. Rate limiter",
        "",
        f"Open loop at {base['target_rate_rps']:.0f} requests/s for {base['elapsed_s']:.0f} s through the gateway; the key's tenant has",
        "a rule no run reaches (100,000 requests/s, burst 10,000, 256 in flight), so every request",
        "runs the limiter and none is refused. In-process: `[limits] backend = \"local\"` (governor),",
        "compared with the same gateway and a key without limits (section 1). Redis: a second gateway",
        "with `backend = \"redis\"` (one Lua script per request, Redis on loopback), compared with",
        "its own run for a key without limits. Its Redis timeout is "
        f"{cfg.get('redis_timeout_ms', 20)} ms (the default, 20 ms, is for a",
        "server not shared with its load generator); Redis calls that failed or timed out during these",
        f"runs (each sends decisions to the fail-open fallback for 1 s): **{cfg.get('redis_failures', 0)}**.",
        "",
        "| path | 2xx | p50 us | p90 us | p99 us | p99.9 us |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in (("no limits (gateway 1)", base), ("in-process limiter (gateway 1)", local),
                    ("no limits (gateway 2)", rbase), ("Redis limiter (gateway 2)", redis)):
        l = r["latency_us"]
        lines.append(f"| {name} | {ok_2xx(r)} | {l['p50']} | {l['p90']} | {l['p99']} | {l['p999']} |")
    for name, r, b in (("in-process", local, base), ("Redis", redis, rbase)):
        lines.append("")
        lines.append(f"- {name} limiter: added p50 **{r['latency_us']['p50'] - b['latency_us']['p50']} us**, "
                     f"added p99 **{r['latency_us']['p99'] - b['latency_us']['p99']} us**")
    lines += [""] + wrk_limiter_lines(res)
    rate, burst = cfg["rate"], cfg["burst"]
    lines += [
        f"Accuracy (`loadtest/scenarios/limits.toml`): one key limited to {rate} requests/s with a burst",
        f"of {burst}, 32 clients in a closed loop (refused clients retry at once); admitted = 2xx answers; the GCRA bound is",
        "rate x elapsed + burst, elapsed from the first send to the last answer.",
        "",
        "| limiter | 2xx | 429 | elapsed s | bound | 2xx / bound |",
        "|---|---|---|---|---|---|",
    ]
    verdicts = []
    for name, key in (("in-process", "lim-accuracy-local"), ("Redis", "lim-accuracy-redis")):
        r = load(res, key)
        ok = ok_2xx(r)
        refused = r["statuses"].get("429", 0)
        bound = burst + int(rate * r["elapsed_s"])
        lines.append(f"| {name} | {ok} | {refused} | {r['elapsed_s']:.2f} | {bound} | **{ok / bound:.4f}** |")
        verdicts.append(f"- {name}: {verdict(ok <= bound)}")
    lines += [
        "",
        "- Target: 2xx never above the bound (ratio <= 1, no tolerance), and close to it (the",
        "  limiter does not refuse what it should admit).",
    ] + verdicts
    lines.append("")
    return lines


def auth_section(res):
    a = load(res, "auth")
    names = {
        "api_key_cache_hit": "API key, cache hit",
        "jwt_rs256_cache_hit": "RS256 JWT, cache hit",
        "jwt_rs256_verify_uncached": "RS256 JWT, signature verified (once per token per cache TTL)",
    }
    lines = [
        "## 7. Authentication",
        "",
        "criterion (`gateway/benches/auth.rs`), one thread: `Authenticator::authenticate_credential`",
        "for a credential already in the in-process caches (what every request after the first pays),",
        "and for context the RS256 verification a new token pays once.",
        "",
        "| case | median | 95% interval |",
        "|---|---|---|",
    ]
    for key, label in names.items():
        if key in a:
            m = a[key]["median"]
            unit, div = ("us", 1000.0) if m["ns"] >= 10_000 else ("ns", 1.0)
            lines.append(f"| {label} | {m['ns'] / div:.1f} {unit} | {m['lo'] / div:.1f} to {m['hi'] / div:.1f} {unit} |")
    lines.append("")
    return lines


def backend_section(res):
    cfg = load(res, "be-config")
    c = cfg["concurrency"]
    delay = cfg["max_queue_delay_us"]
    dims = " -> ".join(str(d) for d in cfg["dims"])
    b64 = load_run(res, f"be-dense-batched-c{c}")
    u64 = load_run(res, f"be-dense-unbatched-c{c}")
    b1 = load_run(res, "be-dense-batched-c1")
    u1 = load_run(res, "be-dense-unbatched-c1")
    raws = [json.load(open(p)) for p in
            sorted(glob.glob(os.path.join(res, f"be-forward-b{cfg['max_batch_size']}*.json")))]
    if not raws:
        raise FileNotFoundError("no raw forward result")
    # The faster of the raw measurements (before and after the batched run): the stricter ratio.
    raw = max(raws, key=lambda r: r["rows_per_s"])
    raw_list = " and ".join(f"{r['rows_per_s']:.0f}" for r in raws)
    for r in (b64, u64, b1, u1):
        if ok_2xx(r) == 0:
            raise ValueError(f"run {r['scenario']} got no 2xx answer (statuses {r['statuses']}, "
                             f"{r.get('transport_errors', 0)} transport errors)")
    # One row per request (--batch 1), so 2xx requests/s are rows/s.
    http_rows = b64["ok_throughput_rps"]
    ratio_a = http_rows / raw["rows_per_s"]
    ratio_b = b64["ok_throughput_rps"] / u64["ok_throughput_rps"]
    added_p50 = b1["latency_us"]["p50"] - u1["latency_us"]["p50"]
    lines = [
        "## 4. Backend: dynamic batching",
        "",
        f"A dense {dims} FP32 model (random weights, `maas-bench init-dense`) on the CPU,",
        f"served by the release `maas-backend` with one instance of {cfg['threads']} libtorch threads;",
        f"closed loop, one random row per request in the binary tensor encoding, {cfg['duration_s']:g} s per run.",
        f"Batched: `max_batch_size = {cfg['max_batch_size']}`, `max_queue_delay_us = {delay}`,",
        f"`preferred_batch_sizes = {cfg['preferred_batch_sizes']}` (as config/model-dense-batched.toml).",
        "Unbatched: the same model without `[dynamic_batching]` (one forward pass per request).",
        "Raw: `maas-bench forward`, the same weights loaded in-process, forward passes of",
        f"{raw['batch']} rows back to back on {raw['threads']} threads, no HTTP and no batcher, measured just",
        f"before and just after the batched run ({raw_list} rows/s); the faster counts.",
        "At concurrency 1 each server ran twice, half the time each, in the order unbatched, batched,",
        "batched, unbatched; the table gives the mean of the two runs' percentiles.",
        "Average batch = inference count / execution count from the backend's `/metrics` over the run.",
        "",
        "| run | concurrency | 2xx req/s (= rows/s) | p50 us | p99 us | avg batch | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in (("batched", b64), ("unbatched", u64), ("batched", b1), ("unbatched", u1)):
        l = r["latency_us"]
        lines.append(f"| {label} | {r['concurrency']} | {r['ok_throughput_rps']:.0f} | {l['p50']} | {l['p99']} "
                     f"| {fmt_batch(run_batch(res, r))} | {failures(r)} |")
    lines.append(f"| raw forward, in-process | - | {raw['rows_per_s']:.0f} rows/s | "
                 f"{raw['ms_per_pass'] * 1000:.0f} per pass | - | {raw['batch']} | - |")
    observed = load_opt(res, "be-forward-observed")
    if observed:
        lines.append(f"| raw forward at the observed batch | - | {observed['rows_per_s']:.0f} rows/s | "
                     f"{observed['ms_per_pass'] * 1000:.0f} per pass | - | {observed['batch']} | - |")
    lines += [
        "",
        f"- (a) HTTP with batching at concurrency {c} / raw forward of {raw['batch']} rows: "
        f"{http_rows:.0f} / {raw['rows_per_s']:.0f} rows/s = **{ratio_a:.2f}** (target >= 0.60: {verdict(ratio_a >= 0.6)})",
    ]
    if observed:
        lines.append(
            f"  - For context, against raw forward passes of the {observed['batch']} rows the batcher formed on average: "
            f"{http_rows / observed['rows_per_s']:.2f}")
    lines += [
        f"- (b) Batched / unbatched at concurrency {c}: {b64['ok_throughput_rps']:.0f} / {u64['ok_throughput_rps']:.0f} "
        f"req/s = **{ratio_b:.1f}x** (target >= 8x: {verdict(ratio_b >= 8)})",
        f"  - Ceiling of (b) on this machine: even with no HTTP or batcher cost, batching can gain at most what",
        f"    libtorch gains from {raw['batch']} rows per pass, raw forward / unbatched over HTTP = "
        f"{raw['rows_per_s']:.0f} / {u64['ok_throughput_rps']:.0f} = {raw['rows_per_s'] / u64['ok_throughput_rps']:.1f}x",
        f"- (c) p50 at concurrency 1, batched minus unbatched: {b1['latency_us']['p50']} - {u1['latency_us']['p50']} "
        f"= **{added_p50} us** (target <= max_queue_delay_us = {delay} us: {verdict(added_p50 <= delay)}). A lone row",
        "  is not a preferred batch size, so it waits out the whole delay: the expected difference is",
        "  `max_queue_delay_us` plus the batcher's hand-off to the instance thread.",
        "",
    ]
    return lines


def torchserve_section(res):
    cfg = load(res, "ts-config")
    c = cfg["concurrency"]
    m64, t64 = load_run(res, f"ts-maas-c{c}"), load_run(res, f"ts-torchserve-c{c}")

    def opt_run(name):
        try:
            return load_run(res, name)
        except (OSError, ValueError):
            return None

    m1, t1 = opt_run("ts-maas-c1"), opt_run("ts-torchserve-c1")
    for r in (m64, t64):
        if ok_2xx(r) == 0:
            raise ValueError(f"run {r['scenario']} got no 2xx answer (statuses {r['statuses']}, "
                             f"{r.get('transport_errors', 0)} transport errors)")
    version = read_text(res, "ts-version.txt") or "0.12"
    java = read_text(res, "ts-java.txt") or "java"
    agree = load_opt(res, "ts-agreement")
    dims = " -> ".join(str(d) for d in cfg["dims"])

    def ts_batch(run):
        rows = batches = 0
        for part in run["_parts"]:
            b = load_opt(res, part + ".batches")
            if not b:
                return None
            rows, batches = rows + b["rows"], batches + b["batches"]
        return rows / batches if batches else None

    tput = m64["ok_throughput_rps"] / t64["ok_throughput_rps"] if t64["ok_throughput_rps"] else float("inf")
    p99 = m64["latency_us"]["p99"] / t64["latency_us"]["p99"]
    lines = [
        "## 5. Backend against TorchServe",
        "",
        f"The same TorchScript file (a dense {dims} FP32 stack, `bench/torchserve/make_torchscript.py`)",
        f"on the CPU, served by `maas-backend` (platform `torchscript`) and by TorchServe {version} ({java}),",
        "one model instance / worker each with "
        f"{cfg['threads']} libtorch threads. Batching configured alike: maas `max_batch_size = {cfg['max_batch_size']}`,",
        f"`max_queue_delay_us = {cfg['max_batch_delay_ms'] * 1000}`; TorchServe `batch_size = {cfg['max_batch_size']}`, "
        f"`max_batch_delay = {cfg['max_batch_delay_ms']}` ms",
        "(its unit is whole milliseconds). TorchServe runs a custom handler (`bench/torchserve/ts_handler.py`: one",
        "forward pass per batch, as maas does) behind `service_envelope=kservev2`, so both answer",
        "`POST /v2/models/{m}/infer`; the load is the same file of one JSON-encoded row, closed loop,",
        f"driven by `maas-loadtest`. At concurrency {c} each server ran twice for half of {cfg['duration_s']:g} s, in the",
        "order maas, TorchServe, TorchServe, maas (throughput over both runs; percentiles the mean of the",
        f"two runs'); at concurrency 1 once each, half of {cfg['duration_s']:g} s. TorchServe's average batch is",
        "counted from its model_metrics.log (request ids per PredictionTime line).",
    ]
    if agree:
        lines.append(f"Both servers' answers to that row agree to {agree['max_abs_diff']:.2g} (max abs difference over "
                     f"{agree['elements']} outputs).")
    lines += [
        "",
        "| server | concurrency | 2xx req/s | p50 us | p99 us | avg batch | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for cc, m, t in ((c, m64, t64), (1, m1, t1)):
        if m:
            l = m["latency_us"]
            lines.append(f"| maas-backend | {cc} | {m['ok_throughput_rps']:.0f} | {l['p50']} | {l['p99']} "
                         f"| {fmt_batch(run_batch(res, m))} | {failures(m)} |")
        if t:
            l = t["latency_us"]
            lines.append(f"| TorchServe | {cc} | {t['ok_throughput_rps']:.0f} | {l['p50']} | {l['p99']} "
                         f"| {fmt_batch(ts_batch(t))} | {failures(t)} |")
    lines += [
        "",
        f"- Throughput maas-backend / TorchServe at concurrency {c}: {m64['ok_throughput_rps']:.0f} / "
        f"{t64['ok_throughput_rps']:.0f} req/s = **{tput:.2f}** (above 1: maas-backend serves more)",
        f"- p99 maas-backend / TorchServe at concurrency {c}: {m64['latency_us']['p99']} / {t64['latency_us']['p99']} us "
        f"= **{p99:.2f}** (below 1: maas-backend answers sooner)",
    ]
    if m1 and t1:
        r1 = m1["latency_us"]["p99"] / t1["latency_us"]["p99"]
        lines.append(f"- p99 maas-backend / TorchServe at concurrency 1: {m1['latency_us']['p99']} / "
                     f"{t1['latency_us']['p99']} us = **{r1:.2f}**")
    lines.append("")
    return lines


# --- section ingest ------------------------------------------------------------------------------

INGEST_TARGET_EPS = 50_000


def gateway_peak_rps(res):
    """Figure 2's gateway peak from this run's results: the highest 2xx throughput of a closed-loop
    gateway run with every answer 2xx and p99 under 10 ms; None when there is none."""
    peaks = [r["ok_throughput_rps"]
             for r in (json.load(open(p)) for p in glob.glob(os.path.join(res, "gw-peak-gateway-c*.json")))
             if r["responses"] > 0 and ok_2xx(r) == r["responses"] and r["latency_us"]["p99"] < 10_000]
    return max(peaks) if peaks else None


def ingest_section(res):
    r = load(res, "ingest")
    eps = r["ingest_events_per_s"]
    lines = [
        "## 8. Metering ingest",
        "",
        f"`ingest_benchmark` (gateway/tests/metering.rs, {r.get('profile', 'release')} build): {r['events']:,} usage events (10 tenants,",
        "50 keys, 3 models) appended to the gateway's spool (a billable and a final record each, then one",
        "fsync), then drained by the usage writer into PostgreSQL, which inserts each batch of",
        f"{r['batch_size']:,} with `ON CONFLICT DO NOTHING` and updates the hourly rollup in the same statement.",
        "PostgreSQL is a private instance on this machine (scripts/with-services.sh), sharing its cores.",
        "",
        "| step | figure |",
        "|---|---|",
        f"| spool append | {r['spool_append_us_per_record']:.2f} us per record |",
        f"| spool decode alone | {r['spool_decode_events_per_s']:,.0f} events/s |",
        f"| spool -> PostgreSQL (insert + rollup) | {eps:,.0f} events/s ({r['ingest_s']:.2f} s) |",
        "",
        f"- Ingest: **{eps:,.0f} events/s** (target >= {INGEST_TARGET_EPS:,} events/s: {verdict(eps >= INGEST_TARGET_EPS)})",
    ]
    peak = gateway_peak_rps(res)
    if peak:
        lines.append(f"- Against the gateway's peak of figure 2 ({peak:,.0f} requests/s, one usage event each): "
                     f"**{eps / peak:.1f}x** (above 1: the spool drains faster than a fully loaded gateway "
                     f"fills it: {verdict(eps > peak)})")
    else:
        lines.append("- Against the gateway's peak: not measured in this run (figure 2 has no run with "
                     "p99 under 10 ms, or the gateway section did not run)")
    lines.append("")
    return lines


def split_section(res):
    cfg = load(res, "split-config")
    rows_per_request = cfg["rows_per_request"]
    stages, micro = cfg["stages"], cfg["micro_batches"]
    runs = {m: load_run(res, f"split-{m}") for m in ("dense8", "dense8-split", "dense8-t1")}
    for r in runs.values():
        if ok_2xx(r) == 0:
            raise ValueError(f"run {r['scenario']} got no 2xx answer (statuses {r['statuses']}, "
                             f"{r.get('transport_errors', 0)} transport errors)")
    before, after = load(res, "split-dense8-split.before"), load(res, "split-dense8-split.after")

    def delta(key):
        return after.get(key, 0) - before.get(key, 0)

    duration = delta("maas_pipeline_duration_us_total")
    if duration <= 0:
        raise ValueError("the pipeline counted no time")
    busy = [delta(f"maas_pipeline_stage_busy_us_total/{k}") for k in range(stages)]
    wall = [delta(f"maas_pipeline_stage_wall_us_total/{k}") for k in range(stages)]
    bubble = 1 - sum(busy) / (stages * duration)
    gpipe = (stages - 1) / (micro + stages - 1)
    execs = delta("maas_inference_exec_count_total")
    avg_batch = delta("maas_inference_count_total") / execs if execs else None
    micro_rows = delta("maas_inference_count_total") / delta("maas_pipeline_micro_batch_count_total") \
        if delta("maas_pipeline_micro_batch_count_total") else None
    rows = {m: r["ok_throughput_rps"] * rows_per_request for m, r in runs.items()}
    dims = cfg["dims"]
    lines = [
        "## 9. Model split: pipeline stages (GPipe)",
        "",
        f"A dense model of {len(dims) - 1} layers of {dims[1]} x {dims[1]} FP32 (random weights, `maas-bench init-dense`,",
        "relu between layers) on the CPU, release `maas-backend`. Same closed-loop load for every run:",
        f"{cfg['concurrency']} clients, {rows_per_request} random rows per request (binary tensor encoding),",
        f"dynamic batching up to {cfg['max_batch_size']} rows; {cfg['duration_s']:g} s per run after 2 s of warm-up.",
        f"- 1 stage: one process, the whole model on one instance of {cfg['threads']} libtorch threads (the whole machine),",
        "  and, for context, of 1 thread.",
        f"- {stages} stages: the front `maas-backend serve` runs layers 0..4 on a thread of its own (1 libtorch thread)",
        "  and sends each micro-batch's activations as a binary tensor over loopback HTTP to a",
        "  `maas-backend serve-stage --layers 4..8` process (1 libtorch thread);",
        f"  each forward batch is cut into {micro} micro-batches.",
        "",
        "| run | processes | rows/s | p50 ms | p99 ms | failed |",
        "|---|---|---|---|---|---|",
    ]
    for label, m, procs in ((f"1 stage, {cfg['threads']} threads", "dense8", 1),
                            (f"{stages} stages, 1 thread each", "dense8-split", stages),
                            ("1 stage, 1 thread", "dense8-t1", 1)):
        r = runs[m]
        l = r["latency_us"]
        lines.append(f"| {label} | {procs} | {rows[m]:.0f} | {l['p50'] / 1000:.0f} | {l['p99'] / 1000:.0f} "
                     f"| {failures(r)} |")
    ratio = rows["dense8-split"] / rows["dense8"]
    lines += [
        "",
        f"- Throughput, {stages} stages / 1 stage on the whole machine: {rows['dense8-split']:.0f} / {rows['dense8']:.0f} rows/s "
        f"= **{ratio:.2f}**; against 1 stage of 1 thread: {rows['dense8-split'] / rows['dense8-t1']:.2f}.",
        f"- Bubble fraction measured over the {stages}-stage run: 1 - (stage busy time summed) / ({stages} x time batches spent "
        f"in the pipeline) = 1 - ({' + '.join(f'{b / 1e6:.2f}' for b in busy)}) s / ({stages} x {duration / 1e6:.2f} s) "
        f"= **{bubble:.2f}**, against GPipe's (stages - 1) / (micro_batches + stages - 1) = "
        f"{stages - 1}/{micro + stages - 1} = **{gpipe:.2f}**.",
        "  Busy time is the stage's forward pass (for the remote stage, the compute time its answers report",
        "  in `x-maas-compute-us`); anything else in the pipeline's time (HTTP and copies of activations,",
        "  threads waiting for a core) counts as bubble.",
        "- Per stage, busy / time spent on micro-batches (transport included): "
        + ", ".join(f"stage {k} {busy[k] / 1e6:.2f} / {wall[k] / 1e6:.2f} s" for k in range(stages))
        + (f"; average forward batch {avg_batch:.1f} rows" if avg_batch else "")
        + (f", micro-batch {micro_rows:.1f} rows." if micro_rows else "."),
        "",
    ]
    return lines


# --- section pools -------------------------------------------------------------------------------


def pools_section(res):
    cfg = load(res, "pools-config")
    lines = [
        "## 10. Backend pools",
        "",
        "a. The same upstream as figure 2 (nginx's fixed answer, which also answers the repository",
        "index), closed loop: maas-gateway with the `[upstream] backends` shorthand (figure 2's setup:",
        "one pool serving every model, no discovery) against a `[[pools]]` pool of that one backend",
        "(discovery, health checks, P2C), side by side.",
        "",
        "| concurrency | shorthand req/s | shorthand p99 us | pool req/s | pool p99 us | pool / shorthand |",
        "|---|---|---|---|---|---|",
    ]
    ratios = []
    def conc(path):
        return int(os.path.basename(path)[len("pools-shorthand-c"):-len(".json")])

    for path in sorted(glob.glob(os.path.join(res, "pools-shorthand-c*.json")), key=conc):
        c = conc(path)
        a, b = json.load(open(path)), load(res, f"pools-one-c{c}")
        ratio = b["ok_throughput_rps"] / a["ok_throughput_rps"] if a["ok_throughput_rps"] else float("nan")
        ratios.append(ratio)
        lines.append(f"| {c} | {a['ok_throughput_rps']:.0f} | {a['latency_us']['p99']} | "
                     f"{b['ok_throughput_rps']:.0f} | {b['latency_us']['p99']} | {ratio:.2f} |")
    if ratios:
        worst = min(ratios)
        lines += ["", f"- Lowest throughput ratio pool / shorthand: **{worst:.2f}** "
                      f"(target: no loss, >= 0.95: {verdict(worst >= 0.95)})", ""]

    def slow_share(state):
        backends = [b for p in state for b in p["backends"]]
        total = sum(b["requests"] for b in backends)
        slow = sum(b["requests"] for b in backends if b["address"].endswith(f":{cfg['slow_port']}"))
        return slow / total if total else float("nan")

    p2c, rr = load(res, "pools-p2c"), load(res, "pools-rr")
    sp, sr = slow_share(load(res, "pools-p2c-state")), slow_share(load(res, "pools-rr-state"))
    lines += [
        f"b. A pool of two backends, one {cfg['slow_ms']} ms slower than the other (a thread-per-connection",
        f"Python server beside nginx), closed loop at concurrency {cfg['concurrency']}: power of two choices on",
        "requests in flight against round-robin.",
        "",
        "| policy | req/s | p50 us | p90 us | p99 us | share sent to the slow backend |",
        "|---|---|---|---|---|---|",
        f"| p2c | {p2c['ok_throughput_rps']:.0f} | {p2c['latency_us']['p50']} | {p2c['latency_us']['p90']} | "
        f"{p2c['latency_us']['p99']} | {sp:.3f} |",
        f"| round_robin | {rr['ok_throughput_rps']:.0f} | {rr['latency_us']['p50']} | {rr['latency_us']['p90']} | "
        f"{rr['latency_us']['p99']} | {sr:.3f} |",
        "",
        f"- p99 round-robin / P2C: **{rr['latency_us']['p99'] / max(p2c['latency_us']['p99'], 1):.2f}**; "
        f"throughput P2C / round-robin: {p2c['ok_throughput_rps'] / max(rr['ok_throughput_rps'], 1e-9):.2f}",
        "",
    ]
    return lines


# --- section metrics -----------------------------------------------------------------------------


def metrics_section(res):
    on, off = load_run(res, "met-on"), load_run(res, "met-off")
    cfg = load(res, "met-config")
    ratio = on["ok_throughput_rps"] / off["ok_throughput_rps"]
    lost = (1 - ratio) * 100
    lines = [
        "## 11. Metrics overhead",
        "",
        f"Closed loop, {cfg['concurrency']} connections, {cfg['rounds']} alternating rounds of"
        f" {cfg['duration_s']} s each (on, then off), the same build of the gateway twice in front of",
        "the fixed nginx upstream: `[metrics] enabled = true` (the default: request counter and three",
        "latency histograms per request, the /metrics listener) against `enabled = false`. Latency",
        "percentiles are the mean of the rounds'.",
        "",
        "| gateway | 2xx requests/s | p50 µs | p99 µs | failures |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in (("metrics on", on), ("metrics off", off)):
        lines.append(f"| {name} | {r['ok_throughput_rps']:,.0f} | {r['latency_us']['p50']:,} |"
                     f" {r['latency_us']['p99']:,} | {failures(r)} |")
    lines += [
        "",
        f"- Throughput with metrics on: {ratio:.3f} of off ({lost:+.1f}% lost; target: under 3% lost):"
        f" {verdict(lost < 3.0)}.",
        "",
    ]
    return lines


# --- section dashboard ---------------------------------------------------------------------------


def dashboard_section(res):
    d = load(res, "dashboard")
    worst = max(c["p95_ms"] for c in d["calls"])
    lines = [
        "## 12. Dashboard queries",
        "",
        f"{d['events']:,} usage events of {d['tenants']} tenants (5 keys and 3 models each, 5% failed,",
        "spread over 60 days) generated in PostgreSQL with `generate_series` and rolled up hourly",
        f"({d['load_s']:.0f} s), then every call the dashboard makes, {d['rounds']} times each round-robin",
        "over the tenants (one keep-alive connection, after a warm-up), against the release gateway's",
        "admin listener: the JSON API with a tenant admin token, the pages with a session cookie.",
        "",
        "| call | p50 ms | p95 ms | max ms |",
        "|---|---:|---:|---:|",
    ]
    for c in d["calls"]:
        lines.append(f"| {c['name']} | {c['p50_ms']:.1f} | {c['p95_ms']:.1f} | {c['max_ms']:.1f} |")
    ro, raw = d["rollup"], d["raw"]
    lines += [
        "",
        f"- Slowest p95: **{worst:.1f} ms** (target: every call under 200 ms p95: {verdict(worst < 200)}).",
        f"- The same 30-day hourly report by model and key ({raw['n']} calls each): from the hourly"
        f" rollups p50 {ro['p50_ms']:.1f} ms, from the raw events (a range one second off the hour)"
        f" p50 {raw['p50_ms']:.1f} ms: raw / rollup = **{raw['p50_ms'] / max(ro['p50_ms'], 1e-9):.1f}**.",
        "",
    ]
    return lines


# --- section soak --------------------------------------------------------------------------------


def soak_section(res):
    cfg = load(res, "soak-config")
    end = load(res, "soak-end")
    run = load(res, "soak-load")
    samples = []
    try:
        with open(os.path.join(res, "soak-samples.jsonl")) as f:
            samples = [json.loads(line) for line in f if line.strip()]
    except OSError:
        pass
    # The start is the first sample taken under the measured load (the one at t = 0 sees the
    # warm-up's connections closed and the measured run's not yet open).
    start = samples[0] if samples else load(res, "soak-start")
    minutes = cfg["duration_s"] / 60
    lines = [
        "## 13. Soak",
        "",
        f"maas-gateway (API key authentication, metering into PostgreSQL) in front of maas-backend",
        f"(a 64 -> 128 -> 10 dense model), open loop at {cfg['rate']} requests/s for"
        f" {cfg['duration_s']} s ({minutes:.0f} min) after a {cfg['warmup_s']} s warm-up at the same",
        f"load. Resident set (VmRSS) and open file descriptors of each process from /proc, sampled",
        f"every {cfg['sample_s']} s: start is the first sample under the measured load"
        f" (t = {start['t']:.0f} s), end the last, taken as the load stops (t = {end['t']:.0f} s);"
        f" peak and the fd range are over all samples.",
        "",
        f"Load: {run['responses']:,} answers, {ok_2xx(run):,} 2xx, {failures(run)} failures;"
        f" p50 {run['latency_us']['p50']:,} µs, p99 {run['latency_us']['p99']:,} µs.",
        "",
        "| process | RSS start MiB | RSS end MiB | change | peak MiB | fds start | fds end | fds min-max |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    flat = True
    for name in ("gateway", "backend"):
        a, b = start[name], end[name]
        change = (b["rss_kb"] - a["rss_kb"]) / a["rss_kb"] * 100
        peak = max([a["rss_kb"], b["rss_kb"]] + [x[name]["rss_kb"] for x in samples])
        fds = [a["fds"], b["fds"]] + [x[name]["fds"] for x in samples]
        ok = abs(change) <= 10 and b["fds"] <= a["fds"]
        flat = flat and ok
        lines.append(f"| maas-{name} | {a['rss_kb'] / 1024:.1f} | {b['rss_kb'] / 1024:.1f} |"
                     f" {change:+.1f}% | {peak / 1024:.1f} | {a['fds']} | {b['fds']} |"
                     f" {min(fds)}-{max(fds)} |")
    lines += [
        "",
        f"- Resident set within 10% from start to end and no file descriptor growth, for both:"
        f" {verdict(flat and failures(run) == 0)}"
        + ("." if failures(run) == 0 else f" ({failures(run)} failed requests)."),
        "",
    ]
    return lines


SECTIONS = [
    ("loadtool", "0. The load generator's own floor", loadtool_section),
    ("gateway", "Gateway (figures 1-3: overhead, peak throughput against nginx, metering accuracy)",
     gateway_section),
    ("backend", "4. Backend: dynamic batching", backend_section),
    ("torchserve", "5. Backend against TorchServe", torchserve_section),
    ("gateway", "6. Rate limiter", limiter_section),
    ("auth", "7. Authentication", auth_section),
    ("ingest", "8. Metering ingest", ingest_section),
    ("split", "9. Model split: pipeline stages (GPipe)", split_section),
    ("pools", "10. Backend pools", pools_section),
    ("metrics", "11. Metrics overhead", metrics_section),
    ("dashboard", "12. Dashboard queries", dashboard_section),
    ("soak", "13. Soak", soak_section),
]


def gpu_section(res):
    """The "GPU" section from results/gpu.json, written by scripts/gpu-check.sh on a GPU machine.

    A dry run (on a CPU, small sizes) only proves the script: its figures are not shown."""
    title = "## GPU"
    path = os.path.join(res, "gpu.json")
    if not os.path.exists(path):
        return [title, "", "- not run: no GPU machine (`scripts/gpu-check.sh run` writes this section)", ""]
    with open(path) as f:
        g = json.load(f)
    if g.get("dry_run"):
        return [title, "", "- not run: no GPU machine. The last `scripts/gpu-check.sh run --dry-run` "
                f"({g['date']}, {g['machine']}, device {g['device']}, {g['seconds']} s) ran every step on "
                "small sizes; its figures are not GPU figures and are not shown.", ""]
    d, h, t, p, c = g["dense"], g["http"], g["training"], g["pipeline"], g["ceiling"]
    tests_ok = all(x["status"] == "passed" and x["gpu_halves_skipped"] == 0 for x in g["tests"])
    lines = [
        title, "",
        f"Run by `scripts/gpu-check.sh run` on {g['machine']} ({g['gpu']}, device {g['device']}, "
        f"PyTorch {g['torch']}), {g['date']}, in {g['seconds']} s.", "",
        "| Figure | Measured | Target | Verdict |",
        "|---|---|---|---|",
        "| GPU halves of the tests | " + "; ".join(
            f"{x['binary']}: {x['status']}, {x['gpu_halves_skipped']} skipped" for x in g["tests"])
        + f" | all pass, none skipped | {verdict(tests_ok)} |",
        f"| raw bf16 matmul {c['n']}^3 (the ceiling) | {c['tflops']:.1f} TFLOP/s | - | - |",
        f"| dense {d.get('layers', '?')} layers, bf16, batch {d['batch']}, in process | "
        f"{d['tflops']:.1f} TFLOP/s = {d['percent_of_ceiling']:.0f}% of the ceiling | >= {d['target_percent']}% | "
        f"{verdict(d['percent_of_ceiling'] >= d['target_percent'])} |",
        f"| backend over HTTP, dynamic batching, batch {h['batch']} | {h['rows_per_s']:.0f} rows/s = "
        f"{h['ratio_to_forward']:.2f} of the in-process forward ({d['rows_per_s']:.0f} rows/s) | >= {h['target_ratio']} | "
        f"{verdict(h['ratio_to_forward'] >= h['target_ratio'])} |",
        f"| training on digits, {g['device']} vs cpu | test accuracy {t['device_accuracy']:.4f} vs "
        f"{t['cpu_accuracy']:.4f} | within {t['target_difference']} | {verdict(t['difference'] <= t['target_difference'])} |",
        f"| pipeline {' + '.join(p['stages'])} vs one piece on cpu | max difference {p['max_abs_difference']:.2e} "
        f"over {p['elements']} outputs | <= {p['target_max_abs_difference']} | "
        f"{verdict(p['max_abs_difference'] <= p['target_max_abs_difference'])} |",
        "",
    ]
    memory = h.get("gpu_memory_used_bytes") or {}
    if memory:
        lines += ["GPU memory of the serving backend after the HTTP run (`maas_gpu_memory_used_bytes`): "
                  + ", ".join(f"{k} {v / 2**30:.1f} GiB" for k, v in memory.items()) + ".", ""]
    return lines


def render_section(res, key, title, fn):
    why = None
    for suffix in ("failed", "skipped"):
        text = read_text(res, f"{key}.{suffix}")
        if text:
            why = text
            break
    if why is None:
        try:
            lines = fn(res)
            measured = read_text(res, f"{key}.measured")
            if measured:
                lines = lines[:2] + [f"Measured {measured.strip()}.", ""] + lines[2:]
            return lines
        except Exception as e:  # incomplete results: say so, write the other sections
            why = f"results incomplete ({type(e).__name__}: {e})"
    return [f"## {title}", "", f"- not measured: {why}", ""]


def main():
    res, out = sys.argv[1], sys.argv[2]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    versions = [cmd("rustc", "--version")]
    extra = read_text(res, "versions.txt")
    if extra:
        versions += [v for v in extra.splitlines()[1:] if v.strip()]
    nginx = cmd("nginx", "-v")
    if nginx != "not found":
        versions.append("nginx " + nginx.replace("nginx version: ", ""))
    psql = cmd("psql", "--version")
    if psql != "not found":
        versions.append(psql)
    ts = read_text(res, "ts-version.txt")
    if ts:
        versions.append(f"TorchServe {ts}")
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (bench/run.sh); do not edit by hand. Every figure compares two",
        "measurements taken side by side in this one run on this machine, with the load generator",
        "(`maas-loadtest`) sharing the cores with the servers.",
        "",
        f"- Date: {now}",
        f"- Machine: {os.cpu_count()} CPUs ({cpu_model()}), {platform.system()} {platform.release()}",
        f"- Versions: {'; '.join(versions)}",
        "",
    ]
    for key, title, fn in SECTIONS:
        lines += render_section(res, key, title, fn)
    lines += gpu_section(res)
    with open(out, "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
