//! A circuit breaker for the data path's PostgreSQL lookups (keys, tenants, limits, prices):
//! after a failed lookup none is tried for `retry` (the caches answer with their stale
//! entries, `crate::cache`), then one request at a time probes, until one succeeds. So while
//! the database is down, requests are not held for the pool's acquire timeout each.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Why a lookup gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// PostgreSQL failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Not tried: a lookup failed less than the retry interval ago, or another probes now.
    #[error("database unavailable (a recent lookup failed; retried shortly)")]
    NotTried,
}

#[derive(Debug, Default)]
struct State {
    /// Lookups are not tried before this instant (`None`: the database answers).
    open_until: Option<Instant>,
    /// A probe is in flight.
    probing: bool,
}

/// The breaker; see the module notes.
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
    retry: Duration,
}

impl Breaker {
    /// A closed breaker that waits `retry` after a failure before probing again.
    pub fn new(retry: Duration) -> Self {
        Breaker {
            state: Mutex::new(State::default()),
            retry,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `lookup` if the breaker allows it now, recording whether it failed.
    ///
    /// # Errors
    /// [`LookupError::NotTried`] while open; the lookup's own error otherwise.
    pub async fn run<T>(
        &self,
        lookup: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, LookupError> {
        {
            let mut s = self.lock();
            match s.open_until {
                None => {}
                Some(t) if Instant::now() >= t && !s.probing => s.probing = true,
                Some(_) => return Err(LookupError::NotTried),
            }
        }
        let result = lookup.await;
        let mut s = self.lock();
        s.probing = false;
        match result {
            Ok(v) => {
                s.open_until = None;
                Ok(v)
            }
            Err(e) => {
                s.open_until = Some(Instant::now() + self.retry);
                Err(e.into())
            }
        }
    }

    /// Whether a lookup failed and none has succeeded since.
    #[cfg(test)]
    pub fn is_open(&self) -> bool {
        self.lock().open_until.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_on_failure_then_probes_once_per_interval() {
        let b = Breaker::new(Duration::from_millis(50));
        assert_eq!(b.run(async { Ok(1) }).await.unwrap(), 1);
        let failed = b
            .run(async { Err::<u8, _>(sqlx::Error::PoolTimedOut) })
            .await;
        assert!(matches!(failed, Err(LookupError::Database(_))));
        assert!(b.is_open());
        // Within the interval nothing is tried.
        let tried = std::sync::atomic::AtomicBool::new(false);
        let r = b
            .run(async {
                tried.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(2)
            })
            .await;
        assert!(matches!(r, Err(LookupError::NotTried)));
        assert!(!tried.load(std::sync::atomic::Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(b.run(async { Ok(3) }).await.unwrap(), 3);
        assert!(!b.is_open());
    }
}
