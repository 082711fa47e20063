//! Reload the TLS certificate on SIGHUP or when its files change.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::certificate::load;
use super::resolver::ReloadingResolver;

/// A pingora background service that loads `cert_path`/`key_path` again on SIGHUP, and every
/// `interval` when either file's modification time or size changed, and hands a pair that
/// [`load`] accepts to the resolver. A pair it refuses (half-written, expired, mismatched) is
/// logged and the certificate served stays as it was.
pub struct CertificateReload {
    resolver: Arc<ReloadingResolver>,
    cert_path: PathBuf,
    key_path: PathBuf,
    interval: Option<Duration>,
}

impl CertificateReload {
    /// Watch `cert_path` and `key_path` every `interval` (`None`: SIGHUP only).
    ///
    /// SIGHUP is ignored from this call on until the service's own handler is installed
    /// when it starts, so an early SIGHUP never takes the default action (terminating the
    /// process).
    pub fn new(
        resolver: Arc<ReloadingResolver>,
        cert_path: PathBuf,
        key_path: PathBuf,
        interval: Option<Duration>,
    ) -> Self {
        // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions; tokio's
        // handler (signal-hook-registry, sigaction) replaces it when the service starts.
        unsafe {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
        }
        CertificateReload {
            resolver,
            cert_path,
            key_path,
            interval,
        }
    }

    fn stamp(&self) -> Option<[(SystemTime, u64); 2]> {
        let one = |p: &PathBuf| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
        };
        Some([one(&self.cert_path)?, one(&self.key_path)?])
    }

    fn reload(&self, why: &str) {
        match load(&self.cert_path, &self.key_path, chrono::Utc::now()) {
            Ok(loaded) => {
                self.resolver.replace(loaded.key);
                tracing::info!(
                    why,
                    subject = %loaded.subject,
                    not_after = %loaded.not_after,
                    "TLS certificate reloaded"
                );
            }
            Err(e) => {
                tracing::error!(why, error = %e, "TLS certificate not reloaded; still serving the previous one");
            }
        }
    }
}

#[async_trait]
impl BackgroundService for CertificateReload {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot handle SIGHUP; TLS reload on file change only");
                None
            }
        };
        let mut last = self.stamp();
        let mut tick = tokio::time::interval(self.interval.unwrap_or(Duration::from_secs(3600)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = recv(&mut hangup) => {
                    last = self.stamp();
                    self.reload("SIGHUP");
                }
                _ = tick.tick(), if self.interval.is_some() => {
                    let now = self.stamp();
                    if now.is_some() && now != last {
                        last = now;
                        self.reload("file changed");
                    }
                }
            }
        }
    }
}

/// The next SIGHUP; pending forever without a handler.
async fn recv(hangup: &mut Option<Signal>) -> Option<()> {
    match hangup {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}
