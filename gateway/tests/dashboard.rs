//! The dashboard's sign-in and session over plain HTTP, with the `maas-gateway` binary and a
//! real PostgreSQL: the session cookie's attributes, a wrong token, the CSRF token required of
//! state-changing requests made with the cookie (API and forms), cross-origin forms refused,
//! sign-out, expiry and a revoked tenant admin ending the session server-side, the security
//! headers, and sign-in attempts bounded per address (429 with Retry-After).
//!
//! Needs `DATABASE_URL` (a role allowed to CREATE DATABASE; `make test` provides one).

use reqwest::header::{HeaderMap, CONTENT_SECURITY_POLICY, LOCATION, RETRY_AFTER, SET_COOKIE};
use reqwest::redirect::Policy;
use serde_json::{json, Value};

mod common;

use common::*;

const TOKEN: &str = "test-operator-token-dashboard-http-01";

struct Site {
    base: String,
    http: reqwest::Client,
}

impl Site {
    async fn start(db_url: &str) -> (RunningGateway, Site) {
        let backend = start_backend().await;
        let gw = start_gateway(
            db_url,
            &[backend],
            &[("MAAS_GATEWAY_ADMIN__OPERATOR_TOKEN", TOKEN.to_string())],
        );
        let site = Site {
            base: format!("http://{}", gw.admin),
            http: reqwest::Client::builder()
                .redirect(Policy::none())
                .build()
                .unwrap(),
        };
        (gw, site)
    }

    async fn operator(&self, path: &str, body: Value) -> Value {
        let a = admin_request(
            &self.http,
            &self.base,
            reqwest::Method::POST,
            path,
            Some(TOKEN),
            Some(body),
        )
        .await;
        assert_eq!(a.status, 201, "{path}");
        a.json()
    }

    /// POST the sign-in form with `token` (and `extra` headers): status, headers, body.
    async fn sign_in(&self, token: &str, extra: &[(&str, &str)]) -> (u16, HeaderMap, String) {
        let mut req = self
            .http
            .post(format!("{}/dashboard/sign-in", self.base))
            .form(&[("token", token)]);
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let r = req.send().await.unwrap();
        let (status, headers) = (r.status().as_u16(), r.headers().clone());
        (status, headers, r.text().await.unwrap())
    }

    async fn get(&self, path: &str, cookie: &str) -> (u16, HeaderMap, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        let (status, headers) = (r.status().as_u16(), r.headers().clone());
        (status, headers, r.text().await.unwrap())
    }
}

/// `maas_session=<value>` of a Set-Cookie header.
fn cookie_of(headers: &HeaderMap) -> (String, String) {
    let set = headers[SET_COOKIE].to_str().unwrap().to_string();
    let pair = set.split(';').next().unwrap().to_string();
    (pair, set)
}

/// The CSRF token in a page's hidden `csrf` field.
fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    page[at..at + 64].to_string()
}

#[tokio::test]
async fn sessions_are_cookies_with_csrf_and_end_server_side() {
    let (pool, db_url) = fresh_database().await;
    let (_gw, site) = Site::start(&db_url).await;
    let acme = site
        .operator("/admin/v1/tenants", json!({"name": "acme"}))
        .await;
    let acme = acme["id"].as_str().unwrap().to_string();
    let created = site
        .operator(
            &format!("/admin/v1/tenants/{acme}/admins"),
            json!({"name": "a"}),
        )
        .await;
    let ta = created["token"].as_str().unwrap().to_string();
    let admin_id = created["id"].as_str().unwrap().to_string();

    // Not signed in: pages redirect to the form, which carries the security headers.
    let (status, h, _) = site
        .get(&format!("/dashboard/tenants/{acme}/overview"), "")
        .await;
    assert_eq!(
        (status, h[LOCATION].to_str().unwrap()),
        (303, "/dashboard/sign-in")
    );
    let (status, h, form) = site.get("/dashboard/sign-in", "").await;
    assert_eq!(status, 200);
    let csp = h[CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(
        csp.starts_with("default-src 'none'; script-src 'self'; style-src 'self';"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"));
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(form.contains("type=\"password\" name=\"token\""));
    // Assets are embedded; uPlot comes with its licence.
    let (status, h, js) = site
        .get("/dashboard/assets/vendor/uplot/uPlot.iife.min.js", "")
        .await;
    assert_eq!(status, 200);
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert!(js.starts_with("/*! https://github.com/leeoniya/uPlot (v1.6.32) */"));
    let (_, _, licence) = site.get("/dashboard/assets/vendor/uplot/LICENSE", "").await;
    assert!(licence.contains("The MIT License"), "{licence}");

    // A wrong token: 401 and a clear message, no cookie.
    let (status, h, page) = site.sign_in("maas_ta_nope", &[]).await;
    assert_eq!(status, 401);
    assert!(h.get(SET_COOKIE).is_none());
    assert!(page.contains("That is neither a live tenant admin token nor the operator token."));

    // Sign in: a session cookie, HttpOnly, SameSite=Strict, with an expiry; Secure over TLS.
    let (status, h, _) = site.sign_in(&ta, &[]).await;
    assert_eq!((status, h[LOCATION].to_str().unwrap()), (303, "/dashboard"));
    let (cookie, set) = cookie_of(&h);
    assert!(
        cookie.starts_with("maas_session=maas_s_") && cookie.len() == 13 + 71,
        "{cookie}"
    );
    assert_eq!(
        &set[cookie.len()..],
        "; HttpOnly; SameSite=Strict; Path=/; Max-Age=28800"
    );
    let (_, h, _) = site.sign_in(&ta, &[("x-forwarded-proto", "https")]).await;
    assert!(cookie_of(&h).1.ends_with("; Max-Age=28800; Secure"));
    let (status, h, _) = site.get("/dashboard", &cookie).await;
    assert_eq!(
        (status, h[LOCATION].to_str().unwrap()),
        (303, format!("/dashboard/tenants/{acme}/overview").as_str())
    );
    let (status, _, page) = site
        .get(&format!("/dashboard/tenants/{acme}/keys"), &cookie)
        .await;
    assert_eq!(status, 200);
    assert!(!page.contains(&ta), "the token never appears in a page");
    let csrf = csrf_of(&page);

    // The API with the cookie: reads need nothing more; writes need X-CSRF-Token.
    let keys = format!("{}/admin/v1/tenants/{acme}/keys", site.base);
    let (status, _, _) = site
        .get(&format!("/admin/v1/tenants/{acme}/account"), &cookie)
        .await;
    assert_eq!(status, 200);
    let post = |csrf: Option<&str>| {
        let mut req = site
            .http
            .post(&keys)
            .header("cookie", &cookie)
            .json(&json!({"name": "k"}));
        if let Some(c) = csrf {
            req = req.header("x-csrf-token", c);
        }
        req.send()
    };
    let r = post(None).await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let e: Value = r.json().await.unwrap();
    assert_eq!(
        e["error"],
        "a request made with the session cookie that changes state needs the session's \
         X-CSRF-Token header"
    );
    assert_eq!(
        post(Some(&"0".repeat(64))).await.unwrap().status().as_u16(),
        403
    );
    assert_eq!(post(Some(&csrf)).await.unwrap().status().as_u16(), 201);

    // Forms: a wrong CSRF token, or another origin, is 403; the right one creates the key.
    let form_post = |csrf: String, origin: Option<&'static str>| {
        let mut req = site
            .http
            .post(format!("{}/dashboard/tenants/{acme}/keys", site.base))
            .header("cookie", &cookie)
            .form(&[("csrf", csrf), ("name", "f".into()), ("models", "".into())]);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send()
    };
    let r = form_post("x".repeat(64), None).await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = form_post(csrf.clone(), Some("http://evil.example"))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("cross-origin form from http://evil.example refused"));
    let r = form_post(csrf.clone(), None).await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let page = r.text().await.unwrap();
    assert!(page.contains("id=\"new-secret\""));

    // Sign-out revokes the session: the same cookie is refused afterwards.
    let r = site
        .http
        .post(format!("{}/dashboard/sign-out", site.base))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    assert!(cookie_of(r.headers())
        .1
        .starts_with("maas_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"));
    let (status, _, _) = site
        .get(&format!("/admin/v1/tenants/{acme}/account"), &cookie)
        .await;
    assert_eq!(status, 401);
    let (status, _, _) = site
        .get(&format!("/dashboard/tenants/{acme}/overview"), &cookie)
        .await;
    assert_eq!(status, 303);

    // An expired session, and a session of a revoked admin, end too.
    let (_, h, _) = site.sign_in(&ta, &[]).await;
    let (second, _) = cookie_of(&h);
    let (_, h, _) = site.sign_in(&ta, &[]).await;
    let (third, _) = cookie_of(&h);
    let hash = |c: &str| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(
            c.trim_start_matches("maas_session=").as_bytes(),
        ))
    };
    sqlx::query("UPDATE admin_sessions SET expires_at = now() - interval '1 second' WHERE token_sha256 = $1")
        .bind(hash(&second))
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(site.get("/dashboard", &second).await.0, 303);
    assert_eq!(
        site.get(&format!("/admin/v1/tenants/{acme}/account"), &second)
            .await
            .0,
        401
    );
    assert_eq!(
        site.get(&format!("/admin/v1/tenants/{acme}/account"), &third)
            .await
            .0,
        200
    );
    let a = admin_request(
        &site.http,
        &site.base,
        reqwest::Method::POST,
        &format!("/admin/v1/tenant-admins/{admin_id}/revoke"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        site.get(&format!("/admin/v1/tenants/{acme}/account"), &third)
            .await
            .0,
        401
    );

    // The operator signs in with the operator token.
    let (_, h, _) = site.sign_in(TOKEN, &[]).await;
    let (op, _) = cookie_of(&h);
    let (status, _, page) = site.get("/dashboard/operator", &op).await;
    assert_eq!(status, 200);
    assert!(page.contains("acme"));
    // ... and suspends, then reactivates, a tenant from its page.
    let op_csrf = csrf_of(&page);
    for (action, want) in [("suspend", "suspended"), ("reactivate", "active")] {
        let r = site
            .http
            .post(format!(
                "{}/dashboard/operator/tenants/{acme}/{action}",
                site.base
            ))
            .header("cookie", &op)
            .form(&[("csrf", op_csrf.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 303, "{action}");
        let tenants = admin_request(
            &site.http,
            &site.base,
            reqwest::Method::GET,
            "/admin/v1/tenants",
            Some(TOKEN),
            None,
        )
        .await
        .json();
        assert_eq!(tenants[0]["status"], want, "{action}");
    }

    drop_database(pool).await;
}

#[tokio::test]
async fn sign_in_attempts_are_bounded_per_address() {
    let (pool, db_url) = fresh_database().await;
    let (_gw, site) = Site::start(&db_url).await;
    // Successful sign-ins do not count; five wrong tokens at once are answered (401); then
    // the address gets 429, even with the right token.
    for _ in 0..8 {
        assert_eq!(site.sign_in(TOKEN, &[]).await.0, 303);
    }
    for _ in 0..5 {
        assert_eq!(site.sign_in("wrong", &[]).await.0, 401);
    }
    let (status, h, page) = site.sign_in(TOKEN, &[]).await;
    assert_eq!(status, 429);
    let wait: u64 = h[RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=6).contains(&wait), "{wait}");
    assert!(page.contains("Too many sign-in attempts from your address"));
    assert!(h.get(SET_COOKIE).is_none());
    drop_database(pool).await;
}
