//! The load loops. Latency is measured in microseconds; in open loop from each request's
//! intended send time (as wrk2 does, so coordinated omission cannot hide a stall), in closed
//! loop from the actual send.
//!
//! Everything runs on one thread (a current-thread tokio runtime and its `LocalSet`), as `wrk
//! -t1` does: each slot (a closed-loop worker, or one request in flight in open loop) owns one
//! keep-alive connection ([`Connection`]), opened before the clock starts and kept across
//! phases; the open loop's arrivals are paced by a timerfd on that same thread ([`Timer`]), so
//! between an intended send time and the write there is one wake-up of this thread, and no
//! hand-off to another.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::Full;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::body::PreparedBody;
use crate::conn::Connection;
use crate::record::{Recorder, Sample};
use crate::scenario::Mode;
use crate::schedule::Schedule;
use crate::timer::Timer;

/// Everything needed to send one request.
pub struct Target {
    /// The infer URL's path and query (origin form, RFC 9112 section 3.2.1).
    pub uri: Uri,
    /// The `Host` header: the URL's authority.
    pub host: HeaderValue,
    /// `(label, Authorization header value)` per key; `None`: no credential.
    pub keys: Vec<(String, Option<HeaderValue>)>,
    /// Key index for request `i` is `schedule[i % schedule.len()]` (weights expanded).
    pub schedule: Vec<usize>,
    /// Bodies, cycled.
    pub bodies: Vec<PreparedBody>,
    /// Per-request timeout; a request that exceeds it counts as a transport error.
    pub timeout: Duration,
}

const JSON: HeaderValue = HeaderValue::from_static("application/json");
const OCTETS: HeaderValue = HeaderValue::from_static("application/octet-stream");
const INFERENCE_HEADER_LENGTH: HeaderName =
    HeaderName::from_static(maas_protocol::HEADER_CONTENT_LENGTH);

impl Target {
    /// Request `i`: its key index and the request (key and body cycled by `i`).
    fn request(&self, i: u64) -> (usize, Request<Full<Bytes>>) {
        let key = self.schedule[(i % self.schedule.len() as u64) as usize];
        let body = &self.bodies[(i % self.bodies.len() as u64) as usize];
        let mut req = Request::new(Full::new(body.bytes.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.uri.clone();
        let h = req.headers_mut();
        h.insert(HOST, self.host.clone());
        match body.header_len {
            Some(n) => {
                h.insert(CONTENT_TYPE, OCTETS);
                h.insert(INFERENCE_HEADER_LENGTH, HeaderValue::from(n));
            }
            None => {
                h.insert(CONTENT_TYPE, JSON);
            }
        }
        if let Some((_, Some(auth))) = self.keys.get(key) {
            h.insert(AUTHORIZATION, auth.clone());
        }
        (key, req)
    }

    /// Sends request `i` on `conn`; returns its key index and status (`None`: no answer).
    async fn send(&self, conn: &mut Connection, i: u64) -> (usize, Option<u16>) {
        let (key, req) = self.request(i);
        let status = match tokio::time::timeout(self.timeout, conn.send(req)).await {
            Ok(Ok(status)) => Some(status),
            Ok(Err(_)) => None,
            Err(_elapsed) => {
                conn.close();
                None
            }
        };
        (key, status)
    }
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

/// Parameters of one phase (warm-up or measured); its concurrency is the number of [`Slots`].
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    /// Open loop: while a request is in flight, poll the reactor without sleeping (the thread
    /// stays awake for the answer instead of being woken for it, as a back-to-back closed loop
    /// does); costs a core while requests are in flight.
    pub busy_poll: bool,
    /// Open or closed loop.
    pub mode: Mode,
    /// Open loop: requests per second.
    pub rate: f64,
    /// How long, seconds.
    pub duration_s: f64,
    /// At most this many requests.
    pub max_requests: u64,
}

/// One connection per slot, kept open from one phase to the next.
pub struct Slots {
    conns: Vec<Connection>,
}

impl Slots {
    /// `n` connections to `addr`, opened now (so that connecting stays out of the
    /// measurement). A connection that cannot be opened is retried on its first request.
    pub async fn open(addr: SocketAddr, n: usize) -> Self {
        let mut conns: Vec<Connection> = (0..n).map(|_| Connection::new(addr)).collect();
        for c in &mut conns {
            let _ = c.open().await;
        }
        Slots { conns }
    }
}

/// Open-loop work queue: intended send times the slots take in order.
#[derive(Default)]
struct Arrivals {
    due: RefCell<VecDeque<(u64, Instant)>>,
    /// The pacer has scheduled its last request.
    done: Cell<bool>,
    ready: Notify,
    /// A request went in flight (wakes the busy poller).
    busy: Notify,
}

impl Arrivals {
    /// The next request due, waiting for the pacer; `None` when the phase has none left.
    async fn next(&self) -> Option<(u64, Instant)> {
        loop {
            if let Some(job) = self.due.borrow_mut().pop_front() {
                return Some(job);
            }
            if self.done.get() {
                return None;
            }
            self.ready.notified().await;
        }
    }
}

/// Runs one phase on the current thread's `LocalSet` and returns its recorder plus the wall
/// time it took. The slots' connections are used and handed back for the next phase.
///
/// # Errors
/// Only internal failures (a histogram or the timerfd that cannot be created); request
/// failures are counted.
pub async fn run_phase(
    target: Rc<Target>,
    slots: &mut Slots,
    phase: Phase,
    progress: bool,
) -> anyhow::Result<(Recorder, Duration)> {
    let labels: Vec<String> = target.keys.iter().map(|(l, _)| l.clone()).collect();
    let rec = Rc::new(RefCell::new(Recorder::new(labels)?));
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
    let sent = Rc::new(Cell::new(0u64));
    let mut timer = Timer::new().context("creating the pacing timerfd")?;
    let start = Instant::now();
    let duration = Duration::from_secs_f64(phase.duration_s);
    let end = start + duration;
    let ticker = {
        let (bar, sent) = (bar.clone(), sent.clone());
        tokio::task::spawn_local(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                bar.set_position(start.elapsed().as_millis() as u64);
                bar.set_message(format!("sent {}", sent.get()));
            }
        })
    };

    let mut workers = JoinSet::new();
    match phase.mode {
        Mode::Open => {
            let arrivals = Rc::new(Arrivals::default());
            let in_flight = Rc::new(Cell::new(0usize));
            let poller = phase.busy_poll.then(|| {
                let (arrivals, in_flight) = (arrivals.clone(), in_flight.clone());
                tokio::task::spawn_local(async move {
                    loop {
                        if in_flight.get() > 0 {
                            // A yielded task runs again after a non-blocking poll of the reactor.
                            tokio::task::yield_now().await;
                        } else {
                            arrivals.busy.notified().await;
                        }
                    }
                })
            });
            for mut conn in slots.conns.drain(..) {
                let (target, arrivals, rec, sent, in_flight) = (
                    target.clone(),
                    arrivals.clone(),
                    rec.clone(),
                    sent.clone(),
                    in_flight.clone(),
                );
                workers.spawn_local(async move {
                    while let Some((i, intended)) = arrivals.next().await {
                        // Waiting for a free slot counts as latency: it is the server's delay.
                        let started = Instant::now();
                        sent.set(sent.get() + 1);
                        in_flight.set(in_flight.get() + 1);
                        arrivals.busy.notify_one();
                        let (key, status) = target.send(&mut conn, i).await;
                        let done = Instant::now();
                        in_flight.set(in_flight.get() - 1);
                        rec.borrow_mut().record(Sample {
                            key,
                            status,
                            latency_us: micros(done - intended),
                            send_lag_us: Some(micros(started - intended)),
                        });
                    }
                    conn
                });
            }
            let schedule = Schedule::new(start, duration, phase.rate, phase.max_requests);
            let mut i = 0;
            while let Some(intended) = schedule.at(i) {
                timer
                    .sleep_until(intended)
                    .await
                    .context("waiting on the pacing timerfd")?;
                arrivals.due.borrow_mut().push_back((i, intended));
                arrivals.ready.notify_one();
                i += 1;
            }
            arrivals.done.set(true);
            arrivals.ready.notify_waiters();
            while let Some(conn) = workers.join_next().await {
                slots.conns.push(conn.context("a load slot")?);
            }
            if let Some(p) = poller {
                p.abort();
            }
        }
        Mode::Closed => {
            let next = Rc::new(Cell::new(0u64));
            for mut conn in slots.conns.drain(..) {
                let (target, next, rec, sent) =
                    (target.clone(), next.clone(), rec.clone(), sent.clone());
                let max = phase.max_requests;
                workers.spawn_local(async move {
                    loop {
                        let i = next.get();
                        if i >= max || Instant::now() >= end {
                            break;
                        }
                        next.set(i + 1);
                        sent.set(i + 1);
                        let t0 = Instant::now();
                        let (key, status) = target.send(&mut conn, i).await;
                        rec.borrow_mut().record(Sample {
                            key,
                            status,
                            latency_us: micros(t0.elapsed()),
                            send_lag_us: None,
                        });
                    }
                    conn
                });
            }
        }
    }
    while let Some(conn) = workers.join_next().await {
        slots.conns.push(conn.context("a load slot")?);
    }
    let elapsed = start.elapsed();
    ticker.abort();
    bar.finish_and_clear();
    drop(target);
    let rec = Rc::try_unwrap(rec)
        .map_err(|_| anyhow::anyhow!("a load slot outlived its phase"))?
        .into_inner();
    Ok((rec, elapsed))
}

fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
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
