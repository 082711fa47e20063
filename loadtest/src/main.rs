//! `maas-loadtest`: a load generator that speaks HTTP like any client.
//!
//! Closed-loop concurrency mode: `--concurrency` workers each send one request, wait for the
//! answer, and send the next, until `--requests` have been sent or `--duration` has passed
//! (whichever comes first). Latencies go into an HDR histogram (microseconds, 3 significant
//! digits); the report is a table on stderr and JSON on stdout.
//!
//! The request is an Open Inference Protocol v2 infer call. Its body comes from `--body FILE`
//! (sent as is) or, by default, from a real row of the digits data set (`--digits CSV.gz`).

mod report;

use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use hdrhistogram::Histogram;

use report::Report;

#[derive(Parser, Debug)]
#[command(name = "maas-loadtest", version, about = "Load generator for maas")]
struct Args {
    /// Full URL of the infer endpoint, e.g. http://127.0.0.1:8080/v2/models/digits/infer.
    /// Only loopback addresses are allowed unless --allow-remote is given.
    #[arg(long)]
    url: String,
    /// API key sent as `Authorization: Bearer <key>`.
    #[arg(long, env = "MAAS_API_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Concurrent workers (closed loop).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Stop after this many requests in total.
    #[arg(long, default_value_t = 10_000)]
    requests: u64,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// JSON body to send (as is). Default: one digits row as an OIP v2 infer request.
    #[arg(long)]
    body: Option<PathBuf>,
    /// Digits data (CSV, gzip) used for the default body.
    #[arg(long, default_value = "data/digits.csv.gz")]
    digits: PathBuf,
    /// Rows per request in the default body (the batch dimension).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Permit a non-loopback target.
    #[arg(long)]
    allow_remote: bool,
}

fn digits_body(path: &PathBuf, batch: usize) -> anyhow::Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    let mut data = Vec::with_capacity(batch * 64);
    for line in text.lines().cycle().take(batch) {
        let values: Vec<f32> = line
            .split(',')
            .map(|x| x.trim().parse::<f32>())
            .collect::<Result<_, _>>()
            .context("digits row is not numeric")?;
        if values.len() != 65 {
            bail!("digits row has {} columns, expected 65", values.len());
        }
        data.extend_from_slice(&values[..64]);
    }
    let body = serde_json::json!({
        "inputs": [{"name": "input", "shape": [batch, 64], "datatype": "FP32", "data": data}]
    });
    Ok(serde_json::to_vec(&body)?)
}

fn check_target(url: &str, allow_remote: bool) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("bad --url {url}"))?;
    let host = parsed.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback && !allow_remote {
        bail!("refusing to load {host}: not a loopback address (pass --allow-remote to insist)");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    check_target(&args.url, args.allow_remote)?;
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let body = match &args.body {
        Some(p) => std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        None => digits_body(&args.digits, args.batch.max(1))?,
    };
    let body = bytes::Bytes::from(body);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let sent = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration.max(0.0));
    let started = Instant::now();

    let mut workers = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        let client = client.clone();
        let body = body.clone();
        let sent = sent.clone();
        let url = args.url.clone();
        let key = args.key.clone();
        let limit = args.requests;
        workers.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
            let mut errors = 0u64;
            while Instant::now() < deadline && sent.fetch_add(1, Ordering::Relaxed) < limit {
                let mut req = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone());
                if let Some(k) = &key {
                    req = req.bearer_auth(k);
                }
                let t0 = Instant::now();
                match req.send().await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let _ = resp.bytes().await;
                        hist.saturating_record(t0.elapsed().as_micros() as u64);
                        *statuses.entry(status).or_default() += 1;
                    }
                    Err(_) => errors += 1,
                }
            }
            anyhow::Ok((hist, statuses, errors))
        }));
    }

    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    let mut errors = 0;
    for w in workers {
        let (h, s, e) = w.await??;
        hist.add(&h)?;
        for (k, v) in s {
            *statuses.entry(k).or_default() += v;
        }
        errors += e;
    }
    let report = Report::new(&hist, statuses, errors, started.elapsed(), args.concurrency);
    eprintln!("{}", report.table());
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
