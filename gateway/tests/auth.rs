//! Authentication through the real gateway binary: JWTs (HMAC secret and a JWK Set served over
//! HTTP), model scopes, every token rejection, revocation and suspension reaching a second
//! gateway instance within one second over Redis, and `last_used_at`.
//!
//! Needs `DATABASE_URL` and `REDIS_URL` (`make test` provides both).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, get_current_timestamp, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use uuid::Uuid;

const RSA_PRIVATE: &str = include_str!("../testdata/jwt/rsa-private.pem");
const RSA_PUBLIC: &str = include_str!("../testdata/jwt/rsa-public.pem");
const ES256_PRIVATE: &str = include_str!("../testdata/jwt/es256-private.pem");
const SECRET: &str = "integration-test-hmac-secret-0123456789";
const OPERATOR: &str = "test-operator-token-0123456789";

/// A JWK Set server whose keys the test can change, counting fetches.
#[derive(Clone, Default)]
struct Jwks {
    keys: Arc<Mutex<Vec<Jwk>>>,
    fetches: Arc<AtomicUsize>,
}

impl Jwks {
    fn set(&self, keys: Vec<Jwk>) {
        *self.keys.lock().unwrap() = keys;
    }

    async fn serve(&self) -> SocketAddr {
        let me = self.clone();
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let me = me.clone();
                async move {
                    me.fetches.fetch_add(1, Ordering::SeqCst);
                    axum::Json(JwkSet {
                        keys: me.keys.lock().unwrap().clone(),
                    })
                }
            }),
        );
        serve_app(app).await
    }
}

fn jwk(alg: Algorithm, kid: &str) -> Jwk {
    let mut j = Jwk::from_encoding_key(&signing_key(alg), alg).unwrap();
    j.common.key_id = Some(kid.to_string());
    j
}

fn signing_key(alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(ES256_PRIVATE.as_bytes()).unwrap(),
        _ => EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
    }
}

fn token(alg: Algorithm, kid: Option<&str>, extra: Value) -> String {
    let now = get_current_timestamp();
    let mut claims = json!({"tenant": "acme", "sub": "svc-1", "exp": now + 600});
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, &claims, &signing_key(alg)).unwrap()
}

/// POST an infer call to `model` with `Authorization: Bearer <credential>`; status and body.
async fn infer(
    client: &reqwest::Client,
    gw: SocketAddr,
    model: &str,
    credential: &str,
) -> (u16, Value, Option<String>) {
    let resp = client
        .post(format!("http://{gw}/v2/models/{model}/infer"))
        .bearer_auth(credential)
        .body(BODY)
        .send()
        .await
        .expect("infer request");
    let status = resp.status().as_u16();
    let www = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body, www)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwts_are_verified_scoped_and_metered() {
    let (pool, db_url) = fresh_database().await;
    let backend = start_backend().await;
    let jwks = Jwks::default();
    jwks.set(vec![jwk(Algorithm::RS256, "rsa-1")]);
    let jwks_addr = jwks.serve().await;
    // Creates tenant "acme" (and a key we do not use).
    create_key(&db_url, "acme", None);
    let acme: Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE name = 'acme'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let gw = start_gateway(
        &db_url,
        &[backend],
        &[
            ("MAAS_GATEWAY_AUTH__JWT__HMAC_SECRET", SECRET.into()),
            (
                "MAAS_GATEWAY_AUTH__JWT__JWKS_URL",
                format!("http://{jwks_addr}/jwks.json"),
            ),
            (
                "MAAS_GATEWAY_AUTH__JWT__JWKS_MIN_REFRESH_INTERVAL_MS",
                "3000".into(),
            ),
            ("MAAS_GATEWAY_AUTH__JWT__LEEWAY_S", "0".into()),
        ],
    );
    let client = reqwest::Client::new();
    let gw_addr = gw.listen;

    // HS256 from the configured secret, RS256 from the JWK Set; the token is not forwarded.
    let (status, body, _) = infer(
        &client,
        gw_addr,
        "dense",
        &token(Algorithm::HS256, None, json!({})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["saw_authorization"], false);
    let (status, body, _) = infer(
        &client,
        gw_addr,
        "dense",
        &token(Algorithm::RS256, Some("rsa-1"), json!({})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The tenant claim may also hold the tenant's id.
    let by_id = token(Algorithm::HS256, None, json!({"tenant": acme.to_string()}));
    assert_eq!(infer(&client, gw_addr, "dense", &by_id).await.0, 200);

    // Model scopes: 403 outside, 200 inside.
    let scoped = token(Algorithm::HS256, None, json!({"models": ["digits"]}));
    let (status, body, _) = infer(&client, gw_addr, "dense", &scoped).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"], "this credential may not call model 'dense'");
    assert_eq!(infer(&client, gw_addr, "digits", &scoped).await.0, 200);

    // Every rejection is a 401 with WWW-Authenticate and a message saying why.
    let now = get_current_timestamp();
    let none =
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJ0ZW5hbnQiOiJhY21lIiwiZXhwIjo0MTAyNDQ0ODAwfQ.";
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &json!({"tenant": "acme", "exp": now + 600}),
        &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()).unwrap(),
    )
    .unwrap();
    let big = token(Algorithm::HS256, None, json!({"pad": "x".repeat(9000)}));
    let cases = [
        (
            none.to_string(),
            "invalid token: unsupported or malformed header",
        ),
        (confused, "invalid token: bad signature"),
        (
            token(Algorithm::HS256, None, json!({"exp": now - 5})),
            "invalid token: expired",
        ),
        (
            token(Algorithm::HS256, None, json!({"nbf": now + 600})),
            "invalid token: not yet valid (nbf)",
        ),
        (
            token(Algorithm::HS256, None, json!({"tenant": "nobody"})),
            "invalid token: unknown tenant",
        ),
        (
            token(Algorithm::HS256, None, json!({"tenant": null})),
            "invalid token: no tenant claim",
        ),
        (
            token(Algorithm::ES256, None, json!({})),
            "invalid token: algorithm not accepted",
        ),
        (
            token(Algorithm::RS256, Some("made-up"), json!({})),
            "invalid token: unknown key id (kid)",
        ),
        (big, "invalid token: larger than the limit"),
    ];
    for (credential, why) in &cases {
        let (status, body, www) = infer(&client, gw_addr, "dense", credential).await;
        assert_eq!(status, 401, "{why}: {body}");
        assert_eq!(body["error"], *why);
        assert_eq!(www.as_deref(), Some("Bearer"));
    }
    // A token and a different x-api-key: 400.
    let resp = client
        .post(format!("http://{gw_addr}/v2/models/dense/infer"))
        .bearer_auth(token(Algorithm::HS256, None, json!({})))
        .header("x-api-key", "maas_other")
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    // Two Authorization headers, even with the same valid token: 400, not the first one served.
    let good = token(Algorithm::HS256, None, json!({}));
    for second in [
        good.clone(),
        token(Algorithm::HS256, None, json!({"sub": "svc-2"})),
    ] {
        let resp = client
            .post(format!("http://{gw_addr}/v2/models/dense/infer"))
            .header("authorization", format!("Bearer {good}"))
            .header("authorization", format!("Bearer {second}"))
            .body(BODY)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(
            body["error"],
            "more than one credential: send exactly one Authorization: Bearer or x-api-key header"
        );
    }

    // Unknown kids: the JWK Set is re-read at most once per interval, and a key rotated in is
    // picked up on its first token once the interval has passed.
    let before = jwks.fetches.load(Ordering::SeqCst);
    for i in 0..30 {
        let t = token(Algorithm::RS256, Some(&format!("flood-{i}")), json!({}));
        assert_eq!(infer(&client, gw_addr, "dense", &t).await.0, 401);
    }
    let flood_fetches = jwks.fetches.load(Ordering::SeqCst) - before;
    // At most one per 3 s interval: one, or two if the flood straddles an interval boundary.
    assert!(
        flood_fetches <= 2,
        "30 unknown kids caused {flood_fetches} fetches"
    );
    jwks.set(vec![
        jwk(Algorithm::RS256, "rsa-1"),
        jwk(Algorithm::ES256, "ec-2"),
    ]);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let rotated = token(Algorithm::ES256, Some("ec-2"), json!({}));
    assert_eq!(infer(&client, gw_addr, "dense", &rotated).await.0, 200);

    // A suspended tenant's tokens get 403 (after the 200 ms cache TTL; no Redis here).
    sqlx::query("UPDATE tenants SET status = 'suspended' WHERE id = $1")
        .bind(acme)
        .execute(&pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body, _) = infer(
        &client,
        gw_addr,
        "dense",
        &token(Algorithm::HS256, None, json!({})),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("tenant suspended"))
    );

    // Usage rows: tenant set, no key, for the JWT calls that were answered.
    drop(gw);
    let rows: Vec<(Option<Uuid>, Option<Uuid>, i16)> = sqlx::query_as(
        "SELECT tenant_id, api_key_id, http_status FROM usage_events WHERE http_status = 200",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert!(rows.iter().all(|r| r.0 == Some(acme) && r.1.is_none()));
    drop_database(pool).await;
}

/// Admin API helper on one gateway.
async fn admin_post(client: &reqwest::Client, admin: SocketAddr, path: &str, body: Value) -> Value {
    let resp = client
        .post(format!("http://{admin}{path}"))
        .bearer_auth(OPERATOR)
        .json(&body)
        .send()
        .await
        .expect("admin request");
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    resp.json().await.unwrap()
}

/// Poll `gw` with `key` until the status is `want`; the time it took, or a panic after 5 s.
async fn until_status(client: &reqwest::Client, gw: SocketAddr, key: &str, want: u16) -> Duration {
    let start = Instant::now();
    loop {
        if infer(client, gw, "dense", key).await.0 == want {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(5), "never got {want}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_suspension_and_limits_reach_another_gateway_within_one_second() {
    let (pool, db_url) = fresh_database().await;
    let backend = start_backend().await;
    let redis = redis_url();
    // A cache TTL of 10 minutes: only the Redis announcement can make the change visible.
    let env = |admin: bool| {
        let mut env = vec![
            ("REDIS_URL", redis.clone()),
            ("MAAS_GATEWAY_AUTH__CACHE_TTL_MS", "600000".to_string()),
            ("MAAS_GATEWAY_AUTH__LAST_USED_FLUSH_MS", "200".to_string()),
        ];
        if admin {
            env.push(("MAAS_GATEWAY_ADMIN__OPERATOR_TOKEN", OPERATOR.to_string()));
        }
        env
    };
    let a = start_gateway(&db_url, &[backend], &env(true));
    let b = start_gateway(&db_url, &[backend], &env(false));
    let client = reqwest::Client::new();
    // Let both subscribe (their first subscription clears their caches anyway).
    tokio::time::sleep(Duration::from_millis(300)).await;

    let tenant = admin_post(
        &client,
        a.admin,
        "/admin/v1/tenants",
        json!({"name": "globex"}),
    )
    .await;
    let tenant_id = tenant["id"].as_str().unwrap().to_string();
    let keys_path = format!("/admin/v1/tenants/{tenant_id}/keys");
    let k1 = admin_post(&client, a.admin, &keys_path, json!({"name": "k1"})).await;
    let k2 = admin_post(&client, a.admin, &keys_path, json!({"name": "k2"})).await;
    let (s1, s2) = (
        k1["secret"].as_str().unwrap(),
        k2["secret"].as_str().unwrap(),
    );
    let unused = admin_post(&client, a.admin, &keys_path, json!({"name": "unused"})).await;
    // Both gateways have both keys cached as valid.
    for gw in [a.listen, b.listen] {
        assert_eq!(infer(&client, gw, "dense", s1).await.0, 200);
        assert_eq!(infer(&client, gw, "dense", s2).await.0, 200);
    }

    // Revoked on A: B refuses it within one second.
    let path = format!("/admin/v1/keys/{}/revoke", k1["id"].as_str().unwrap());
    admin_post(&client, a.admin, &path, json!({})).await;
    let took = until_status(&client, b.listen, s1, 401).await;
    assert!(
        took < Duration::from_secs(1),
        "revocation took {took:?} on the other gateway"
    );
    assert_eq!(infer(&client, b.listen, "dense", s2).await.0, 200);

    // Suspended on A: 403 on B within one second; reactivated: 200 again.
    admin_post(
        &client,
        a.admin,
        &format!("/admin/v1/tenants/{tenant_id}/suspend"),
        json!({}),
    )
    .await;
    let took = until_status(&client, b.listen, s2, 403).await;
    assert!(took < Duration::from_secs(1), "suspension took {took:?}");
    admin_post(
        &client,
        a.admin,
        &format!("/admin/v1/tenants/{tenant_id}/reactivate"),
        json!({}),
    )
    .await;
    let took = until_status(&client, b.listen, s2, 200).await;
    assert!(took < Duration::from_secs(1), "reactivation took {took:?}");

    // A limit set through A applies on B within one second (B's limits cache lives 10 min).
    let resp = client
        .put(format!(
            "http://{}/admin/v1/keys/{}/limits",
            a.admin,
            k2["id"].as_str().unwrap()
        ))
        .bearer_auth(OPERATOR)
        .json(&json!({"rules": [{"level": "key", "rate": 1, "period_s": 60, "burst": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let took = until_status(&client, b.listen, s2, 429).await;
    assert!(
        took < Duration::from_secs(1),
        "the new limit took {took:?} on the other gateway"
    );

    // last_used_at: written lazily for the keys that were used, not for the unused one.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let used: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT last_used_at FROM api_keys WHERE name = 'k2'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(used.is_some(), "k2's last_used_at was never written");
    let never: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT last_used_at FROM api_keys WHERE id = $1")
            .bind(Uuid::parse_str(unused["id"].as_str().unwrap()).unwrap())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(never, None);
    drop((a, b));
    drop_database(pool).await;
}
