//! Authentication cost on the data path (criterion): an API key and an RS256 JWT on a cache
//! hit (what every request after the first pays), through
//! [`Authenticator::authenticate_credential`], and an RS256 JWT verified from scratch (what a new
//! token pays once per cache TTL).
//!
//! Needs `DATABASE_URL` (a role that may CREATE DATABASE) for the one lookup that fills the
//! caches; `make bench` runs it under scripts/with-services.sh. Without it, it says so and
//! measures nothing.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{encode, get_current_timestamp, Algorithm, EncodingKey, Header};
use maas_gateway::config::{AuthConfig, JwtConfig, JwtKeyConfig};
use maas_gateway::Authenticator;
use sqlx::postgres::PgPoolOptions;

const RSA_PRIVATE: &str = include_str!("../testdata/jwt/rsa-private.pem");
const RSA_PUBLIC: &str = include_str!("../testdata/jwt/rsa-public.pem");

fn auth_config(cache_ttl_ms: u64) -> AuthConfig {
    AuthConfig {
        cache_ttl_ms,
        jwt: JwtConfig {
            keys: vec![JwtKeyConfig {
                kid: None,
                alg: "RS256".into(),
                secret: None,
                pem: Some(RSA_PUBLIC.into()),
            }],
            ..JwtConfig::default()
        },
        ..AuthConfig::default()
    }
}

fn bench(c: &mut Criterion) {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        eprintln!("auth bench skipped: DATABASE_URL is not set (make bench sets it)");
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (secret, token) = rt.block_on(async {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .expect("connect to DATABASE_URL");
        maas_billing::MIGRATOR.run(&pool).await.expect("migrations");
        let tenant = format!("auth-bench-{}", uuid::Uuid::now_v7().simple());
        let (_, key) = maas_gateway::create_key(&pool, &tenant, "bench", None)
            .await
            .expect("create a key");
        let claims = serde_json::json!({"tenant": tenant, "exp": get_current_timestamp() + 3600});
        let token = encode(
            &Header::new(Algorithm::RS256),
            &claims,
            &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).expect("test key"),
        )
        .expect("sign");
        pool.close().await;
        (key.secret, token)
    });
    let cached = Authenticator::from_config(&url, &auth_config(600_000)).expect("authenticator");
    let uncached_jwt = maas_gateway::JwtVerifier::new(&auth_config(0).jwt, Duration::ZERO, 1)
        .expect("verifier")
        .expect("JWT on");
    rt.block_on(async {
        cached
            .authenticate_credential(&secret, Some("digits"))
            .await
            .expect("API key accepted");
        cached
            .authenticate_credential(&token, Some("digits"))
            .await
            .expect("JWT accepted");
    });
    let mut g = c.benchmark_group("auth");
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("api_key_cache_hit", |b| {
        b.to_async(&rt).iter(|| async {
            cached
                .authenticate_credential(&secret, Some("digits"))
                .await
        })
    });
    g.bench_function("jwt_rs256_cache_hit", |b| {
        b.to_async(&rt)
            .iter(|| async { cached.authenticate_credential(&token, Some("digits")).await })
    });
    // For context: the RS256 signature check and claim validation a new token pays once.
    g.bench_function("jwt_rs256_verify_uncached", |b| {
        b.to_async(&rt)
            .iter(|| async { uncached_jwt.verify(&token).await })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
