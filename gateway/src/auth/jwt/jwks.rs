//! The JWK Set (RFC 7517) named by `auth.jwt.jwks_file` or `auth.jwt.jwks_url`, and when it is
//! re-read: once it is older than `jwks_refresh_s`, or when a token names an unknown `kid`, at
//! most once per `jwks_min_refresh_interval_ms` either way (a flood of made-up `kid`s costs the
//! identity provider one fetch per interval). A failed read keeps the previous keys.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;

use super::keys::{jwks_keys, VerificationKey};
use crate::config::JwtConfig;

/// Where the JWK Set comes from.
enum JwksSource {
    File(PathBuf),
    Url(String, reqwest::Client),
}

/// The JWK Set's keys and when they were read.
#[derive(Default)]
struct JwksState {
    keys: Vec<Arc<VerificationKey>>,
    loaded_at: Option<Instant>,
}

/// The keys of a JWK Set, re-read from its source within the refresh rate limit.
pub(super) struct JwkSetKeys {
    source: JwksSource,
    state: RwLock<JwksState>,
    /// Held while re-reading the JWK Set; holds the instant of the last attempt.
    refresh: tokio::sync::Mutex<Option<Instant>>,
    fetches: AtomicU64,
    failures: AtomicU64,
    refresh_after: Duration,
    min_interval: Duration,
}

impl JwkSetKeys {
    /// The JWK Set `config` names; `Ok(None)` when it names none. A `jwks_file` is read here; a
    /// `jwks_url` on the first token.
    ///
    /// # Errors
    /// Both `jwks_file` and `jwks_url` set, a `jwks_url` that is not http(s), or an unreadable
    /// or invalid `jwks_file`.
    pub(super) fn new(config: &JwtConfig) -> anyhow::Result<Option<Self>> {
        let source = match (&config.jwks_file, &config.jwks_url) {
            (Some(_), Some(_)) => {
                anyhow::bail!("set auth.jwt.jwks_file or auth.jwt.jwks_url, not both")
            }
            (Some(path), None) => JwksSource::File(path.clone()),
            (None, Some(url)) => {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    anyhow::bail!("auth.jwt.jwks_url must be an http(s) URL");
                }
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_millis(config.jwks_fetch_timeout_ms.max(1)))
                    .build()?;
                JwksSource::Url(url.clone(), client)
            }
            (None, None) => return Ok(None),
        };
        let mut state = JwksState::default();
        if let JwksSource::File(path) = &source {
            let bytes = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("auth.jwt.jwks_file {}: {e}", path.display()))?;
            let set: JwkSet = serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "auth.jwt.jwks_file {} is not a JWK Set: {e}",
                    path.display()
                )
            })?;
            state.keys = jwks_keys(&set);
            state.loaded_at = Some(Instant::now());
        }
        Ok(Some(JwkSetKeys {
            source,
            state: RwLock::new(state),
            refresh: tokio::sync::Mutex::new(None),
            fetches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            refresh_after: Duration::from_secs(config.jwks_refresh_s),
            min_interval: Duration::from_millis(config.jwks_min_refresh_interval_ms),
        }))
    }

    /// How many times the JWK Set was fetched or read since start (the `jwks_file` read at
    /// construction not counted).
    pub(super) fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// How many of those fetches or reads failed (the previous keys were kept).
    pub(super) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The keys as last read.
    pub(super) fn keys(&self) -> Vec<Arc<VerificationKey>> {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys
            .clone()
    }

    /// Whether the keys were never read, or were read `jwks_refresh_s` ago or more.
    pub(super) fn is_stale(&self) -> bool {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .loaded_at
            .is_none_or(|t| t.elapsed() >= self.refresh_after)
    }

    /// Re-read the JWK Set unless another task just did, or the last attempt is more recent
    /// than `jwks_min_refresh_interval_ms`. A failed read keeps the previous keys.
    pub(super) async fn refresh(&self) {
        let mut last_attempt = self.refresh.lock().await;
        if last_attempt.is_some_and(|t| t.elapsed() < self.min_interval) {
            return;
        }
        *last_attempt = Some(Instant::now());
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let set: Result<JwkSet, String> = match &self.source {
            JwksSource::File(path) => match tokio::fs::read(path).await {
                Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            JwksSource::Url(url, client) => {
                let fetched = async {
                    client
                        .get(url)
                        .send()
                        .await?
                        .error_for_status()?
                        .json::<JwkSet>()
                        .await
                };
                fetched.await.map_err(|e| e.to_string())
            }
        };
        match set {
            Ok(set) => {
                let keys = jwks_keys(&set);
                tracing::info!(keys = keys.len(), "JWK Set loaded");
                let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
                state.keys = keys;
                state.loaded_at = Some(Instant::now());
            }
            Err(error) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "JWK Set could not be read; keeping the previous keys")
            }
        }
    }
}
