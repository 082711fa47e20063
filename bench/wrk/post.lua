-- wrk script of the loadtool section (bench/run.sh): POSTs the file named by WRK_BODY as JSON,
-- and at the end writes the run's figures as JSON to the file named by WRK_JSON
-- (latencies in microseconds, wrk's own unit; duration in microseconds).
local f = assert(io.open(os.getenv("WRK_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
    local e = summary.errors
    local out = assert(io.open(os.getenv("WRK_JSON"), "w"))
    out:write(string.format(
        '{"requests": %d, "duration_us": %d, "throughput_rps": %.1f, "errors": %d, '
            .. '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "p999": %d, "max": %d, "mean": %.1f}}\n',
        summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
        e.connect + e.read + e.write + e.status + e.timeout,
        latency:percentile(50), latency:percentile(90), latency:percentile(99),
        latency:percentile(99.9), latency.max, latency.mean))
    out:close()
end
