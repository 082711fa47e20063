#!/usr/bin/env python3
"""Times the dashboard's calls against a gateway's admin API (bench/dashboard.sh, section 12).

Every call the dashboard's pages make, as the JSON API serves it, plus the pages themselves
(signed in with a session cookie), each timed ROUNDS times round-robin over the tenants on one
keep-alive connection, after a warm-up: p50, p95 and max in milliseconds. Beside them, the same
30-day hourly report by model and key from the hourly rollups (hour-aligned range) and from the
raw events (a range one second off the hour, which the report must read from usage_events).

Tenant admin tokens are those bench/dashboard_data.sql stores: 'maas_ta_' + the tenant number
in 48 hex digits.
"""
import argparse
import datetime
import http.client
import json
import statistics
import time
import urllib.parse

ROUNDS = 100
WARMUP = 5


def percentile(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


class Conn:
    def __init__(self, base):
        u = urllib.parse.urlparse(base)
        self.host, self.port = u.hostname, u.port
        self.c = http.client.HTTPConnection(self.host, self.port, timeout=60)

    def request(self, method, path, headers=None, body=None):
        t0 = time.perf_counter()
        self.c.request(method, path, body=body, headers=headers or {})
        r = self.c.getresponse()
        data = r.read()
        dt = (time.perf_counter() - t0) * 1000
        return r.status, dict(r.getheaders()), data, dt


def tenant_id(t):
    return f"{t:08x}-0000-7000-8000-000000000000"


def tenant_token(t):
    return "maas_ta_" + format(t, "048x")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--operator-token", required=True)
    ap.add_argument("--tenants", type=int, required=True)
    ap.add_argument("--events", type=int, required=True)
    ap.add_argument("--load-s", type=float, required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    conn = Conn(a.base)
    now = datetime.datetime.now(datetime.timezone.utc)
    hour = now.replace(minute=0, second=0, microsecond=0)
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    nxt = (month + datetime.timedelta(days=32)).replace(day=1)
    iso = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")
    d30 = hour - datetime.timedelta(days=30)
    d60 = hour - datetime.timedelta(days=60)
    period = month.strftime("%Y-%m")

    # Sessions for the pages: one per tenant, through the sign-in form.
    cookies = {}
    for t in range(1, a.tenants + 1):
        body = urllib.parse.urlencode({"token": tenant_token(t)})
        status, headers, _, _ = conn.request(
            "POST", "/dashboard/sign-in", {"content-type": "application/x-www-form-urlencoded"}, body)
        assert status == 303, f"sign-in of tenant {t}: {status}"
        cookies[t] = headers["set-cookie"].split(";")[0]
    status, headers, _, _ = conn.request(
        "POST", "/dashboard/sign-in", {"content-type": "application/x-www-form-urlencoded"},
        urllib.parse.urlencode({"token": a.operator_token}))
    operator_cookie = headers["set-cookie"].split(";")[0]

    api = lambda t, rest: f"/admin/v1/tenants/{tenant_id(t)}{rest}"
    page = lambda t, rest: f"/dashboard/tenants/{tenant_id(t)}{rest}"
    calls = [
        ("account (overview numbers)", lambda t: api(t, "/account"), "token"),
        ("usage, this month by day (overview chart)",
         lambda t: api(t, f"/usage?from={iso(month)}&to={iso(nxt)}&granularity=day"), "token"),
        ("usage, 30 days by hour, by model and key",
         lambda t: api(t, f"/usage?from={iso(d30)}&to={iso(hour)}&granularity=hour&group_by=model,key"), "token"),
        ("usage, 60 days by day in Europe/Paris, by model",
         lambda t: api(t, f"/usage?from={iso(d60)}&to={iso(hour)}&granularity=day&group_by=model&tz=Europe/Paris"), "token"),
        ("keys with their limits", lambda t: api(t, "/keys"), "token"),
        ("limits", lambda t: api(t, "/limits"), "token"),
        ("invoice, this month", lambda t: api(t, f"/invoices/{period}"), "token"),
        ("page: overview", lambda t: page(t, "/overview"), "cookie"),
        ("page: usage, 30 days by hour, by key",
         lambda t: page(t, f"/usage?from={d30.date()}&to={hour.date()}&granularity=hour&group=key"), "cookie"),
        ("page: keys", lambda t: page(t, "/keys"), "cookie"),
        ("page: limits and plan", lambda t: page(t, "/limits"), "cookie"),
        ("page: operator (every tenant ranked by spend)", lambda t: "/dashboard/operator", "operator"),
    ]
    raw = ("usage, 30 days by hour, by model and key, from raw events",
           lambda t: api(t, f"/usage?from={iso(d30 + datetime.timedelta(seconds=1))}&to={iso(hour)}"
                            f"&granularity=hour&group_by=model,key"), "token")

    def measure(name, path_of, auth, rounds):
        times = []
        for i in range(WARMUP + rounds):
            t = 1 + i % a.tenants
            h = {"authorization": f"Bearer {tenant_token(t)}"} if auth == "token" else \
                {"cookie": cookies[t]} if auth == "cookie" else {"cookie": operator_cookie}
            status, _, body, dt = conn.request("GET", path_of(t), h)
            assert status == 200, f"{name}: {status} {body[:200]!r}"
            if i >= WARMUP:
                times.append(dt)
        r = {"name": name, "path": path_of(1), "n": len(times),
             "p50_ms": round(statistics.median(times), 2),
             "p95_ms": round(percentile(times, 0.95), 2), "max_ms": round(max(times), 2)}
        print(f"bench: dashboard: {name}: p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms")
        return r

    results = [measure(n, p, au, ROUNDS) for n, p, au in calls]
    raw_rounds = 20
    rollup_same = measure(calls[2][0] + " (same tenants as raw)", calls[2][1], "token", raw_rounds)
    raw_r = measure(raw[0], raw[1], raw[2], raw_rounds)
    _, _, body, _ = conn.request("GET", api(1, "/account"), {"authorization": f"Bearer {tenant_token(1)}"})
    account = json.loads(body)
    out = {
        "events": a.events, "tenants": a.tenants, "load_s": a.load_s, "rounds": ROUNDS,
        "month_requests_tenant_1": account["usage"]["requests"],
        "calls": results, "rollup": rollup_same, "raw": raw_r,
    }
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
