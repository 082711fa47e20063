//! The usage store against a real PostgreSQL (`DATABASE_URL`, provided by `make test`).

use chrono::{TimeZone, Utc};
use maas_billing::{insert_usage_events, usage_summary, UsageEvent, MIGRATOR};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

/// A fresh, migrated database; returns its pool and a connection to the admin database.
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
    MIGRATOR
        .run(&pool)
        .await
        .expect("migrating twice is a no-op");
    (pool, admin, name)
}

fn event(tenant: Option<Uuid>, status: i16, inferences: i64, second: u32) -> UsageEvent {
    UsageEvent {
        request_id: Uuid::now_v7(),
        started_at: Utc
            .with_ymd_and_hms(2026, 11, 29, 12, 0, second)
            .single()
            .expect("valid time"),
        tenant_id: tenant,
        api_key_id: None,
        model: Some("digits".into()),
        model_version: None,
        http_status: status,
        call: maas_billing::CallKind::Inference,
        inference_count: inferences,
        compute_us: 100 * inferences,
        request_bytes: 300,
        response_bytes: 200,
        latency_us: 900,
    }
}

#[tokio::test]
async fn usage_is_written_exactly_once_and_summed_per_tenant() {
    let (pool, mut admin, name) = fresh_db().await;
    let tenant = Uuid::now_v7();
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, 'acme')")
        .bind(tenant)
        .execute(&pool)
        .await
        .expect("tenant");

    let batch = vec![
        event(Some(tenant), 200, 3, 1),
        event(Some(tenant), 200, 5, 2),
        event(Some(tenant), 400, 0, 3),
        event(None, 401, 0, 4),
    ];
    assert_eq!(insert_usage_events(&pool, &batch).await.expect("insert"), 4);
    // A replay of the same batch (say after a crash before the spool was trimmed) adds nothing.
    assert_eq!(insert_usage_events(&pool, &batch).await.expect("replay"), 0);
    // A batch overlapping the stored one inserts only the new event.
    let extra = event(Some(tenant), 200, 7, 5);
    let overlap = vec![batch[0].clone(), extra.clone()];
    assert_eq!(
        insert_usage_events(&pool, &overlap).await.expect("overlap"),
        1
    );
    assert_eq!(insert_usage_events(&pool, &[]).await.expect("empty"), 0);

    let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM usage_events")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(rows, 5);

    let from = Utc
        .with_ymd_and_hms(2026, 11, 1, 0, 0, 0)
        .single()
        .expect("t");
    let to = Utc
        .with_ymd_and_hms(2026, 12, 1, 0, 0, 0)
        .single()
        .expect("t");
    let s = usage_summary(&pool, "acme", from, to)
        .await
        .expect("summary");
    assert_eq!(
        s.requests, 4,
        "the tenant's four events (the 401 has no tenant)"
    );
    assert_eq!(s.successful_requests, 3);
    assert_eq!(s.inference_count, 3 + 5 + 7);
    assert_eq!(s.compute_us, 100 * (3 + 5 + 7));

    // The period's end is exclusive.
    let cut = Utc
        .with_ymd_and_hms(2026, 11, 29, 12, 0, 2)
        .single()
        .expect("t");
    let early = usage_summary(&pool, "acme", from, cut)
        .await
        .expect("summary");
    assert_eq!(early.requests, 1);
    assert_eq!(early.inference_count, 3);

    pool.close().await;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .expect("drop database");
}
