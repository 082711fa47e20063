//! The `maas-billing` command line against a real PostgreSQL (`DATABASE_URL`, provided by
//! `make test`): plans, invoice, export and report wiring.

use std::process::Command;

use chrono::{DateTime, Utc};
use maas_billing::{insert_usage_events, UsageEvent, MIGRATOR};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_maas-billing");

fn run(db: &str, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", db)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run maas-billing");
    assert!(
        out.status.success(),
        "maas-billing {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

#[tokio::test]
async fn plans_invoice_export_and_report_from_the_command_line() {
    let admin_url = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL must point at PostgreSQL (make test starts one)");
    let name = format!("billing_cli_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&admin_url).await.expect("connect");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create database");
    let (base, _) = admin_url.rsplit_once('/').expect("database part");
    let db = format!("{base}/{name}");
    run(&db, &["migrate"]);
    run(&db, &["migrate"]);
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&db)
        .await
        .expect("connect");
    MIGRATOR.run(&pool).await.expect("already migrated");
    let tenant = Uuid::now_v7();
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, 'acme')")
        .bind(tenant)
        .execute(&pool)
        .await
        .unwrap();
    let t0: DateTime<Utc> = "2026-11-10T00:00:00Z".parse().unwrap();
    let events: Vec<UsageEvent> = (0..100)
        .map(|i| UsageEvent {
            request_id: Uuid::now_v7(),
            started_at: t0 + chrono::Duration::minutes(37 * i),
            tenant_id: Some(tenant),
            api_key_id: None,
            model: Some("digits".into()),
            model_version: None,
            http_status: if i % 10 == 0 { 500 } else { 200 },
            call: maas_billing::CallKind::Inference,
            inference_count: 4,
            compute_us: 1200,
            request_bytes: 600,
            response_bytes: 300,
            latency_us: 900,
        })
        .collect();
    assert_eq!(insert_usage_events(&pool, &events).await.unwrap(), 100);

    run(
        &db,
        &[
            "plan",
            "set",
            "--plan",
            "pro",
            "--model",
            "digits",
            "--per-request",
            "100",
            "--per-1k-inferences",
            "2500",
            "--per-compute-second",
            "30000",
            "--included-requests",
            "10",
        ],
    );
    run(
        &db,
        &["plan", "assign", "--tenant", "acme", "--plan", "pro"],
    );
    let shown: serde_json::Value =
        serde_json::from_str(&run(&db, &["plan", "show", "--plan", "pro"])).unwrap();
    assert_eq!(shown["prices"][0]["per_request_micro_usd"], 100);

    // 90 billable requests: (90 - 10) * 100 + 360 * 2500 / 1000 + 108000 * 30000 / 1e6
    // = 8000 + 900 + 3240.
    let invoice: serde_json::Value = serde_json::from_str(&run(
        &db,
        &[
            "invoice", "--tenant", "acme", "--period", "2026-11", "--json",
        ],
    ))
    .unwrap();
    assert_eq!(invoice["total_micro_usd"], 12_140);
    let table = run(&db, &["invoice", "--tenant", "acme", "--period", "2026-11"]);
    assert!(table.contains("0.012140"), "{table}");

    let csv = run(
        &db,
        &[
            "export",
            "--from",
            "2026-11-01",
            "--to",
            "2026-12-01",
            "--format",
            "csv",
        ],
    );
    assert!(csv.starts_with("request_id,started_at,tenant_id,"), "{csv}");
    assert_eq!(csv.lines().count(), 101);
    let ce = run(
        &db,
        &[
            "export",
            "--from",
            "2026-11-01T00:00:00Z",
            "--to",
            "2026-12-01T00:00:00Z",
            "--format",
            "cloudevents",
            "--tenant",
            "acme",
        ],
    );
    let first: serde_json::Value = serde_json::from_str(ce.lines().next().unwrap()).unwrap();
    assert_eq!(first["id"], events[0].request_id.to_string());
    assert_eq!(first["specversion"], "1.0");

    let report = run(
        &db,
        &[
            "report",
            "--tenant",
            "acme",
            "--from",
            "2026-11-10",
            "--to",
            "2026-11-13",
            "--tz",
            "America/Los_Angeles",
            "--by",
            "model",
        ],
    );
    let buckets: Vec<serde_json::Value> = report
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(buckets[0]["local_start"], "2026-11-09T00:00:00");
    let total: i64 = buckets
        .iter()
        .map(|b| b["requests"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 100);

    // A mistake is one line on stderr, even with backtraces asked for.
    let out = Command::new(BIN)
        .args(["invoice", "--tenant", "nosuch", "--period", "2026-11"])
        .env("DATABASE_URL", &db)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run maas-billing");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: unknown tenant `nosuch`\n"
    );

    pool.close().await;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .expect("drop database");
}
