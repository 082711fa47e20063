//! End-to-end test of the admin API (tenants, keys) with a real PostgreSQL, a fake OIP backend
//! and the `maas-gateway` binary: keys created over the admin API work on the data path, and a
//! revocation or a suspension is refused there once the key cache expires.
//!
//! Needs `DATABASE_URL` (a role allowed to CREATE DATABASE; `make test` provides one).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use uuid::Uuid;

mod common;

use common::*;

const TOKEN: &str = "test-operator-token-0123456789";
const CACHE_TTL_MS: u64 = 200;

/// Start the gateway with the admin API (when `token` is set); its process, data-path and admin
/// addresses.
fn start(
    db_url: &str,
    backend: SocketAddr,
    token: Option<&str>,
) -> (RunningGateway, SocketAddr, SocketAddr) {
    let mut env = vec![("MAAS_GATEWAY_AUTH__CACHE_TTL_MS", CACHE_TTL_MS.to_string())];
    if let Some(t) = token {
        env.push(("MAAS_GATEWAY_ADMIN__OPERATOR_TOKEN", t.to_string()));
    }
    let gw = start_gateway(db_url, &[backend], &env);
    let (listen, admin) = (gw.listen, gw.admin);
    (gw, listen, admin)
}

struct Admin {
    client: reqwest::Client,
    base: String,
}

impl Admin {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let answer = admin_request(&self.client, &self.base, method, path, token, body).await;
        (answer.status, answer.json())
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body), Some(TOKEN))
            .await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None, Some(TOKEN))
            .await
    }
}

/// POST an infer request with `key` to the data path; returns the status.
async fn infer(client: &reqwest::Client, gw: SocketAddr, key: &str) -> u16 {
    client
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

/// Poll the data path until `key` gets `want` (the key cache must expire first).
async fn wait_for_status(client: &reqwest::Client, gw: SocketAddr, key: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_millis(CACHE_TTL_MS * 10 + 2000);
    loop {
        let got = infer(client, gw, key).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "still {got}, expected {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn admin_api_manages_tenants_and_keys_seen_by_the_data_path() {
    let (pool, db_url) = fresh_database().await;
    let backend = start_backend().await;
    let (gw_process, gw, admin_addr) = start(&db_url, backend, Some(TOKEN));
    let client = reqwest::Client::new();
    let admin = Admin {
        client: client.clone(),
        base: format!("http://{admin_addr}"),
    };

    // Operator token: missing, wrong or of another scheme is 401 JSON with WWW-Authenticate.
    for token in [None, Some("wrong"), Some("test-operator-token-012345678")] {
        let (status, body) = admin
            .send(reqwest::Method::GET, "/admin/v1/tenants", None, token)
            .await;
        assert_eq!(status, 401, "{body}");
        assert!(body["error"].is_string());
    }
    let resp = client
        .get(format!("http://{admin_addr}/admin/v1/tenants"))
        .header("authorization", format!("Basic {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert!(resp.headers().contains_key("www-authenticate"));

    // Tenants.
    let (status, tenant) = admin
        .post("/admin/v1/tenants", json!({"name": "acme"}))
        .await;
    assert_eq!(status, 201, "{tenant}");
    assert_eq!(tenant["status"], "active");
    assert_eq!(tenant["plan"], "default");
    let tenant_id = tenant["id"].as_str().unwrap().to_string();
    let (status, body) = admin
        .post("/admin/v1/tenants", json!({"name": "acme"}))
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = admin.post("/admin/v1/tenants", json!({"nom": "x"})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].is_string());
    let (status, body) = admin.post("/admin/v1/tenants", json!({"name": ""})).await;
    assert_eq!(status, 400, "{body}");
    // Text PostgreSQL cannot store (NUL) or that reads wrong in a listing is the client's
    // mistake, whichever field carries it: 400, never 500.
    for bad in ["a\u{0}b", "two\nlines"] {
        let (status, body) = admin.post("/admin/v1/tenants", json!({"name": bad})).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"], "name must not contain control characters");
    }
    let (status, list) = admin.get("/admin/v1/tenants").await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "acme");

    // Keys: the secret comes back once; listings show the prefix, never the secret or hash.
    let keys_path = format!("/admin/v1/tenants/{tenant_id}/keys");
    let (status, created) = admin.post(&keys_path, json!({"name": "ci"})).await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().unwrap().to_string();
    assert!(
        secret.starts_with("maas_") && secret.len() == 53,
        "{secret}"
    );
    assert_eq!(created["prefix"].as_str().unwrap(), &secret[..12]);
    let key_id = created["id"].as_str().unwrap().to_string();
    let (status, keys) = admin.get(&keys_path).await;
    assert_eq!(status, 200);
    assert_eq!(keys.as_array().unwrap().len(), 1);
    let listed = keys[0].to_string();
    assert!(!listed.contains(&secret[12..]), "{listed}");
    assert!(keys[0].get("secret").is_none() && keys[0].get("secret_sha256").is_none());
    assert!(!listed.contains(&maas_gateway::hash_key(&secret)));
    let (status, _) = admin
        .post("/admin/v1/tenants/not-a-uuid/keys", json!({"name": "x"}))
        .await;
    assert_eq!(status, 400);
    let (status, _) = admin
        .post(
            &format!("/admin/v1/tenants/{}/keys", Uuid::now_v7()),
            json!({"name": "x"}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = admin
        .post(&keys_path, json!({"name": "x", "allowed_models": []}))
        .await;
    assert_eq!(status, 400);
    let (status, body) = admin.post(&keys_path, json!({"name": "k\u{0}"})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "name must not contain control characters");
    let (status, body) = admin
        .post(
            &keys_path,
            json!({"name": "x", "allowed_models": ["m\u{0}"]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"],
        "each allowed model must not contain control characters"
    );

    // The key works on the data path; two different credentials in one request are refused.
    assert_eq!(infer(&client, gw, &secret).await, 200);
    let both = client
        .post(format!("http://{gw}/v2/models/dense/infer"))
        .header("content-type", "application/json")
        .bearer_auth(&secret)
        .header("x-api-key", "maas_other")
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(both.status().as_u16(), 400);

    // Rotate: a new secret works, the old one is refused after the cache TTL.
    let (status, rotated) = admin
        .post(&format!("/admin/v1/keys/{key_id}/rotate"), json!({}))
        .await;
    assert_eq!(status, 201, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(new_secret, secret);
    assert_eq!(rotated["name"], "ci");
    let new_key_id = rotated["id"].as_str().unwrap().to_string();
    assert_eq!(infer(&client, gw, &new_secret).await, 200);
    wait_for_status(&client, gw, &secret, 401).await;
    let (status, _) = admin
        .post(&format!("/admin/v1/keys/{key_id}/rotate"), json!({}))
        .await;
    assert_eq!(status, 409);

    // Revoke: refused after the cache TTL; revoking again is idempotent.
    let (status, revoked) = admin
        .post(&format!("/admin/v1/keys/{new_key_id}/revoke"), json!({}))
        .await;
    assert_eq!(status, 200, "{revoked}");
    assert!(revoked["revoked_at"].is_string());
    wait_for_status(&client, gw, &new_secret, 401).await;
    let (status, again) = admin
        .post(&format!("/admin/v1/keys/{new_key_id}/revoke"), json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(again["revoked_at"], revoked["revoked_at"]);
    let (status, _) = admin
        .post(
            &format!("/admin/v1/keys/{}/revoke", Uuid::now_v7()),
            json!({}),
        )
        .await;
    assert_eq!(status, 404);

    // Suspend: a live key of the tenant gets 403; reactivate: 200 again.
    let (_, live) = admin.post(&keys_path, json!({"name": "live"})).await;
    let live = live["secret"].as_str().unwrap().to_string();
    assert_eq!(infer(&client, gw, &live).await, 200);
    let (status, t) = admin
        .post(&format!("/admin/v1/tenants/{tenant_id}/suspend"), json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(t["status"], "suspended");
    wait_for_status(&client, gw, &live, 403).await;
    let (status, t) = admin
        .post(
            &format!("/admin/v1/tenants/{tenant_id}/reactivate"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(t["status"], "active");
    wait_for_status(&client, gw, &live, 200).await;
    let (status, _) = admin
        .post(
            &format!("/admin/v1/tenants/{}/suspend", Uuid::now_v7()),
            json!({}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, keys) = admin.get(&keys_path).await;
    assert_eq!(status, 200);
    assert_eq!(keys.as_array().unwrap().len(), 3);

    // The OpenAPI document is served without a token and lists every route.
    let (status, doc) = admin
        .send(reqwest::Method::GET, "/admin/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/admin/v1/tenants", "post"),
        ("/admin/v1/tenants", "get"),
        ("/admin/v1/tenants/{tenant_id}/suspend", "post"),
        ("/admin/v1/tenants/{tenant_id}/reactivate", "post"),
        ("/admin/v1/tenants/{tenant_id}/keys", "post"),
        ("/admin/v1/tenants/{tenant_id}/keys", "get"),
        ("/admin/v1/keys/{key_id}/revoke", "post"),
        ("/admin/v1/keys/{key_id}/rotate", "post"),
        ("/admin/v1/plans/{plan}/limits", "get"),
        ("/admin/v1/plans/{plan}/limits", "put"),
        ("/admin/v1/tenants/{tenant_id}/limits", "get"),
        ("/admin/v1/tenants/{tenant_id}/limits", "put"),
        ("/admin/v1/keys/{key_id}/limits", "get"),
        ("/admin/v1/keys/{key_id}/limits", "put"),
        ("/admin/v1/tenants/{tenant_id}/admins", "post"),
        ("/admin/v1/tenants/{tenant_id}/admins", "get"),
        ("/admin/v1/tenant-admins/{admin_id}/revoke", "post"),
        ("/admin/v1/tenants/{tenant_id}/usage", "get"),
        ("/admin/v1/tenants/{tenant_id}/usage/export", "get"),
        ("/admin/v1/tenants/{tenant_id}/invoices/{period}", "get"),
        ("/admin/v1/pools", "get"),
        ("/admin/v1/tenants/by-name/{name}", "get"),
        ("/admin/v1/tenants/{tenant_id}/plan", "put"),
        ("/admin/v1/tenants/{tenant_id}/account", "get"),
        ("/admin/v1/plans", "get"),
        ("/admin/v1/plans/{plan}", "get"),
        ("/admin/v1/plans/{plan}", "put"),
        ("/admin/v1/plans/{plan}/prices/{model}", "put"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing"
        );
    }
    assert_eq!(paths.len(), 21);

    // Unknown admin routes are JSON 404s.
    let (status, body) = admin.get("/admin/v1/nothing").await;
    assert_eq!(status, 404);
    assert!(body["error"].is_string());

    drop(gw_process);
    drop_database(pool).await;
}

#[tokio::test]
async fn operators_set_and_read_a_plans_priority() {
    let (pool, db_url) = fresh_database().await;
    let backend = start_backend().await;
    let (_gw, _listen, admin_addr) = start(&db_url, backend, Some(TOKEN));
    let admin = Admin {
        client: reqwest::Client::new(),
        base: format!("http://{admin_addr}"),
    };
    let put = |path: &'static str, body: Value| {
        let admin = &admin;
        async move {
            admin
                .send(reqwest::Method::PUT, path, Some(body), Some(TOKEN))
                .await
        }
    };

    // The default plan has level 1; a new plan is created with the level given.
    let (status, plans) = admin.get("/admin/v1/plans").await;
    assert_eq!(status, 200, "{plans}");
    assert_eq!(plans[0]["name"], "default");
    assert_eq!(plans[0]["priority"], 1);
    let (status, plan) = put(
        "/admin/v1/plans/gold",
        json!({"description": "gold support", "priority": 8}),
    )
    .await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["name"], "gold");
    assert_eq!(plan["description"], "gold support");
    assert_eq!(plan["priority"], 8);
    assert_eq!(plan["prices"], json!([]));

    // An update changes only what it names; prices set later keep the level.
    let (status, plan) = put("/admin/v1/plans/gold", json!({"priority": 16})).await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["priority"], 16);
    assert_eq!(plan["description"], "gold support");
    let (status, plan) = put(
        "/admin/v1/plans/gold/prices/*",
        json!({"per_request_micro_usd": 5}),
    )
    .await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["priority"], 16);
    let (status, plan) = admin.get("/admin/v1/plans/gold").await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["priority"], 16);
    assert_eq!(plan["prices"][0]["per_request_micro_usd"], 5);
    let stored: i16 = sqlx::query_scalar("SELECT priority FROM plans WHERE name = 'gold'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 16);

    // Out of range or not an integer: a 400 JSON error saying what was expected; nothing
    // changes, and no plan is created.
    for bad in [
        json!(0),
        json!(17),
        json!(-3),
        json!(70000),
        json!(2.5),
        json!("high"),
    ] {
        let (status, body) = put("/admin/v1/plans/gold", json!({ "priority": bad })).await;
        assert_eq!(status, 400, "{bad}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains("priority"), "{bad}: {error}");
        let (status, body) = put("/admin/v1/plans/silver", json!({ "priority": bad })).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (_, body) = put("/admin/v1/plans/gold", json!({"priority": 0})).await;
    assert_eq!(
        body["error"],
        "priority must be an integer from 1 to 16 (the plan's level in the backends' fair batchers), got 0"
    );
    let (status, body) = put("/admin/v1/plans/gold", json!({"level": 3})).await;
    assert_eq!(status, 400, "{body}");
    let (status, plan) = admin.get("/admin/v1/plans/gold").await;
    assert_eq!(status, 200);
    assert_eq!(plan["priority"], 16);
    let (status, _) = admin.get("/admin/v1/plans/silver").await;
    assert_eq!(status, 404);

    // The OpenAPI document describes the field and its range.
    let (_, doc) = admin
        .send(reqwest::Method::GET, "/admin/v1/openapi.json", None, None)
        .await;
    let body_schema = &doc["components"]["schemas"]["PlanBody"]["properties"]["priority"];
    assert_eq!(body_schema["minimum"], 1, "{body_schema}");
    assert_eq!(body_schema["maximum"], 16, "{body_schema}");
    let plan_schema = &doc["components"]["schemas"]["Plan"]["properties"]["priority"];
    assert_eq!(plan_schema["maximum"], 16, "{plan_schema}");

    drop_database(pool).await;
}

#[tokio::test]
async fn admin_api_is_off_without_an_operator_token() {
    let (pool, db_url) = fresh_database().await;
    let backend = start_backend().await;
    let (_gw, _listen, admin_addr) = start(&db_url, backend, None);
    assert!(
        std::net::TcpStream::connect(admin_addr).is_err(),
        "admin listener must not be bound without a token"
    );
    drop_database(pool).await;
}
