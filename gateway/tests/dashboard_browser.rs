//! The dashboard in a real browser: Debian's `chromium`, driven through `chromedriver`
//! (WebDriver, W3C) with fantoccini, against the `maas-gateway` binary and a real PostgreSQL.
//!
//! A tenant admin signs in (a wrong token first: a clear error), sees the overview numbers
//! equal what the API says for a known set of usage, changes the usage page's date range and
//! granularity, creates a key and uses it through the gateway, revokes it and sees 401,
//! fetches the events CSV the page links to and compares it to the export endpoint, fails to
//! reach another tenant's pages, and signs out (the session is then refused server-side).
//! The operator signs in and sees the tenants ranked by spend. Every page is saved as a PNG
//! under `target/tmp/dashboard-screenshots/`.
//!
//! Needs `DATABASE_URL` (`make test` provides it) and `chromium` + `chromium-driver`
//! (`scripts/setup.sh` installs both). Only when chromedriver cannot start a browser at all
//! does the test print SKIPPED and pass.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{Datelike, TimeZone, Utc};
use fantoccini::{Client, ClientBuilder, Locator};
use maas_billing::{insert_usage_events, UsageEvent};
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

mod common;

use common::*;

const TOKEN: &str = "test-operator-token-dashboard-0123456";

/// Where the screenshots go.
fn shots_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    let path = shots_dir().join(format!("{name}.png"));
    std::fs::write(&path, png).expect("write screenshot");
    eprintln!("screenshot: {}", path.display());
}

/// chromedriver on a free port, and a headless chromium session through it; `None` (the
/// reason printed) when either cannot start.
async fn browser() -> Option<(ChildGuard, Client)> {
    let driver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .or_else(|| {
            eprintln!("no chromedriver (install chromium-driver: scripts/setup.sh)");
            None
        })?;
    let port = free_addr().port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| eprintln!("chromedriver did not start: {e}"))
        .ok()?;
    let guard = ChildGuard(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            eprintln!("chromedriver did not listen on {port}");
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let caps = json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1100"]
        }
    });
    let caps = match caps {
        Value::Object(m) => m,
        _ => unreachable!("an object"),
    };
    // chromedriver speaks plain HTTP on loopback: no TLS connector.
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    match ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
    {
        Ok(c) => Some((guard, c)),
        Err(e) => {
            eprintln!("chromium did not start through chromedriver: {e}");
            None
        }
    }
}

fn event(tenant: Uuid, key: Uuid, at: chrono::DateTime<Utc>, status: i16, rows: i64) -> UsageEvent {
    UsageEvent {
        request_id: Uuid::now_v7(),
        started_at: at,
        tenant_id: Some(tenant),
        api_key_id: Some(key),
        model: Some("dense".into()),
        model_version: Some("1".into()),
        http_status: status,
        inference_count: rows,
        compute_us: 250_000,
        request_bytes: 100,
        response_bytes: 50,
        latency_us: 900,
        call: maas_billing::CallKind::Inference,
    }
}

async fn api(
    client: &reqwest::Client,
    base: &str,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> AdminAnswer {
    admin_request(client, base, method, path, Some(token), body).await
}

async fn infer(gw: SocketAddr, key: &str) -> u16 {
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

async fn text(c: &Client, css: &str) -> String {
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .expect("element text")
}

async fn sign_in(c: &Client, base: &str, token: &str) {
    c.goto(&format!("{base}/dashboard/sign-in")).await.unwrap();
    let field = c.find(Locator::Css("#token")).await.unwrap();
    field.send_keys(token).await.unwrap();
    c.find(Locator::Css("#sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Wait until the page's URL satisfies `ok`.
async fn wait_url(c: &Client, ok: impl Fn(&reqwest::Url) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let u = c.current_url().await.expect("current URL");
        if ok(&u) {
            return;
        }
        assert!(Instant::now() < deadline, "still at {u}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until every chart of the page is drawn by uPlot.
async fn charts_drawn(c: &Client) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = c
            .execute(
                "return Array.from(document.querySelectorAll('[data-chart]')).every(e => e.dataset.drawn === 'true' && e.querySelector('canvas'));",
                vec![],
            )
            .await
            .unwrap();
        if v == Value::Bool(true) {
            return;
        }
        assert!(Instant::now() < deadline, "charts not drawn");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_tenant_admin_uses_the_dashboard_in_chromium() {
    let Some((_driver, c)) = browser().await else {
        eprintln!("SKIPPED: chromium cannot start here");
        return;
    };
    let (pool, db_url) = fresh_database().await;
    let backend = start_backend().await;
    let gw = start_gateway(
        &db_url,
        &[backend],
        &[("MAAS_GATEWAY_ADMIN__OPERATOR_TOKEN", TOKEN.to_string())],
    );
    let base = format!("http://{}", gw.admin);
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let (http, base, path) = (http.clone(), base.clone(), path.to_string());
        async move {
            let a = api(&http, &base, Method::POST, &path, TOKEN, Some(body)).await;
            assert_eq!(a.status, 201, "{path}");
            a.json()
        }
    };
    let acme: Uuid = post("/admin/v1/tenants", json!({"name": "acme"})).await["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let globex: Uuid = post("/admin/v1/tenants", json!({"name": "globex"})).await["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let ta = post(
        &format!("/admin/v1/tenants/{acme}/admins"),
        json!({"name": "alice"}),
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let k1: Uuid = post(
        &format!("/admin/v1/tenants/{acme}/keys"),
        json!({"name": "batch"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let limits = api(
        &http,
        &base,
        Method::PUT,
        &format!("/admin/v1/tenants/{acme}/limits"),
        TOKEN,
        Some(json!({"rules": [{"level": "tenant", "monthly_inference_quota": 500}]})),
    )
    .await;
    assert_eq!(limits.status, 200);

    // Known usage this month: day 1, 4 successes (10 rows each) and 1 failure.
    let now = Utc::now();
    let month = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .unwrap();
    let next = if now.month() == 12 {
        Utc.with_ymd_and_hms(now.year() + 1, 1, 1, 0, 0, 0).unwrap()
    } else {
        Utc.with_ymd_and_hms(now.year(), now.month() + 1, 1, 0, 0, 0)
            .unwrap()
    };
    let t = month + chrono::Duration::minutes(30);
    let mut events: Vec<UsageEvent> = (0..4).map(|_| event(acme, k1, t, 200, 10)).collect();
    events.push(event(acme, k1, t + chrono::Duration::hours(3), 503, 0));
    insert_usage_events(&pool, &events).await.unwrap();

    // Not signed in: the sign-in form; a wrong token: a clear error, still no session.
    c.goto(&format!("{base}/dashboard")).await.unwrap();
    assert!(c
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/dashboard/sign-in"));
    shot(&c, "01-sign-in").await;
    sign_in(
        &c,
        &base,
        "maas_ta_000000000000000000000000000000000000000000000000",
    )
    .await;
    assert_eq!(
        text(&c, "#error").await,
        "That is neither a live tenant admin token nor the operator token."
    );
    shot(&c, "02-sign-in-wrong-token").await;

    // Sign in: the overview, its numbers those of the API.
    sign_in(&c, &base, &ta).await;
    assert_eq!(text(&c, "#ov-requests").await, "5");
    let account = api(
        &http,
        &base,
        Method::GET,
        &format!("/admin/v1/tenants/{acme}/account"),
        &ta,
        None,
    )
    .await
    .json();
    assert_eq!(account["usage"]["requests"], 5);
    for (css, want) in [
        ("#ov-requests", account["usage"]["requests"].to_string()),
        (
            "#ov-success",
            account["usage"]["billable_requests"].to_string(),
        ),
        ("#ov-failed", account["usage"]["error_requests"].to_string()),
        (
            "#ov-inferences",
            account["usage"]["inference_count"].to_string(),
        ),
        ("#ov-compute", "1.000 s".to_string()),
        ("#ov-spend", "0.000000".to_string()),
        ("#ov-quota", "500".to_string()),
        (
            "#ov-quota-remaining",
            account["inference_quota"]["remaining"].to_string(),
        ),
        ("#ov-resets", next.format("%Y-%m-%d 00:00 UTC").to_string()),
    ] {
        assert_eq!(text(&c, css).await, want, "{css}");
    }
    assert_eq!(text(&c, "#who").await, "tenant admin of acme");
    charts_drawn(&c).await;
    shot(&c, "03-overview").await;

    // The usage page: the whole month, by hour, split by key; the totals are the API's.
    c.goto(&format!("{base}/dashboard/tenants/{acme}/usage"))
        .await
        .unwrap();
    let last_day = (next - chrono::Duration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    c.execute(
        "document.getElementById('from').value = arguments[0];
         document.getElementById('to').value = arguments[1];
         document.getElementById('granularity').value = 'hour';
         document.getElementById('group').value = 'key';",
        vec![json!(month.format("%Y-%m-%d").to_string()), json!(last_day)],
    )
    .await
    .unwrap();
    c.find(Locator::Css("#apply"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_url(&c, |u| {
        u.query().is_some_and(|q| q.contains("granularity=hour"))
    })
    .await;
    let report = api(
        &http,
        &base,
        Method::GET,
        &format!(
            "/admin/v1/tenants/{acme}/usage?from={}&to={}&granularity=hour&group_by=key",
            month.to_rfc3339(),
            next.to_rfc3339()
        )
        .replace('+', "%2B"),
        &ta,
        None,
    )
    .await
    .json();
    let buckets = report["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 2, "{report}");
    let rows = c
        .find_all(Locator::Css("#usage-table tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), buckets.len());
    assert_eq!(text(&c, "#usage-total-requests").await, "5");
    assert_eq!(text(&c, "#usage-total-success").await, "4");
    assert_eq!(text(&c, "#usage-total-failed").await, "1");
    let first_row = rows[0].text().await.unwrap();
    assert!(first_row.contains("batch ("), "{first_row}");
    charts_drawn(&c).await;
    shot(&c, "04-usage-by-hour").await;

    // The events CSV the page links to (read with the session cookie) is the export's.
    let in_browser = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch(document.getElementById('export-csv').href).then(r => r.text()).then(done);",
            vec![],
        )
        .await
        .unwrap();
    let export = api(
        &http,
        &base,
        Method::GET,
        &format!(
            "/admin/v1/tenants/{acme}/usage/export?from={}&to={}&format=csv",
            month.format("%Y-%m-%dT%H:%M:%SZ"),
            next.format("%Y-%m-%dT%H:%M:%SZ")
        ),
        &ta,
        None,
    )
    .await;
    let export = String::from_utf8(export.body).unwrap();
    assert_eq!(export.lines().count(), 6, "{export}");
    assert_eq!(in_browser.as_str().unwrap(), export);
    // ... and the table's own CSV is what the table shows.
    let table_csv = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch(document.getElementById('download-csv').href).then(r => r.text()).then(done);",
            vec![],
        )
        .await
        .unwrap();
    let table_csv = table_csv.as_str().unwrap();
    assert_eq!(table_csv.lines().count(), 3, "{table_csv}");
    assert!(table_csv.starts_with("start,key,requests,success,failed,inferences,compute_us\n"));
    assert!(table_csv.contains(",4,4,0,40,1000000\n"), "{table_csv}");

    // Keys: create one, use it through the gateway, revoke it: 401.
    c.goto(&format!("{base}/dashboard/tenants/{acme}/keys"))
        .await
        .unwrap();
    c.find(Locator::Css("#key-name"))
        .await
        .unwrap()
        .send_keys("from-browser")
        .await
        .unwrap();
    c.find(Locator::Css("#create"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let secret = text(&c, "#new-secret").await;
    assert!(
        secret.starts_with("maas_") && secret.len() == 53,
        "{secret}"
    );
    assert!(!c.current_url().await.unwrap().as_str().contains(&secret));
    shot(&c, "05-keys-created").await;
    assert_eq!(infer(gw.listen, &secret).await, 200);
    let row = c
        .find(Locator::XPath(
            "//table[@id='keys-table']//tr[td[1][text()='from-browser']]",
        ))
        .await
        .unwrap();
    row.find(Locator::Css("button.revoke"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::XPath(
            "//table[@id='keys-table']//tr[td[1][text()='from-browser']]/td[contains(@class,'revoked')]",
        ))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while infer(gw.listen, &secret).await != 401 {
        assert!(Instant::now() < deadline, "the revoked key still works");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shot(&c, "06-keys-revoked").await;

    // Limits and plan, invoices.
    c.goto(&format!("{base}/dashboard/tenants/{acme}/limits"))
        .await
        .unwrap();
    assert_eq!(text(&c, "#plan").await, "default");
    assert!(text(&c, "#rules-table")
        .await
        .contains("500 inferences/month"));
    shot(&c, "07-limits").await;
    c.goto(&format!("{base}/dashboard/tenants/{acme}/invoices"))
        .await
        .unwrap();
    assert!(text(&c, "#invoices-table")
        .await
        .contains(&month.format("%Y-%m").to_string()));
    shot(&c, "08-invoices").await;
    c.goto(&format!(
        "{base}/dashboard/tenants/{acme}/invoices/{}",
        month.format("%Y-%m")
    ))
    .await
    .unwrap();
    assert_eq!(text(&c, "#invoice-total").await, "0.000000");
    shot(&c, "09-invoice").await;

    // Another tenant's pages: 403, for a tenant that does not exist too.
    for other in [globex, Uuid::now_v7()] {
        for page in ["overview", "usage", "keys", "limits", "invoices"] {
            c.goto(&format!("{base}/dashboard/tenants/{other}/{page}"))
                .await
                .unwrap();
            let e = text(&c, "#error").await;
            assert!(e.contains("its own tenant"), "{page}: {e}");
        }
    }
    shot(&c, "10-other-tenant-403").await;
    c.goto(&format!("{base}/dashboard/operator")).await.unwrap();
    assert!(text(&c, "#error").await.contains("operator token"));

    // Sign out: back at the form, and the old session cookie is refused by the server.
    c.goto(&format!("{base}/dashboard/tenants/{acme}/overview"))
        .await
        .unwrap();
    let cookie = c.get_named_cookie("maas_session").await.unwrap();
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    let old = format!("maas_session={}", cookie.value());
    c.find(Locator::Css("#sign-out"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_url(&c, |u| u.path() == "/dashboard/sign-in").await;
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirect
        .get(format!("{base}/dashboard/tenants/{acme}/overview"))
        .header("cookie", &old)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/dashboard/sign-in");
    let r = no_redirect
        .get(format!("{base}/admin/v1/tenants/{acme}/account"))
        .header("cookie", &old)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // The operator: every tenant by spend.
    sign_in(&c, &base, TOKEN).await;
    let tenants = text(&c, "#tenants-table").await;
    assert!(
        tenants.contains("acme") && tenants.contains("globex"),
        "{tenants}"
    );
    assert_eq!(text(&c, "#who").await, "operator");
    shot(&c, "11-operator").await;
    c.goto(&format!("{base}/dashboard/tenants/{globex}/overview"))
        .await
        .unwrap();
    assert_eq!(text(&c, "#ov-requests").await, "0");

    c.close().await.unwrap();
    drop(gw);
    drop_database(pool).await;
}
