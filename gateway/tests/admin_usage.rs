//! Usage, invoices and exports over the admin API, and tenant admins, with a real PostgreSQL and the `maas-gateway` binary: a small usage fixture written
//! with `maas_billing::insert_usage_events` at chosen instants (and one real request through the
//! fake backend), read back as day and hour buckets in UTC and in Europe/Paris, grouped by model
//! and key, as an invoice computed by hand to the micro-USD, and as CSV, JSON lines and
//! CloudEvents exports; a tenant admin sees its own tenant only, and a revoked one nothing.
//!
//! Needs `DATABASE_URL` (a role allowed to CREATE DATABASE; `make test` provides one).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use maas_billing::export::CSV_HEADER;
use maas_billing::{insert_usage_events, UsageEvent};
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

mod common;

use common::*;

const TOKEN: &str = "test-operator-token-usage-0123456789";

/// An admin API client.
struct Admin {
    client: reqwest::Client,
    base: String,
}

/// What these tests read from an admin API answer.
trait AnswerExt {
    fn text(&self) -> String;
    fn header(&self, name: &str) -> &str;
    fn error(&self, status: u16) -> String;
}

impl AnswerExt for AdminAnswer {
    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("UTF-8 body")
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header"))
    }

    /// The `error` of a JSON error body, checking the status.
    fn error(&self, status: u16) -> String {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        self.json()["error"]
            .as_str()
            .expect("an error body {\"error\": \"...\"}")
            .to_string()
    }
}

impl Admin {
    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> AdminAnswer {
        admin_request(&self.client, &self.base, method, path, token, body).await
    }

    async fn get(&self, path: &str, token: &str) -> AdminAnswer {
        self.send(Method::GET, path, Some(token), None).await
    }

    /// POST as the operator, expecting `status`; the JSON answer.
    async fn post_ok(&self, path: &str, body: Value, status: u16) -> Value {
        let a = self.send(Method::POST, path, Some(TOKEN), Some(body)).await;
        assert_eq!(a.status, status, "POST {path}: {}", a.text());
        a.json()
    }
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().expect("RFC 3339 instant")
}

/// One usage event of `tenant` / `key` on `model` started at `started_at`.
fn event(
    tenant: Uuid,
    key: Uuid,
    model: &str,
    started_at: &str,
    http_status: i16,
    inference_count: i64,
    compute_us: i64,
) -> UsageEvent {
    UsageEvent {
        request_id: Uuid::now_v7(),
        started_at: at(started_at),
        tenant_id: Some(tenant),
        api_key_id: Some(key),
        model: Some(model.into()),
        model_version: Some("1".into()),
        http_status,
        call: maas_billing::CallKind::Inference,
        inference_count,
        compute_us,
        request_bytes: 100,
        response_bytes: 50,
        latency_us: 900,
    }
}

/// A bucket as (local start, model, key, requests, billable, errors, inferences, compute us).
type Row = (
    String,
    Option<String>,
    Option<String>,
    i64,
    i64,
    i64,
    i64,
    i64,
);

fn rows(report: &Value) -> Vec<Row> {
    report["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| {
            (
                b["local_start"].as_str().unwrap().to_string(),
                b["model"].as_str().map(str::to_string),
                b["api_key_id"].as_str().map(str::to_string),
                b["requests"].as_i64().unwrap(),
                b["billable_requests"].as_i64().unwrap(),
                b["error_requests"].as_i64().unwrap(),
                b["inference_count"].as_i64().unwrap(),
                b["compute_us"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn row(day: &str, model: Option<&str>, key: Option<Uuid>, counts: [i64; 5]) -> Row {
    (
        day.to_string(),
        model.map(str::to_string),
        key.map(|k| k.to_string()),
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        counts[4],
    )
}

/// Tenants `acme` (plan `pro`) and `globex`, each with an admin; the fixture's ids.
struct Fixture {
    acme: Uuid,
    globex: Uuid,
    k1: Uuid,
    k2: Uuid,
    acme_admin: String,
    acme_admin_id: String,
    globex_admin: String,
    /// acme's request ids from 2026-11-09T00:00Z to 2026-11-11T00:00Z.
    acme_ids: BTreeSet<String>,
}

/// A fresh database, the fake backend, the gateway with the admin API, and the fixture in it.
async fn setup() -> (sqlx::PgPool, RunningGateway, Admin, Fixture) {
    let (pool, db_url) = fresh_database().await;
    let backend = start_backend().await;
    let gw = start_gateway(
        &db_url,
        &[backend],
        &[("MAAS_GATEWAY_ADMIN__OPERATOR_TOKEN", TOKEN.to_string())],
    );
    let admin = Admin {
        client: reqwest::Client::new(),
        base: format!("http://{}", gw.admin),
    };
    let f = fixture(&admin, &pool).await;
    (pool, gw, admin, f)
}

async fn fixture(admin: &Admin, pool: &sqlx::PgPool) -> Fixture {
    let acme = admin
        .post_ok(
            "/admin/v1/tenants",
            json!({"name": "acme", "plan": "pro"}),
            201,
        )
        .await;
    let acme: Uuid = acme["id"].as_str().unwrap().parse().unwrap();
    let globex = admin
        .post_ok("/admin/v1/tenants", json!({"name": "globex"}), 201)
        .await;
    let globex: Uuid = globex["id"].as_str().unwrap().parse().unwrap();
    let mut keys = Vec::new();
    for name in ["k1", "k2"] {
        let k = admin
            .post_ok(
                &format!("/admin/v1/tenants/{acme}/keys"),
                json!({ "name": name }),
                201,
            )
            .await;
        keys.push(k["id"].as_str().unwrap().parse::<Uuid>().unwrap());
    }
    let (k1, k2) = (keys[0], keys[1]);
    let other_key = Uuid::now_v7();

    // Europe/Paris is UTC+1 in November: 23:30Z on the 9th is 00:30 on the 10th in Paris.
    let events = vec![
        event(
            acme,
            k1,
            "digits",
            "2026-11-09T22:30:00Z",
            200,
            10,
            1_000_000,
        ),
        event(acme, k2, "digits", "2026-11-09T23:30:00Z", 200, 20, 500_000),
        event(acme, k1, "dense", "2026-11-10T12:00:00Z", 200, 5, 250_000),
        // Not billable: neither its inferences nor its compute count.
        event(acme, k1, "dense", "2026-11-10T13:00:00Z", 500, 4, 999_999),
        event(acme, k1, "digits", "2026-11-10T14:00:00Z", 200, 3, 1_234),
    ];
    let acme_ids = events.iter().map(|e| e.request_id.to_string()).collect();
    let mut all = events;
    // October in UTC (November 1st in Paris): on October's invoice, not November's.
    all.push(event(acme, k1, "digits", "2026-10-31T23:30:00Z", 200, 1, 0));
    // Another tenant, inside the range: never in acme's numbers.
    all.push(event(
        globex,
        other_key,
        "digits",
        "2026-11-10T10:00:00Z",
        200,
        1000,
        1000,
    ));
    assert_eq!(insert_usage_events(pool, &all).await.unwrap(), 7);

    // Plan `pro`: its own price for digits (one request a month included), `*` for the rest.
    sqlx::query("INSERT INTO plans (name) VALUES ('pro')")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO plan_prices (plan, model, per_request_micro_usd, \
             per_1k_inferences_micro_usd, per_compute_second_micro_usd, included_requests) \
         VALUES ('pro', 'digits', 1000, 2500, 30000, 1), ('pro', '*', 500, 0, 7, 0)",
    )
    .execute(pool)
    .await
    .unwrap();

    let a = admin
        .post_ok(
            &format!("/admin/v1/tenants/{acme}/admins"),
            json!({"name": "alice@acme.example"}),
            201,
        )
        .await;
    let g = admin
        .post_ok(
            &format!("/admin/v1/tenants/{globex}/admins"),
            json!({"name": "gina@globex.example"}),
            201,
        )
        .await;
    Fixture {
        acme,
        globex,
        k1,
        k2,
        acme_admin: a["token"].as_str().unwrap().to_string(),
        acme_admin_id: a["id"].as_str().unwrap().to_string(),
        globex_admin: g["token"].as_str().unwrap().to_string(),
        acme_ids,
    }
}

#[tokio::test]
async fn usage_invoices_and_exports_match_the_fixture() {
    let (pool, gw, admin, f) = setup().await;
    let usage = format!("/admin/v1/tenants/{}/usage", f.acme);
    let utc_range = "from=2026-11-09T00:00:00Z&to=2026-11-11T00:00:00Z";

    // Days in UTC (the default zone and granularity): the 23:30Z event is on the 9th.
    let a = admin.get(&format!("{usage}?{utc_range}"), TOKEN).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let report = a.json();
    assert_eq!(report["tz"], "UTC");
    assert_eq!(report["granularity"], "day");
    assert_eq!(report["group_by"], json!([]));
    assert_eq!(
        rows(&report),
        vec![
            row("2026-11-09T00:00:00", None, None, [2, 2, 0, 30, 1_500_000]),
            row("2026-11-10T00:00:00", None, None, [3, 2, 1, 8, 251_234]),
        ]
    );
    assert_eq!(report["buckets"][0]["bucket_start"], "2026-11-09T00:00:00Z");

    // Days in Europe/Paris, from local midnight to local midnight: the same event is on the 10th.
    let a = admin
        .get(
            &format!(
                "{usage}?from=2026-11-08T23:00:00Z&to=2026-11-10T23:00:00Z&granularity=day&tz=Europe/Paris"
            ),
            &f.acme_admin,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let report = a.json();
    assert_eq!(report["tz"], "Europe/Paris");
    assert_eq!(
        rows(&report),
        vec![
            row("2026-11-09T00:00:00", None, None, [1, 1, 0, 10, 1_000_000]),
            row("2026-11-10T00:00:00", None, None, [4, 3, 1, 28, 751_234]),
        ]
    );
    assert_eq!(report["buckets"][0]["bucket_start"], "2026-11-08T23:00:00Z");
    assert_eq!(report["buckets"][1]["bucket_start"], "2026-11-09T23:00:00Z");

    // Hours in Paris: one bucket per event, on Paris wall-clock hours.
    let a = admin
        .get(
            &format!("{usage}?{utc_range}&granularity=hour&tz=Europe/Paris"),
            &f.acme_admin,
        )
        .await;
    let hours: Vec<String> = rows(&a.json()).into_iter().map(|r| r.0).collect();
    assert_eq!(
        hours,
        [
            "2026-11-09T23:00:00",
            "2026-11-10T00:00:00",
            "2026-11-10T13:00:00",
            "2026-11-10T14:00:00",
            "2026-11-10T15:00:00"
        ]
    );

    // Grouped by model and key: every group equals the fixture.
    let a = admin
        .get(&format!("{usage}?{utc_range}&group_by=model,key"), TOKEN)
        .await;
    let report = a.json();
    assert_eq!(report["group_by"], json!(["model", "key"]));
    let got: BTreeSet<Row> = rows(&report).into_iter().collect();
    let want: BTreeSet<Row> = [
        row(
            "2026-11-09T00:00:00",
            Some("digits"),
            Some(f.k1),
            [1, 1, 0, 10, 1_000_000],
        ),
        row(
            "2026-11-09T00:00:00",
            Some("digits"),
            Some(f.k2),
            [1, 1, 0, 20, 500_000],
        ),
        row(
            "2026-11-10T00:00:00",
            Some("dense"),
            Some(f.k1),
            [2, 1, 1, 5, 250_000],
        ),
        row(
            "2026-11-10T00:00:00",
            Some("digits"),
            Some(f.k1),
            [1, 1, 0, 3, 1_234],
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want);
    // By key only.
    let a = admin
        .get(&format!("{usage}?{utc_range}&group_by=key"), TOKEN)
        .await;
    assert_eq!(
        rows(&a.json()).into_iter().collect::<BTreeSet<Row>>(),
        [
            row(
                "2026-11-09T00:00:00",
                None,
                Some(f.k1),
                [1, 1, 0, 10, 1_000_000]
            ),
            row(
                "2026-11-09T00:00:00",
                None,
                Some(f.k2),
                [1, 1, 0, 20, 500_000]
            ),
            row(
                "2026-11-10T00:00:00",
                None,
                Some(f.k1),
                [3, 2, 1, 8, 251_234]
            ),
        ]
        .into_iter()
        .collect()
    );

    // The November invoice, by hand (plan `pro`; rounding: each charge once, half up):
    //   digits: 3 billable requests - 1 included = 2 x 1,000          =  2,000
    //           33 inferences x 2,500 / 1,000 = 82.5                  ->    83
    //           1,501,234 us x 30,000 / 1,000,000 = 45,037.02         -> 45,037
    //   dense (the `*` row): 1 billable request x 500                 =    500
    //           250,000 us x 7 / 1,000,000 = 1.75                     ->     2
    //   total                                                          = 47,622 micro-USD
    // The 500 answer and the October event are not on it.
    let a = admin
        .get(
            &format!("/admin/v1/tenants/{}/invoices/2026-11", f.acme),
            &f.acme_admin,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let inv = a.json();
    assert_eq!(inv["tenant"], "acme");
    assert_eq!(inv["plan"], "pro");
    assert_eq!(inv["period"], "2026-11");
    let lines = inv["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["usage"]["model"], "dense");
    assert_eq!(lines[0]["amount_micro_usd"], 502);
    assert_eq!(lines[1]["usage"]["model"], "digits");
    assert_eq!(lines[1]["usage"]["requests"], 3);
    assert_eq!(lines[1]["requests_micro_usd"], 2_000);
    assert_eq!(lines[1]["inferences_micro_usd"], 83);
    assert_eq!(lines[1]["compute_micro_usd"], 45_037);
    assert_eq!(lines[1]["amount_micro_usd"], 47_120);
    assert_eq!(inv["total_micro_usd"], 47_622);
    // October: the one request is the included one; 1 inference x 2,500 / 1,000 = 2.5 -> 3.
    let a = admin
        .get(
            &format!("/admin/v1/tenants/{}/invoices/2026-10", f.acme),
            TOKEN,
        )
        .await;
    assert_eq!(a.json()["total_micro_usd"], 3);

    // CSV export: a header row, then one line per acme event of the range.
    let export = format!("/admin/v1/tenants/{}/usage/export?{utc_range}", f.acme);
    let a = admin
        .get(&format!("{export}&format=csv"), &f.acme_admin)
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(a.header("content-type").starts_with("text/csv"));
    assert!(a.header("content-disposition").contains(".csv\""));
    let text = a.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + 5, "{text}");
    assert_eq!(lines[0], CSV_HEADER.join(","));
    let ids: BTreeSet<String> = lines[1..]
        .iter()
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect();
    assert_eq!(ids, f.acme_ids);
    // CSV is also the default format.
    assert_eq!(admin.get(&export, TOKEN).await.text(), text);

    // JSON lines: each line parses on its own.
    let a = admin.get(&format!("{export}&format=jsonl"), TOKEN).await;
    assert_eq!(a.header("content-type"), "application/x-ndjson");
    let events: Vec<Value> = a
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(events.len(), 5);
    assert_eq!(
        events
            .iter()
            .map(|e| e["request_id"].as_str().unwrap().to_string())
            .collect::<BTreeSet<_>>(),
        f.acme_ids
    );
    assert_eq!(
        events
            .iter()
            .map(|e| e["inference_count"].as_i64().unwrap())
            .sum::<i64>(),
        10 + 20 + 5 + 4 + 3
    );
    assert!(events.iter().all(|e| e["tenant_id"] == f.acme.to_string()));

    // CloudEvents: the request id is the event id.
    let a = admin
        .get(&format!("{export}&format=cloudevents"), TOKEN)
        .await;
    let ces: Vec<Value> = a
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ces.len(), 5);
    for ce in &ces {
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["subject"], f.acme.to_string());
        assert_eq!(ce["id"], ce["data"]["request_id"]);
    }
    // An empty range: the header row only.
    let a = admin
        .get(
            &format!(
                "/admin/v1/tenants/{}/usage/export?from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z",
                f.acme
            ),
            TOKEN,
        )
        .await;
    assert_eq!(a.text(), format!("{}\n", CSV_HEADER.join(",")));

    // Every bad parameter is a 400 that names it.
    for (query, name) in [
        (format!("{utc_range}&granularity=week"), "granularity"),
        (format!("{utc_range}&tz=Mars/Olympus"), "tz"),
        (format!("{utc_range}&tz=Europe%2FParis%27"), "tz"),
        (format!("{utc_range}&group_by=region"), "group_by"),
        ("from=yesterday&to=2026-11-11T00:00:00Z".to_string(), "from"),
        ("from=2026-11-09T00:00:00Z".to_string(), "to"),
        (
            "from=2026-11-11T00:00:00Z&to=2026-11-09T00:00:00Z".to_string(),
            "from must be before to",
        ),
        (format!("{utc_range}&colour=blue"), "colour"),
    ] {
        let e = admin
            .get(&format!("{usage}?{query}"), &f.acme_admin)
            .await
            .error(400);
        assert!(e.contains(name), "{query}: {e}");
    }
    let e = admin
        .get(&format!("{export}&format=xml"), TOKEN)
        .await
        .error(400);
    assert!(e.starts_with("format `xml`"), "{e}");
    let e = admin
        .get(
            &format!("/admin/v1/tenants/{}/invoices/2026-13", f.acme),
            TOKEN,
        )
        .await
        .error(400);
    assert!(e.starts_with("period `2026-13`"), "{e}");
    let e = admin
        .get(&format!("/admin/v1/tenants/acme/usage?{utc_range}"), TOKEN)
        .await
        .error(400);
    assert!(e.starts_with("tenant_id"), "{e}");
    let e = admin
        .get(
            &format!("/admin/v1/tenants/{}/usage?{utc_range}", Uuid::now_v7()),
            TOKEN,
        )
        .await
        .error(404);
    assert!(e.starts_with("no tenant"), "{e}");
    // globex's admin sees globex's event and nothing of acme's.
    let a = admin
        .get(
            &format!("/admin/v1/tenants/{}/usage?{utc_range}", f.globex),
            &f.globex_admin,
        )
        .await;
    assert_eq!(
        rows(&a.json()),
        vec![row(
            "2026-11-10T00:00:00",
            None,
            None,
            [1, 1, 0, 1000, 1000]
        )]
    );

    drop(gw);
    drop_database(pool).await;
}

#[tokio::test]
async fn tenant_admins_see_only_their_own_tenant() {
    let (pool, gw, admin, f) = setup().await;
    let range = "from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z";
    let own = [
        format!("/admin/v1/tenants/{}/usage?{range}", f.acme),
        format!("/admin/v1/tenants/{}/invoices/2026-11", f.acme),
        format!("/admin/v1/tenants/{}/usage/export?{range}", f.acme),
    ];
    let other: Vec<String> = own
        .iter()
        .map(|p| p.replace(&f.acme.to_string(), &f.globex.to_string()))
        .collect();

    // The token is shown once; listings show its prefix only.
    assert!(f.acme_admin.starts_with("maas_ta_") && f.acme_admin.len() == 56);
    let a = admin
        .get(&format!("/admin/v1/tenants/{}/admins", f.acme), TOKEN)
        .await;
    let listed = a.json();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["prefix"], &f.acme_admin[..15]);
    assert_eq!(listed[0]["name"], "alice@acme.example");
    assert!(listed[0]["revoked_at"].is_null());
    assert!(listed[0].get("token").is_none() && listed[0].get("token_sha256").is_none());
    assert!(!a.text().contains(&f.acme_admin[15..]));

    // acme's admin: 200 for acme, 403 for globex (and for a tenant that does not exist).
    for path in &own {
        let a = admin.get(path, &f.acme_admin).await;
        assert_eq!(a.status, 200, "{path}: {}", a.text());
    }
    for path in &other {
        let e = admin.get(path, &f.acme_admin).await.error(403);
        assert!(e.contains("its own tenant"), "{e}");
    }
    let e = admin
        .get(
            &format!("/admin/v1/tenants/{}/usage?{range}", Uuid::now_v7()),
            &f.acme_admin,
        )
        .await
        .error(403);
    assert!(e.contains("its own tenant"), "{e}");
    // ... and 403 on every operator-only route.
    for (method, path) in [
        (Method::GET, "/admin/v1/tenants".to_string()),
        (Method::GET, "/admin/v1/plans".to_string()),
        (Method::PUT, format!("/admin/v1/tenants/{}/limits", f.acme)),
        (Method::PUT, format!("/admin/v1/tenants/{}/plan", f.acme)),
        (Method::GET, format!("/admin/v1/tenants/{}/admins", f.acme)),
        (Method::POST, format!("/admin/v1/tenants/{}/admins", f.acme)),
        (
            Method::POST,
            format!("/admin/v1/tenants/{}/suspend", f.acme),
        ),
    ] {
        let a = admin
            .send(
                method,
                &path,
                Some(&f.acme_admin),
                Some(json!({"name": "x"})),
            )
            .await;
        assert!(a.error(403).contains("operator token"), "{path}");
    }
    // globex's admin: the other way round.
    assert_eq!(admin.get(&other[0], &f.globex_admin).await.status, 200);
    assert_eq!(admin.get(&own[0], &f.globex_admin).await.status, 403);

    // Missing, unknown or malformed tokens are 401 with a challenge; so is an API key.
    let api_key = admin
        .post_ok(
            &format!("/admin/v1/tenants/{}/keys", f.globex),
            json!({"name": "live"}),
            201,
        )
        .await["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let unknown = format!("maas_ta_{}", "0".repeat(48));
    for token in [
        None,
        Some(unknown.as_str()),
        Some("maas_ta_zz"),
        Some(api_key.as_str()),
    ] {
        let a = admin.send(Method::GET, &own[0], token, None).await;
        a.error(401);
        assert!(a.header("www-authenticate").starts_with("Bearer"));
    }

    // A live request on the data path shows in globex's usage, seen by globex's admin.
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v2/models/digits/infer", gw.listen))
        .bearer_auth(&api_key)
        .header("content-type", "application/json")
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let now = Utc::now();
    let live = format!(
        "/admin/v1/tenants/{}/usage?from={}&to={}&granularity=hour&group_by=model",
        f.globex,
        (now - chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ"),
        (now + chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = rows(&admin.get(&live, &f.globex_admin).await.json());
        if !r.is_empty() {
            assert_eq!(r.len(), 1, "{r:?}");
            let (_, model, _, requests, billable, errors, inferences, compute) = r[0].clone();
            assert_eq!(model.as_deref(), Some("digits"));
            assert_eq!(
                (requests, billable, errors, inferences, compute),
                (1, 1, 0, INFERENCE_COUNT, COMPUTE_US)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the request never reached the usage report"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Revoked: 401 from the next request on; the listing says when.
    let revoked = admin
        .post_ok(
            &format!("/admin/v1/tenant-admins/{}/revoke", f.acme_admin_id),
            json!({}),
            200,
        )
        .await;
    assert!(revoked["revoked_at"].is_string());
    for path in &own {
        admin.get(path, &f.acme_admin).await.error(401);
    }
    let again = admin
        .post_ok(
            &format!("/admin/v1/tenant-admins/{}/revoke", f.acme_admin_id),
            json!({}),
            200,
        )
        .await;
    assert_eq!(again["revoked_at"], revoked["revoked_at"], "idempotent");
    assert_eq!(admin.get(&other[0], &f.globex_admin).await.status, 200);

    // Creation is checked: a name, an existing tenant, a UUID.
    let a = admin
        .send(
            Method::POST,
            &format!("/admin/v1/tenants/{}/admins", f.acme),
            Some(TOKEN),
            Some(json!({"name": ""})),
        )
        .await;
    assert!(a.error(400).starts_with("name"));
    let a = admin
        .send(
            Method::POST,
            &format!("/admin/v1/tenants/{}/admins", Uuid::now_v7()),
            Some(TOKEN),
            Some(json!({"name": "x"})),
        )
        .await;
    a.error(404);
    let a = admin
        .send(
            Method::POST,
            "/admin/v1/tenant-admins/nope/revoke",
            Some(TOKEN),
            None,
        )
        .await;
    assert!(a.error(400).starts_with("admin_id"));

    // The OpenAPI document (whose route list tests/admin.rs checks) has both bearer schemes
    // and the report's parameters.
    let doc = admin
        .send(Method::GET, "/admin/v1/openapi.json", None, None)
        .await
        .json();
    let schemes = &doc["components"]["securitySchemes"];
    assert!(schemes["operator_token"].is_object() && schemes["tenant_admin_token"].is_object());
    let params = doc["paths"]["/admin/v1/tenants/{tenant_id}/usage"]["get"]["parameters"]
        .as_array()
        .unwrap();
    for name in ["tenant_id", "from", "to", "granularity", "group_by", "tz"] {
        assert!(params.iter().any(|p| p["name"] == name), "{name}");
    }

    drop(gw);
    drop_database(pool).await;
}
