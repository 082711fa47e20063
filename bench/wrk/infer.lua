-- wrk script: POST the tiny digits infer body (one row of data/digits.csv.gz, OIP v2 JSON,
-- the same shape maas-loadtest's `--body digits` sends). The API key, when the target needs
-- one, comes from the environment: MAAS_BENCH_WRK_KEY (sent as `Authorization: Bearer`).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("MAAS_BENCH_WRK_KEY")
if key ~= nil and key ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. key
end
wrk.body = '{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":['
    .. '0,0,5,13,9,1,0,0,0,0,13,15,10,15,5,0,0,3,15,2,0,11,8,0,0,4,12,0,0,8,8,0,'
    .. '0,5,8,0,0,9,8,0,0,4,11,0,1,12,7,0,0,2,14,5,10,12,0,0,0,0,6,13,10,0,0,0]}]}'

-- One JSON line on stderr at the end: requests/s, latency percentiles (microseconds), errors
-- (non-2xx/3xx answers, socket errors), for bench/report.py.
done = function(summary, latency, requests)
    local s = summary.duration / 1e6
    local e = summary.errors
    io.stderr:write(string.format(
        '{"requests": %d, "duration_s": %.3f, "rps": %.1f, "p50_us": %d, "p90_us": %d, '
        .. '"p99_us": %d, "p999_us": %d, "max_us": %d, "mean_us": %.1f, "non2xx": %d, '
        .. '"errors": %d}\n',
        summary.requests, s, summary.requests / s, latency:percentile(50),
        latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
        latency.max, latency.mean, e.status, e.connect + e.read + e.write + e.timeout))
end
