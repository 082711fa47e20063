//! The data path survives a PostgreSQL outage: key, tenant (for a JWT) and limit lookups serve their last
//! answer past their TTL (stale-if-error), only a credential never seen gets 503, and the
//! usage spool writes every answered request exactly once when the database is back.
//!
//! The outage is a TCP relay between the gateway and PostgreSQL that the test cuts (every
//! connection closed, new ones closed on accept) for 60 s under steady load of known keys.
//! Needs `DATABASE_URL` (`make test` provides it).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

const OPERATOR: &str = "test-operator-token-0123456789";
const OUTAGE: Duration = Duration::from_secs(60);
const JWT_SECRET: &str = "outage-test-hmac-secret-0123456789";

/// A TCP relay to `target` that can be cut: while `down`, live connections are closed and new
/// ones are closed as soon as they are accepted.
struct Relay {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
}

async fn relay(target: SocketAddr) -> Relay {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let down = Arc::new(AtomicBool::new(false));
    let d = down.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            if d.load(Ordering::SeqCst) {
                continue; // dropped: closed at once
            }
            let d = d.clone();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(target).await else {
                    return;
                };
                let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
                tokio::pin!(copy);
                loop {
                    tokio::select! {
                        _ = &mut copy => return,
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {
                            if d.load(Ordering::SeqCst) {
                                return; // both ends dropped
                            }
                        }
                    }
                }
            });
        }
    });
    Relay { addr, down }
}

/// host:port of a postgres:// URL.
fn pg_addr(url: &str) -> SocketAddr {
    let rest = url.split("://").nth(1).unwrap();
    let host_port = rest
        .split('@')
        .next_back()
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    host_port
        .parse()
        .expect("DATABASE_URL host:port as an IP address and port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sixty_second_postgres_outage_serves_known_keys_and_loses_nothing() {
    let (pool, db_url) = fresh_database().await;
    let backend = start_backend().await;
    let globex_key = create_key(&db_url, "globex", None);
    // A JWT of tenant globex: its tenant lookup is served stale too.
    let claims = json!({"tenant": "globex", "sub": "svc", "exp": jsonwebtoken::get_current_timestamp() + 3600});
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    let keys = [
        create_key(&db_url, "acme", None),
        create_key(&db_url, "acme", None),
        globex_key,
        jwt,
    ];
    let never_seen = create_key(&db_url, "acme", None);
    let acme = tenant_id(&pool, "acme").await;
    let relay = relay(pg_addr(&db_url)).await;
    let db_name = db_url.rsplit('/').next().unwrap();
    let relayed_url = format!("postgres://{}/{db_name}", {
        let rest = db_url.split("://").nth(1).unwrap();
        let user = rest.split('@').next().unwrap();
        format!("{user}@{}", relay.addr)
    });
    let gw = start_gateway(
        &relayed_url,
        &[backend],
        &[
            ("MAAS_GATEWAY_ADMIN__OPERATOR_TOKEN", OPERATOR.to_string()),
            (
                "MAAS_GATEWAY_AUTH__JWT__HMAC_SECRET",
                JWT_SECRET.to_string(),
            ),
        ],
    );
    let client = reqwest::Client::new();
    // acme has limits, so its requests need a limit lookup too.
    let resp = client
        .put(format!(
            "http://{}/admin/v1/tenants/{acme}/limits",
            gw.admin
        ))
        .bearer_auth(OPERATOR)
        .json(&json!({"rules": [{"level": "tenant", "rate": 100000, "burst": 1000}]}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = format!("http://{}/v2/models/dense/infer", gw.listen);
    let call = move |key: String| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let r = client
                .post(url)
                .bearer_auth(key)
                .body(BODY)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .expect("the gateway answers");
            let id = r
                .headers()
                .get("x-request-id")
                .and_then(|v| Uuid::parse_str(v.to_str().ok()?).ok());
            (r.status().as_u16(), id)
        }
    };
    // Every known credential is seen once before the outage.
    let answered: Arc<Mutex<HashMap<Uuid, u16>>> = Arc::default();
    for k in &keys {
        let (status, id) = call(k.clone()).await;
        assert_eq!(status, 200);
        answered.lock().unwrap().insert(id.unwrap(), status);
    }

    // The outage, under steady load: four clients, the known credentials in turn, 20 ms apart.
    relay.down.store(true, Ordering::SeqCst);
    let cut = Instant::now();
    let statuses: Arc<Mutex<HashMap<u16, u64>>> = Arc::default();
    let mut tasks = Vec::new();
    for c in 0..4 {
        let (keys, call, answered, statuses) = (
            keys.clone(),
            call.clone(),
            answered.clone(),
            statuses.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            while cut.elapsed() < OUTAGE {
                let (status, id) = call(keys[i % keys.len()].clone()).await;
                *statuses.lock().unwrap().entry(status).or_insert(0) += 1;
                if let Some(id) = id {
                    answered.lock().unwrap().insert(id, status);
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    // Meanwhile a key never seen cannot be checked: 503, and it does not stop the others.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (status, _) = call(never_seen.clone()).await;
    assert_eq!(status, 503);
    for t in tasks {
        t.await.unwrap();
    }
    let statuses = statuses.lock().unwrap().clone();
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        [200],
        "{statuses:?}"
    );
    let served = statuses[&200];
    assert!(served > 500, "steady load: {served} requests in {OUTAGE:?}");

    // PostgreSQL is back: the never-seen key works, and every answered request has exactly
    // one usage row.
    relay.down.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, id) = call(never_seen.clone()).await;
        if status == 200 {
            answered.lock().unwrap().insert(id.unwrap(), status);
            break;
        }
        assert!(Instant::now() < deadline, "still {status} after the outage");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let answered = answered.lock().unwrap().clone();
    wait_for_rows(&pool, answered.len() as i64).await;
    let rows: Vec<(Uuid, i16)> = sqlx::query_as("SELECT request_id, http_status FROM usage_events")
        .fetch_all(&pool)
        .await
        .unwrap();
    let stored: HashMap<Uuid, i16> = rows.iter().copied().collect();
    assert_eq!(stored.len(), rows.len(), "a request id stored twice");
    for (id, status) in &answered {
        assert_eq!(stored.get(id).map(|s| *s as u16), Some(*status), "{id}");
    }
    drop(gw);
    drop_database(pool).await;
}
