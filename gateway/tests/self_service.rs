//! Tenant self-service and the operator's plans API, with a real PostgreSQL and the
//! `maas-gateway` binary: a tenant admin lists, creates, revokes and rotates its own keys (a new
//! key works on the data path, a revoked one is 401), sets key limits within the tenant's, reads
//! its limits and account (this month's usage, spend, quota and budget from a known fixture);
//! another tenant's keys and tenants, existing or not, are 403. A rotated key keeps its own
//! limits. The operator lists, reads and prices plans, puts a tenant on one, and finds a tenant
//! by name.
//!
//! Needs `DATABASE_URL` (a role allowed to CREATE DATABASE; `make test` provides one).

use std::time::{Duration, Instant};

use chrono::{Datelike, TimeZone, Utc};
use maas_billing::{insert_usage_events, UsageEvent};
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

mod common;

use common::*;

const TOKEN: &str = "test-operator-token-self-service-0123";

struct Admin {
    client: reqwest::Client,
    base: String,
}

impl Admin {
    /// `method path` with `token` and `body`; (status, JSON body).
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let a = admin_request(&self.client, &self.base, method, path, Some(token), body).await;
        (a.status, a.json())
    }

    async fn ok(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
        want: u16,
    ) -> Value {
        let (status, v) = self.call(method.clone(), path, token, body).await;
        assert_eq!(status, want, "{method} {path}: {v}");
        v
    }
}

impl Admin {
    /// POST `body` to `path` as the operator, expecting 201; the string `field` of the answer.
    async fn create(&self, path: &str, body: Value, field: &str) -> String {
        let v = self.ok(Method::POST, path, TOKEN, Some(body), 201).await;
        v[field].as_str().expect("a string field").to_string()
    }
}

/// A fresh database and a gateway with the admin API on.
async fn setup() -> (sqlx::PgPool, RunningGateway, Admin) {
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
    (pool, gw, admin)
}

async fn infer(gw: std::net::SocketAddr, key: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("http://{gw}/v2/models/dense/infer"))
        .header("content-type", "application/json")
        .bearer_auth(key)
        .body(BODY)
        .send()
        .await
        .expect("request to the gateway")
        .status()
        .as_u16()
}

/// Poll the data path until `key` gets `want` (the key cache expires in 200 ms).
async fn wait_for(gw: std::net::SocketAddr, key: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = infer(gw, key).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "still {got}, expected {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn key_rule(rate: i64, concurrency: i64) -> Value {
    json!({"level": "key", "rate": rate, "period_s": 1, "concurrency": concurrency})
}

#[tokio::test]
async fn tenant_admins_serve_themselves_within_their_tenant() {
    let (pool, gw, admin) = setup().await;
    let acme = admin
        .create("/admin/v1/tenants", json!({"name": "acme"}), "id")
        .await;
    let globex = admin
        .create("/admin/v1/tenants", json!({"name": "globex"}), "id")
        .await;
    let ta = admin
        .create(
            &format!("/admin/v1/tenants/{acme}/admins"),
            json!({"name": "alice"}),
            "token",
        )
        .await;
    let globex_key = admin
        .create(
            &format!("/admin/v1/tenants/{globex}/keys"),
            json!({"name": "g"}),
            "id",
        )
        .await;

    // The tenant's own limits: a tenant counter of 10/s, concurrency 4.
    admin
        .ok(
            Method::PUT,
            &format!("/admin/v1/tenants/{acme}/limits"),
            TOKEN,
            Some(
                json!({"rules": [{"level": "tenant", "rate": 10, "concurrency": 4,
                                   "monthly_inference_quota": 1000,
                                   "monthly_budget_micro_usd": 5000000}]}),
            ),
            200,
        )
        .await;

    // Create a key as the tenant admin: the secret once, and it works on the data path.
    let keys = format!("/admin/v1/tenants/{acme}/keys");
    let created = admin
        .ok(
            Method::POST,
            &keys,
            &ta,
            Some(json!({"name": "ci", "allowed_models": ["dense"]})),
            201,
        )
        .await;
    let secret = created["secret"].as_str().unwrap().to_string();
    let key_id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["tenant_id"], acme.as_str());
    assert_eq!(infer(gw.listen, &secret).await, 200);
    let listed = admin.ok(Method::GET, &keys, &ta, None, 200).await;
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], key_id.as_str());
    assert_eq!(listed[0]["name"], "ci");
    assert_eq!(listed[0]["prefix"], &secret[..12]);
    assert_eq!(listed[0]["allowed_models"], json!(["dense"]));
    assert_eq!(listed[0]["limits"], json!([]));
    assert!(listed[0].get("secret").is_none());
    assert!(listed[0].get("last_used_at").is_some());

    // Key limits: within the tenant's is stored; above it is 400 naming the field.
    let key_limits = format!("/admin/v1/keys/{key_id}/limits");
    let (status, e) = admin
        .call(
            Method::PUT,
            &key_limits,
            &ta,
            Some(json!({"rules": [key_rule(11, 2)]})),
        )
        .await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(
        e["error"],
        "rules[0]: rate 11 per 1 s exceeds the tenant's own limit of 10 per 1 s; a tenant \
         admin may only set key limits within the tenant's"
    );
    let (status, e) = admin
        .call(
            Method::PUT,
            &key_limits,
            &ta,
            Some(json!({"rules": [key_rule(5, 5)]})),
        )
        .await;
    assert_eq!(status, 400, "{e}");
    assert!(e["error"]
        .as_str()
        .unwrap()
        .starts_with("rules[0]: concurrency 5 exceeds"));
    let stored = admin
        .ok(
            Method::PUT,
            &key_limits,
            &ta,
            Some(json!({"rules": [key_rule(5, 2)]})),
            200,
        )
        .await;
    assert_eq!(stored["rules"][0]["rate"], 5);
    assert_eq!(stored["rules"][0]["concurrency"], 2);
    assert_eq!(
        admin.ok(Method::GET, &key_limits, &ta, None, 200).await,
        stored
    );
    // The operator is not bounded by the tenant's limits.
    admin
        .ok(
            Method::PUT,
            &key_limits,
            TOKEN,
            Some(json!({"rules": [key_rule(50, 2)]})),
            200,
        )
        .await;
    admin
        .ok(
            Method::PUT,
            &key_limits,
            &ta,
            Some(json!({"rules": [key_rule(5, 2)]})),
            200,
        )
        .await;
    // The tenant's limits: readable, not writable, by its admin.
    let tl = admin
        .ok(
            Method::GET,
            &format!("/admin/v1/tenants/{acme}/limits"),
            &ta,
            None,
            200,
        )
        .await;
    assert_eq!(tl["rules"][0]["rate"], 10);
    let (status, e) = admin
        .call(
            Method::PUT,
            &format!("/admin/v1/tenants/{acme}/limits"),
            &ta,
            Some(json!({"rules": []})),
        )
        .await;
    assert_eq!(status, 403, "{e}");

    // Rotate (as the tenant admin): a new secret, the same name and models, and the same
    // limits; the old secret is 401 on the data path, the new one 200.
    let rotated = admin
        .ok(
            Method::POST,
            &format!("/admin/v1/keys/{key_id}/rotate"),
            &ta,
            None,
            201,
        )
        .await;
    let new_id = rotated["id"].as_str().unwrap().to_string();
    let new_secret = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(new_id, key_id);
    assert_eq!(rotated["name"], "ci");
    assert_eq!(rotated["allowed_models"], json!(["dense"]));
    let kept = admin
        .ok(
            Method::GET,
            &format!("/admin/v1/keys/{new_id}/limits"),
            &ta,
            None,
            200,
        )
        .await;
    assert_eq!(kept, stored, "a rotated key keeps its own limits");
    let listed = admin.ok(Method::GET, &keys, &ta, None, 200).await;
    assert_eq!(listed[1]["id"], new_id.as_str());
    assert_eq!(listed[1]["limits"], stored["rules"]);
    assert!(listed[0]["revoked_at"].is_string());
    wait_for(gw.listen, &secret, 401).await;
    wait_for(gw.listen, &new_secret, 200).await;
    // The operator's rotation keeps them too.
    let again = admin
        .ok(
            Method::POST,
            &format!("/admin/v1/keys/{new_id}/rotate"),
            TOKEN,
            None,
            201,
        )
        .await;
    let third = again["id"].as_str().unwrap();
    assert_eq!(
        admin
            .ok(
                Method::GET,
                &format!("/admin/v1/keys/{third}/limits"),
                TOKEN,
                None,
                200
            )
            .await,
        stored
    );
    // Revoke as the tenant admin: 401 on the data path.
    let third_secret = again["secret"].as_str().unwrap().to_string();
    // (Polled: the tenant's 10/s may still be spent by the polling above.)
    wait_for(gw.listen, &third_secret, 200).await;
    let revoked = admin
        .ok(
            Method::POST,
            &format!("/admin/v1/keys/{third}/revoke"),
            &ta,
            None,
            200,
        )
        .await;
    assert!(revoked["revoked_at"].is_string());
    wait_for(gw.listen, &third_secret, 401).await;

    // Another tenant, or one that does not exist, or another tenant's key, or no key at all:
    // 403 for the tenant admin, whatever the route.
    let nobody = Uuid::now_v7();
    let missing_key = Uuid::now_v7();
    for (method, path) in [
        (Method::GET, format!("/admin/v1/tenants/{globex}/keys")),
        (Method::POST, format!("/admin/v1/tenants/{globex}/keys")),
        (Method::GET, format!("/admin/v1/tenants/{nobody}/keys")),
        (Method::GET, format!("/admin/v1/tenants/{globex}/limits")),
        (Method::GET, format!("/admin/v1/tenants/{globex}/account")),
        (Method::GET, format!("/admin/v1/tenants/{nobody}/account")),
        (Method::POST, format!("/admin/v1/keys/{globex_key}/revoke")),
        (Method::POST, format!("/admin/v1/keys/{globex_key}/rotate")),
        (Method::GET, format!("/admin/v1/keys/{globex_key}/limits")),
        (Method::PUT, format!("/admin/v1/keys/{globex_key}/limits")),
        (Method::POST, format!("/admin/v1/keys/{missing_key}/revoke")),
    ] {
        let (status, e) = admin
            .call(
                method.clone(),
                &path,
                &ta,
                Some(json!({"name": "x", "rules": []})),
            )
            .await;
        assert_eq!(status, 403, "{method} {path}: {e}");
        assert!(
            e["error"].as_str().unwrap().contains("its own tenant"),
            "{e}"
        );
    }
    // The operator gets 404 for a key that does not exist; globex's key is untouched.
    let (status, _) = admin
        .call(
            Method::POST,
            &format!("/admin/v1/keys/{missing_key}/revoke"),
            TOKEN,
            None,
        )
        .await;
    assert_eq!(status, 404);
    let g = admin
        .ok(
            Method::GET,
            &format!("/admin/v1/tenants/{globex}/keys"),
            TOKEN,
            None,
            200,
        )
        .await;
    assert!(g[0]["revoked_at"].is_null());

    drop(gw);
    drop_database(pool).await;
}

fn event(
    tenant: Uuid,
    model: &str,
    at: chrono::DateTime<Utc>,
    status: i16,
    rows: i64,
    us: i64,
) -> UsageEvent {
    UsageEvent {
        request_id: Uuid::now_v7(),
        started_at: at,
        tenant_id: Some(tenant),
        api_key_id: None,
        model: Some(model.into()),
        model_version: Some("1".into()),
        http_status: status,
        inference_count: rows,
        compute_us: us,
        request_bytes: 100,
        response_bytes: 50,
        latency_us: 900,
        call: maas_billing::CallKind::Inference,
    }
}

#[tokio::test]
async fn operators_manage_plans_and_tenants_read_their_account() {
    let (pool, gw, admin) = setup().await;

    // Plans and prices.
    let plans = admin
        .ok(Method::GET, "/admin/v1/plans", TOKEN, None, 200)
        .await;
    assert_eq!(plans[0]["name"], "default");
    assert_eq!(plans[0]["prices"][0]["model"], "*");
    let pro = admin
        .ok(
            Method::PUT,
            "/admin/v1/plans/pro/prices/digits",
            TOKEN,
            Some(
                json!({"per_request_micro_usd": 100, "per_1k_inferences_micro_usd": 2000,
                        "included_requests": 1}),
            ),
            200,
        )
        .await;
    assert_eq!(pro["name"], "pro");
    assert_eq!(pro["prices"][0]["model"], "digits");
    assert_eq!(pro["prices"][0]["per_request_micro_usd"], 100);
    assert_eq!(pro["prices"][0]["per_compute_second_micro_usd"], 0);
    admin
        .ok(
            Method::PUT,
            "/admin/v1/plans/pro/prices/*",
            TOKEN,
            Some(json!({"per_compute_second_micro_usd": 1000000})),
            200,
        )
        .await;
    let pro = admin
        .ok(Method::GET, "/admin/v1/plans/pro", TOKEN, None, 200)
        .await;
    let models: Vec<&str> = pro["prices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["model"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["*", "digits"]);
    let (status, e) = admin
        .call(
            Method::PUT,
            "/admin/v1/plans/pro/prices/digits",
            TOKEN,
            Some(json!({"per_request_micro_usd": -1})),
        )
        .await;
    assert_eq!(status, 400, "{e}");
    let (status, e) = admin
        .call(
            Method::PUT,
            "/admin/v1/plans/pro/prices/digits",
            TOKEN,
            Some(json!({"per_request": 1})),
        )
        .await;
    assert_eq!(status, 400, "{e}");
    let (status, _) = admin
        .call(Method::GET, "/admin/v1/plans/nope", TOKEN, None)
        .await;
    assert_eq!(status, 404);

    // A tenant, found by name, put on the plan.
    let acme = admin
        .ok(
            Method::POST,
            "/admin/v1/tenants",
            TOKEN,
            Some(json!({"name": "acme corp"})),
            201,
        )
        .await;
    let id = acme["id"].as_str().unwrap().to_string();
    let found = admin
        .ok(
            Method::GET,
            "/admin/v1/tenants/by-name/acme%20corp",
            TOKEN,
            None,
            200,
        )
        .await;
    assert_eq!(found, acme);
    let (status, e) = admin
        .call(Method::GET, "/admin/v1/tenants/by-name/nobody", TOKEN, None)
        .await;
    assert_eq!(
        (status, e["error"].as_str().unwrap()),
        (404, "no tenant named 'nobody'")
    );
    let (status, e) = admin
        .call(
            Method::PUT,
            &format!("/admin/v1/tenants/{id}/plan"),
            TOKEN,
            Some(json!({"plan": "gold"})),
        )
        .await;
    assert_eq!(status, 409, "{e}");
    let on_pro = admin
        .ok(
            Method::PUT,
            &format!("/admin/v1/tenants/{id}/plan"),
            TOKEN,
            Some(json!({"plan": "pro"})),
            200,
        )
        .await;
    assert_eq!(on_pro["plan"], "pro");
    admin
        .ok(
            Method::PUT,
            "/admin/v1/plans/pro/limits",
            TOKEN,
            Some(
                json!({"rules": [{"level": "tenant", "monthly_inference_quota": 100,
                                   "monthly_budget_micro_usd": 10000}]}),
            ),
            200,
        )
        .await;

    // This month's usage: digits 3 x 2xx (10 rows each) + 1 x 500; dense 1 x 2xx with 2 s of
    // compute. Last month's event does not count.
    let tenant: Uuid = id.parse().unwrap();
    let now = Utc::now();
    let month = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .unwrap();
    let t = month + chrono::Duration::minutes(30);
    let events = vec![
        event(tenant, "digits", t, 200, 10, 1000),
        event(tenant, "digits", t, 200, 10, 1000),
        event(tenant, "digits", t, 200, 10, 1000),
        event(tenant, "digits", t, 500, 0, 0),
        event(tenant, "dense", t, 200, 1, 2_000_000),
        event(
            tenant,
            "dense",
            month - chrono::Duration::hours(1),
            200,
            99,
            99,
        ),
    ];
    insert_usage_events(&pool, &events).await.unwrap();
    let ta = admin
        .create(
            &format!("/admin/v1/tenants/{id}/admins"),
            json!({"name": "a"}),
            "token",
        )
        .await;
    let a = admin
        .ok(
            Method::GET,
            &format!("/admin/v1/tenants/{id}/account"),
            &ta,
            None,
            200,
        )
        .await;
    assert_eq!(a["tenant"]["plan"], "pro");
    assert_eq!(a["period"], month.format("%Y-%m").to_string());
    let next = if now.month() == 12 {
        Utc.with_ymd_and_hms(now.year() + 1, 1, 1, 0, 0, 0).unwrap()
    } else {
        Utc.with_ymd_and_hms(now.year(), now.month() + 1, 1, 0, 0, 0)
            .unwrap()
    };
    assert_eq!(
        a["resets_at"]
            .as_str()
            .unwrap()
            .parse::<chrono::DateTime<Utc>>()
            .unwrap(),
        next
    );
    assert_eq!(a["usage"]["requests"], 5);
    assert_eq!(a["usage"]["billable_requests"], 4);
    assert_eq!(a["usage"]["error_requests"], 1);
    assert_eq!(a["usage"]["inference_count"], 31);
    assert_eq!(a["usage"]["compute_us"], 2_003_000);
    // List price: digits 3 x 100 + 30 rows x 2 = 360; dense ('*'): 2 s x 1 USD = 2,000,000.
    assert_eq!(a["spend_micro_usd"], 2_000_360);
    // Invoice: digits' first request is included: 2 x 100 + 60 = 260; dense 2,000,000.
    assert_eq!(a["invoice_micro_usd"], 2_000_260);
    assert_eq!(
        a["inference_quota"],
        json!({"limit": 100, "used": 31, "remaining": 69})
    );
    assert_eq!(
        a["budget"],
        json!({"limit": 10000, "used": 2_000_360, "remaining": 0})
    );
    // The operator's ranking prices the same usage the same way.
    let ranking = maas_billing::ranking::spend_ranking(&pool, month, next)
        .await
        .unwrap();
    assert_eq!(ranking.len(), 1);
    assert_eq!(
        (
            ranking[0].name.as_str(),
            ranking[0].requests,
            ranking[0].billable_requests
        ),
        ("acme corp", 5, 4)
    );
    assert_eq!(ranking[0].spend_micro_usd, 2_000_360);
    assert_eq!(a["rules"][0]["source"], "plan");
    assert_eq!(a["rules"][0]["in_force"], true);
    assert_eq!(a["prices"].as_array().unwrap().len(), 2);
    // Operator-only routes stay closed to the tenant admin.
    for (method, path) in [
        (Method::GET, "/admin/v1/plans".to_string()),
        (Method::GET, "/admin/v1/plans/pro".to_string()),
        (Method::PUT, "/admin/v1/plans/pro/prices/x".to_string()),
        (Method::GET, "/admin/v1/tenants/by-name/acme".to_string()),
        (Method::PUT, format!("/admin/v1/tenants/{id}/plan")),
    ] {
        let (status, e) = admin.call(method, &path, &ta, Some(json!({}))).await;
        assert_eq!(status, 403, "{path}: {e}");
    }

    drop(gw);
    drop_database(pool).await;
}
