//! The load loops. Latency is measured in microseconds; in open loop from each request's
//! intended send time (as wrk2 does, so coordinated omission cannot hide a stall), in closed
//! loop from the actual send.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use std::time::Instant;
use tokio::sync::{mpsc, Semaphore};

use crate::body::PreparedBody;
use crate::record::{Recorder, Sample};
use crate::scenario::Mode;

/// Everything needed to send one request.
pub struct Target {
    /// HTTP client (keep-alive pool sized to the concurrency).
    pub client: reqwest::Client,
    /// The infer URL.
    pub url: String,
    /// `(label, Authorization header value)` per key; empty: no credential.
    pub keys: Vec<(String, Option<String>)>,
    /// Key index for request `i` is `schedule[i % schedule.len()]` (weights expanded).
    pub schedule: Vec<usize>,
    /// Bodies, cycled.
    pub bodies: Vec<PreparedBody>,
}

/// Expands weights into a schedule: `[3, 1]` gives `[0, 0, 0, 1]` (exact shares, no sampling).
pub fn weight_schedule(weights: &[u32]) -> Vec<usize> {
    let mut s: Vec<usize> = weights
        .iter()
        .enumerate()
        .flat_map(|(i, &w)| std::iter::repeat_n(i, w as usize))
        .collect();
    if s.is_empty() {
        s.push(0);
    }
    s
}

async fn send_one(target: &Target, i: u64) -> (usize, Option<u16>) {
    let key = target.schedule[(i % target.schedule.len() as u64) as usize];
    let body = &target.bodies[(i % target.bodies.len() as u64) as usize];
    let mut req = target
        .client
        .post(&target.url)
        .header("content-type", "application/json")
        .body(body.bytes.clone());
    if let Some(h) = body.header_len {
        req = req
            .header(maas_protocol::HEADER_CONTENT_LENGTH, h)
            .header("content-type", "application/octet-stream");
    }
    if let Some((_, Some(auth))) = target.keys.get(key) {
        req = req.header("authorization", auth);
    }
    let status = match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            match resp.bytes().await {
                Ok(_) => Some(status),
                Err(_) => None,
            }
        }
        Err(_) => None,
    };
    (key, status)
}

/// Parameters of one phase (warm-up or measured).
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    /// Open or closed loop.
    pub mode: Mode,
    /// Open loop: requests per second.
    pub rate: f64,
    /// Closed: workers; open: most requests in flight.
    pub concurrency: usize,
    /// How long, seconds.
    pub duration_s: f64,
    /// At most this many requests.
    pub max_requests: u64,
}

/// Runs one phase and returns its recorder plus the wall time it took.
///
/// # Errors
/// Only internal failures (a histogram that cannot be created); request failures are counted.
pub async fn run_phase(
    target: Arc<Target>,
    phase: Phase,
    progress: bool,
) -> anyhow::Result<(Recorder, Duration)> {
    let labels: Vec<String> = target.keys.iter().map(|(l, _)| l.clone()).collect();
    let (tx, mut rx) = mpsc::unbounded_channel::<Sample>();
    let collector = tokio::spawn(async move {
        let mut rec = Recorder::new(labels)?;
        while let Some(s) = rx.recv().await {
            rec.record(s);
        }
        anyhow::Ok(rec)
    });

    let bar = if progress {
        let bar = ProgressBar::new((phase.duration_s * 1000.0) as u64);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(phase.duration_s);
    let ticker = {
        let bar = bar.clone();
        let sent = sent.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                bar.set_position(start.elapsed().as_millis() as u64);
                bar.set_message(format!("sent {}", sent.load(Ordering::Relaxed)));
            }
        })
    };

    match phase.mode {
        Mode::Open => {
            // Arrivals are paced on an OS thread of their own: tokio's timer wheel has a 1 ms
            // resolution, so `sleep_until` wakes up to 1 ms late, and since latency is measured
            // from the intended send time (no coordinated omission), that lateness would be
            // counted as the server's. A thread sleep is late by the thread's timer slack, which
            // the pacer sets to 1 us (prctl(2) PR_SET_TIMERSLACK).
            let interval = Duration::from_secs_f64(1.0 / phase.rate);
            let permits = Arc::new(Semaphore::new(phase.concurrency));
            let handle = tokio::runtime::Handle::current();
            let (target, tx, sent) = (target.clone(), tx.clone(), sent.clone());
            let max = phase.max_requests;
            let pacer = std::thread::Builder::new()
                .name("loadtest-pacer".into())
                .spawn(move || {
                    set_fine_timer_slack();
                    let mut i: u64 = 0;
                    loop {
                        let intended = start + interval.mul_f64(i as f64);
                        if intended >= end || i >= max {
                            break;
                        }
                        let now = Instant::now();
                        if intended > now {
                            std::thread::sleep(intended - now);
                        }
                        let (target, permits, tx, sent) =
                            (target.clone(), permits.clone(), tx.clone(), sent.clone());
                        handle.spawn(async move {
                            // Waiting for a free connection counts as latency: it is the
                            // server's delay.
                            let _permit = permits.acquire_owned().await;
                            sent.fetch_add(1, Ordering::Relaxed);
                            let (key, status) = send_one(&target, i).await;
                            let latency_us = intended.elapsed().as_micros() as u64;
                            let _ = tx.send(Sample {
                                key,
                                status,
                                latency_us,
                            });
                        });
                        i += 1;
                    }
                })
                .context("starting the pacer thread")?;
            // The pacer's requests hold their own senders: the collector ends when the last one
            // has answered.
            tokio::task::spawn_blocking(move || pacer.join())
                .await
                .context("pacer thread")?
                .map_err(|_| anyhow::anyhow!("the pacer thread panicked"))?;
        }
        Mode::Closed => {
            let mut workers = tokio::task::JoinSet::new();
            for _ in 0..phase.concurrency {
                let (target, tx, sent) = (target.clone(), tx.clone(), sent.clone());
                let max = phase.max_requests;
                workers.spawn(async move {
                    loop {
                        let i = sent.fetch_add(1, Ordering::Relaxed);
                        if i >= max || Instant::now() >= end {
                            break;
                        }
                        let t0 = Instant::now();
                        let (key, status) = send_one(&target, i).await;
                        let _ = tx.send(Sample {
                            key,
                            status,
                            latency_us: t0.elapsed().as_micros() as u64,
                        });
                    }
                });
            }
            while workers.join_next().await.is_some() {}
        }
    }
    drop(tx);
    let rec = collector.await.context("collector task")??;
    let elapsed = start.elapsed();
    ticker.abort();
    bar.finish_and_clear();
    Ok((rec, elapsed))
}

/// Sets this thread's timer slack to 1 ns so that its sleeps end when asked (the default slack
/// is 50 us; prctl(2), PR_SET_TIMERSLACK). Best effort: elsewhere than Linux nothing changes.
fn set_fine_timer_slack() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and only changes this thread's slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_expand_to_exact_shares() {
        assert_eq!(weight_schedule(&[3, 1]), vec![0, 0, 0, 1]);
        assert_eq!(weight_schedule(&[]), vec![0]);
        assert_eq!(weight_schedule(&[0, 2]), vec![1, 1]);
    }
}
