//! Rollups, invoices, reports and exports against a real PostgreSQL (`DATABASE_URL`, provided
//! by `make test`).

use chrono::{DateTime, TimeZone, Utc};
use maas_billing::export::{export_usage, ExportFormat, CSV_HEADER};
use maas_billing::invoice::build_invoice;
use maas_billing::plans::{assign_plan, set_price, ModelPrice};
use maas_billing::report::{usage_report, Granularity, UsageQuery};
use maas_billing::Period;
use maas_billing::{insert_usage_events, BillingError, UsageEvent, MIGRATOR};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

async fn fresh_db() -> (PgPool, PgConnection, String) {
    let admin_url = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL must point at PostgreSQL (make test starts one)");
    let name = format!("billing_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&admin_url).await.expect("connect");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create database");
    let (base, _) = admin_url
        .rsplit_once('/')
        .expect("database part in the URL");
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&format!("{base}/{name}"))
        .await
        .expect("connect to the fresh database");
    MIGRATOR.run(&pool).await.expect("migrate");
    (pool, admin, name)
}

async fn finish(pool: PgPool, mut admin: PgConnection, name: String) {
    pool.close().await;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .expect("drop database");
}

async fn tenant(pool: &PgPool, name: &str) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, $2)")
        .bind(id)
        .bind(name)
        .execute(pool)
        .await
        .expect("tenant");
    id
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn ev(
    tenant: Uuid,
    model: &str,
    t: &str,
    status: i16,
    inferences: i64,
    compute_us: i64,
) -> UsageEvent {
    UsageEvent {
        request_id: Uuid::now_v7(),
        started_at: at(t),
        tenant_id: Some(tenant),
        api_key_id: None,
        model: Some(model.to_string()),
        model_version: None,
        http_status: status,
        call: maas_billing::CallKind::Inference,
        inference_count: inferences,
        compute_us,
        request_bytes: 100,
        response_bytes: 40,
        latency_us: 700,
    }
}

/// (d) rollup totals equal the raw rows, also across replays and months without partitions.
#[tokio::test]
async fn rollup_totals_equal_raw_rows() {
    let (pool, admin, name) = fresh_db().await;
    let t1 = tenant(&pool, "t1").await;
    let t2 = tenant(&pool, "t2").await;
    let key = Uuid::now_v7();
    let mut events = Vec::new();
    for i in 0..300i64 {
        let mut e = ev(
            if i % 3 == 0 { t2 } else { t1 },
            ["a", "b", "c"][(i % 3) as usize],
            &format!("2026-{:02}-15T{:02}:{:02}:00Z", 1 + i % 12, i % 24, i % 60),
            [200, 200, 404, 500, 0][(i % 5) as usize],
            i,
            7 * i,
        );
        if i % 4 == 0 {
            e.api_key_id = Some(key);
        }
        if i % 10 == 0 {
            e.tenant_id = None;
            e.model = None;
        }
        events.push(e);
    }
    assert_eq!(
        insert_usage_events(&pool, &events[..150]).await.unwrap(),
        150
    );
    // Overlapping replay: only the new half counts, in rows and in the rollup.
    assert_eq!(
        insert_usage_events(&pool, &events[100..]).await.unwrap(),
        150
    );
    assert_eq!(insert_usage_events(&pool, &events).await.unwrap(), 0);

    let raw: (i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE http_status BETWEEN 200 AND 299), \
             count(*) FILTER (WHERE http_status >= 400 OR http_status < 100), \
             sum(inference_count) FILTER (WHERE http_status BETWEEN 200 AND 299)::bigint, \
             sum(compute_us) FILTER (WHERE http_status BETWEEN 200 AND 299)::bigint, \
             sum(response_bytes)::bigint FROM usage_events",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let rolled: (i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT sum(requests)::bigint, sum(billable_requests)::bigint, \
             sum(error_requests)::bigint, sum(inference_count)::bigint, \
             sum(compute_us)::bigint, sum(response_bytes)::bigint FROM usage_hourly",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(raw, rolled);
    assert_eq!(raw.0, 300);
    let expected_billable = events
        .iter()
        .filter(|e| (200..300).contains(&e.http_status))
        .map(|e| e.inference_count)
        .sum::<i64>();
    assert_eq!(rolled.3, expected_billable);
    // Per group too.
    let mismatched: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT tenant_id, api_key_id, model, \
             date_trunc('hour', started_at, 'UTC') AS hour, count(*) AS n \
             FROM usage_events GROUP BY 1, 2, 3, 4) r \
         FULL JOIN usage_hourly h ON h.tenant_id IS NOT DISTINCT FROM r.tenant_id \
             AND h.api_key_id IS NOT DISTINCT FROM r.api_key_id \
             AND h.model IS NOT DISTINCT FROM r.model AND h.hour = r.hour \
         WHERE r.n IS DISTINCT FROM h.requests",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(mismatched, 0);
    // Twelve month partitions were created on demand.
    let parts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'usage_events'::regclass",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(parts >= 12, "{parts} partitions");
    finish(pool, admin, name).await;
}

/// (e) an invoice computed by hand matches to the micro-USD.
#[tokio::test]
async fn invoice_matches_hand_computation() {
    let (pool, admin, name) = fresh_db().await;
    let t = tenant(&pool, "inv").await;
    set_price(
        &pool,
        "pro",
        &ModelPrice {
            model: "digits".into(),
            per_request_micro_usd: 100,
            per_1k_inferences_micro_usd: 2_500,
            per_compute_second_micro_usd: 30_000,
            included_requests: 2,
            included_inferences: 1_000,
            included_compute_us: 0,
        },
    )
    .await
    .unwrap();
    set_price(
        &pool,
        "pro",
        &ModelPrice {
            model: "*".into(),
            per_request_micro_usd: 1_000,
            ..ModelPrice::default()
        },
    )
    .await
    .unwrap();
    assign_plan(&pool, "inv", "pro").await.unwrap();
    assert!(matches!(
        assign_plan(&pool, "nobody", "pro").await,
        Err(BillingError::UnknownTenant(_))
    ));

    let mut events = Vec::new();
    for i in 0..5 {
        events.push(ev(
            t,
            "digits",
            &format!("2026-11-{:02}T10:00:00Z", 2 + i),
            200,
            333,
            300_001,
        ));
    }
    events.push(ev(t, "digits", "2026-11-20T10:00:00Z", 500, 999, 5_000_000)); // not billable
    for i in 0..3 {
        events.push(ev(
            t,
            "other",
            &format!("2026-11-30T23:59:5{i}Z"),
            200,
            1,
            10,
        ));
    }
    events.push(ev(t, "digits", "2026-12-01T00:00:00Z", 200, 1_000_000, 1)); // next month
    events.push(ev(
        t,
        "digits",
        "2026-10-31T23:59:59.999Z",
        200,
        1_000_000,
        1,
    )); // last month
    insert_usage_events(&pool, &events).await.unwrap();

    let inv = build_invoice(&pool, "inv", Period::parse("2026-11").unwrap())
        .await
        .unwrap();
    assert_eq!(inv.plan, "pro");
    assert_eq!(inv.lines.len(), 2);
    let digits = &inv.lines[0];
    assert_eq!(digits.usage.model, "digits");
    assert_eq!(digits.usage.requests, 5);
    assert_eq!(digits.usage.inference_count, 1_665);
    assert_eq!(digits.usage.compute_us, 1_500_005);
    // By hand: requests (5 - 2) * 100 = 300; inferences (1665 - 1000) * 2500 / 1000 = 1662.5
    // -> 1663; compute 1_500_005 * 30_000 / 1e6 = 45000.15 -> 45000.
    assert_eq!(digits.requests_micro_usd, 300);
    assert_eq!(digits.inferences_micro_usd, 1_663);
    assert_eq!(digits.compute_micro_usd, 45_000);
    assert_eq!(digits.amount_micro_usd, 46_963);
    let other = &inv.lines[1];
    assert_eq!(other.usage.model, "other");
    assert_eq!(other.price.model, "*");
    assert_eq!(other.amount_micro_usd, 3_000);
    assert_eq!(inv.total_micro_usd, 49_963);

    // A plan without a catch-all row cannot price `other`.
    set_price(
        &pool,
        "narrow",
        &ModelPrice {
            model: "digits".into(),
            ..ModelPrice::default()
        },
    )
    .await
    .unwrap();
    assign_plan(&pool, "inv", "narrow").await.unwrap();
    match build_invoice(&pool, "inv", Period::parse("2026-11").unwrap()).await {
        Err(BillingError::NoPrice { models, .. }) => assert_eq!(models, vec!["other".to_string()]),
        other => panic!("expected NoPrice, got {other:?}"),
    }
    finish(pool, admin, name).await;
}

/// (f) day boundaries in a non-UTC zone put each event on its local day.
#[tokio::test]
async fn day_boundaries_follow_the_time_zone() {
    let (pool, admin, name) = fresh_db().await;
    let t = tenant(&pool, "tz").await;
    let events = vec![
        // New York is UTC-5 in late November (EST).
        ev(t, "m", "2026-11-29T04:30:00Z", 200, 1, 1), // Nov 28, 23:30 EST
        ev(t, "m", "2026-11-29T05:30:00Z", 200, 10, 1), // Nov 29, 00:30 EST
        ev(t, "m", "2026-11-30T04:59:59Z", 200, 100, 1), // Nov 29, 23:59:59 EST
        // Kolkata is UTC+05:30.
        ev(t, "m", "2026-11-29T18:29:00Z", 200, 1_000, 1), // Nov 29, 23:59 IST
        ev(t, "m", "2026-11-29T18:31:00Z", 200, 10_000, 1), // Nov 30, 00:01 IST
    ];
    insert_usage_events(&pool, &events).await.unwrap();
    let query = |tz: &str| UsageQuery {
        tenant_id: t,
        from: Utc.with_ymd_and_hms(2026, 11, 28, 0, 0, 0).unwrap(),
        to: Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap(),
        granularity: Granularity::Day,
        time_zone: tz.to_string(),
        by_model: true,
        by_key: false,
    };
    let days = |buckets: Vec<maas_billing::report::UsageBucket>| -> Vec<(String, i64)> {
        buckets
            .into_iter()
            .map(|b| (b.local_start[..10].to_string(), b.inference_count))
            .collect()
    };

    let ny = usage_report(&pool, &query("America/New_York"))
        .await
        .unwrap();
    assert_eq!(
        ny[0].bucket_start,
        at("2026-11-28T05:00:00Z"),
        "local midnight as an instant"
    );
    assert_eq!(ny[0].model.as_deref(), Some("m"));
    assert_eq!(
        days(ny),
        vec![("2026-11-28".into(), 1), ("2026-11-29".into(), 11_110)]
    );

    let utc = usage_report(&pool, &query("UTC")).await.unwrap();
    assert_eq!(
        days(utc),
        vec![("2026-11-29".into(), 11_011), ("2026-11-30".into(), 100)]
    );

    // A half-hour zone: answered from the raw events, still exact (the 04:59:59Z event is
    // Nov 30, 10:29 IST).
    let ist = usage_report(&pool, &query("Asia/Kolkata")).await.unwrap();
    assert_eq!(
        days(ist),
        vec![("2026-11-29".into(), 1_011), ("2026-11-30".into(), 10_100)]
    );

    let mut hourly = query("Europe/Berlin");
    hourly.granularity = Granularity::Hour;
    hourly.by_model = false;
    let hours = usage_report(&pool, &hourly).await.unwrap();
    assert_eq!(hours.len(), 4, "18:29Z and 18:31Z share an hour");
    assert_eq!(hours[0].local_start, "2026-11-29T05:00:00");
    assert!(hours.iter().all(|b| b.model.is_none()));

    assert!(matches!(
        usage_report(&pool, &query("Mars/Olympus")).await,
        Err(BillingError::Invalid(_))
    ));
    finish(pool, admin, name).await;
}

#[tokio::test]
async fn exports_csv_jsonl_and_cloudevents() {
    let (pool, admin, name) = fresh_db().await;
    let t = tenant(&pool, "exp").await;
    let mut events: Vec<UsageEvent> = (0..7)
        .map(|i| {
            ev(
                t,
                "m,\"quoted\"",
                &format!("2026-11-10T00:00:0{i}Z"),
                200,
                i,
                i,
            )
        })
        .collect();
    events.push(ev(t, "m", "2026-11-11T00:00:00Z", 200, 1, 1)); // outside the range
    insert_usage_events(&pool, &events).await.unwrap();
    let (from, to) = (at("2026-11-10T00:00:00Z"), at("2026-11-11T00:00:00Z"));

    let mut csv = Vec::new();
    assert_eq!(
        export_usage(&pool, from, to, None, ExportFormat::Csv, &mut csv)
            .await
            .unwrap(),
        7
    );
    let text = String::from_utf8(csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next().unwrap(), CSV_HEADER.join(","));
    let first = lines.next().unwrap();
    assert!(
        first.starts_with(&events[0].request_id.to_string()),
        "{first}"
    );
    assert!(
        first.contains("\"m,\"\"quoted\"\"\""),
        "RFC 4180 quoting: {first}"
    );
    assert_eq!(text.lines().count(), 8);

    let mut jsonl = Vec::new();
    export_usage(&pool, from, to, Some(t), ExportFormat::Jsonl, &mut jsonl)
        .await
        .unwrap();
    let rows: Vec<serde_json::Value> = String::from_utf8(jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 7);
    assert_eq!(rows[3]["inference_count"], 3);
    assert_eq!(rows[3]["started_at"], "2026-11-10T00:00:03.000000Z");

    let mut ce = Vec::new();
    export_usage(&pool, from, to, None, ExportFormat::CloudEvents, &mut ce)
        .await
        .unwrap();
    let ces: Vec<serde_json::Value> = String::from_utf8(ce)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ces.len(), 7);
    for (c, e) in ces.iter().zip(&events) {
        assert_eq!(c["specversion"], "1.0");
        assert_eq!(c["id"], e.request_id.to_string());
        assert_eq!(c["subject"], t.to_string());
        assert_eq!(c["data"]["request_id"], e.request_id.to_string());
        assert!(c["source"].is_string() && c["type"].is_string() && c["time"].is_string());
    }
    assert!(
        export_usage(&pool, to, from, None, ExportFormat::Csv, Vec::new())
            .await
            .is_err()
    );

    // More than one page (5,000 events), with equal timestamps across the page boundary.
    let many: Vec<UsageEvent> = (0..12_001)
        .map(|i| {
            ev(
                t,
                "p",
                &format!("2026-11-20T00:00:{:02}Z", i % 3),
                200,
                1,
                1,
            )
        })
        .collect();
    insert_usage_events(&pool, &many).await.unwrap();
    let mut out = Vec::new();
    let (f2, t2) = (at("2026-11-20T00:00:00Z"), at("2026-11-21T00:00:00Z"));
    let n = export_usage(&pool, f2, t2, Some(t), ExportFormat::Jsonl, &mut out)
        .await
        .unwrap();
    assert_eq!(n, 12_001);
    let mut ids: Vec<String> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["request_id"].to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 12_001, "no event twice, none missing");
    finish(pool, admin, name).await;
}
