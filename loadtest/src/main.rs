//! `maas-loadtest`: a load generator that speaks HTTP like any client.
//!
//! - Open loop (`--mode open --rate R`): constant arrival rate; each request's latency is
//!   measured from its intended send time (as wrk2), so a server stall is not hidden by the
//!   generator waiting for it (no coordinated omission).
//! - Closed loop (`--mode closed --concurrency C`): C workers back to back.
//!
//! Bodies are Open Inference Protocol v2 infer requests: real digits rows, random tensors
//! shaped after the model's metadata, or a file; JSON or binary tensor encoding. Several keys
//! with weights. Latencies go into HDR histograms (1 us .. 60 s, 3 significant digits). The
//! report is a table on stderr, JSON on stdout (or `--json FILE`), and an SVG plot (`--plot`).
//! Scenario files live in `loadtest/scenarios/`.

mod body;
mod conn;
mod plot;
mod record;
mod report;
mod runner;
mod scenario;
mod schedule;
mod timer;

use std::path::PathBuf;
use std::rc::Rc;

use anyhow::{bail, Context};
use clap::Parser;

use report::Report;
use runner::{run_phase, weight_schedule, Phase, Slots, Target};
use scenario::{BodySource, Encoding, KeySpec, Mode, Scenario};

#[derive(Parser, Debug)]
#[command(name = "maas-loadtest", version, about = "Load generator for maas")]
struct Args {
    /// Scenario file (TOML, see loadtest/scenarios/); flags below override it.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Infer URL, e.g. http://127.0.0.1:8080/v2/models/digits/infer.
    #[arg(long)]
    url: Option<String>,
    /// open (constant arrival rate) or closed (fixed concurrency).
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Open loop: requests per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Closed: workers. Open: most requests in flight.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Measured seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Unmeasured warm-up seconds.
    #[arg(long)]
    warmup: Option<f64>,
    /// Stop after this many measured requests.
    #[arg(long)]
    requests: Option<u64>,
    /// API key (replaces the scenario's keys).
    #[arg(long, env = "MAAS_API_KEY", hide_env_values = true)]
    key: Option<String>,
    /// digits, random or file.
    #[arg(long, value_enum)]
    body: Option<BodySource>,
    /// Body file for `--body file`.
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// json or binary.
    #[arg(long, value_enum)]
    encoding: Option<Encoding>,
    /// Rows per request.
    #[arg(long)]
    batch: Option<usize>,
    /// Digits data (CSV, gzip).
    #[arg(long)]
    digits: Option<PathBuf>,
    /// Scenario name for the report.
    #[arg(long)]
    name: Option<String>,
    /// Write the JSON report here instead of stdout.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a latency-by-percentile SVG plot here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Open loop: keep the thread awake (polling, not sleeping) while a request is in flight,
    /// so that the answer is read when it comes rather than after a wake-up; costs a core
    /// while requests are in flight.
    #[arg(long)]
    busy_poll: bool,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Permit a non-loopback target.
    #[arg(long)]
    allow_remote: bool,
}

fn apply_overrides(mut s: Scenario, a: &Args) -> Scenario {
    if let Some(v) = &a.url {
        s.url = Some(v.clone());
    }
    if let Some(v) = a.mode {
        s.mode = v;
    }
    if let Some(v) = a.rate {
        s.rate = v;
    }
    if let Some(v) = a.concurrency {
        s.concurrency = v;
    }
    if let Some(v) = a.duration {
        s.duration_s = v;
    }
    if let Some(v) = a.warmup {
        s.warmup_s = v;
    }
    if let Some(v) = a.requests {
        s.max_requests = v;
    }
    if let Some(v) = &a.key {
        if s.keys
            .iter()
            .all(|k| k.key.is_none() && k.key_env.is_none())
            || a.scenario.is_none()
        {
            s.keys = vec![KeySpec {
                label: Some("key".into()),
                key: Some(v.clone()),
                key_env: None,
                weight: 1,
            }];
        }
    }
    if let Some(v) = a.body {
        s.body.source = v;
    }
    if let Some(v) = &a.body_file {
        s.body.body_file = Some(v.clone());
    }
    if let Some(v) = a.encoding {
        s.body.encoding = v;
    }
    if let Some(v) = a.batch {
        s.body.batch = v;
    }
    if let Some(v) = &a.digits {
        s.body.digits_path = v.clone();
    }
    if let Some(v) = &a.name {
        s.name = v.clone();
    }
    s
}

/// Refuses targets off this machine unless explicitly allowed.
fn check_target(url: &reqwest::Url, allow_remote: bool) -> anyhow::Result<()> {
    let host = url.host_str().unwrap_or_default();
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

/// `GET /v2/models/{model}` for the model named in an infer URL; returns its first input.
async fn fetch_input_metadata(
    client: &reqwest::Client,
    url: &reqwest::Url,
    auth: Option<&str>,
) -> anyhow::Result<body::InputMetadata> {
    let path = url.path();
    let Some(idx) = path.find("/infer") else {
        bail!("random bodies need an infer URL ending in /infer, got {path}");
    };
    let mut meta_url = url.clone();
    let mut base = path[..idx].to_string();
    if let Some(v) = base.find("/versions/") {
        base.truncate(v);
    }
    meta_url.set_path(&base);
    let mut req = client.get(meta_url.clone());
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("GET {meta_url}"))?;
    if !resp.status().is_success() {
        bail!("GET {meta_url}: HTTP {}", resp.status());
    }
    #[derive(serde::Deserialize)]
    struct Meta {
        inputs: Vec<body::InputMetadata>,
    }
    let meta: Meta = resp.json().await.context("model metadata")?;
    meta.inputs
        .into_iter()
        .next()
        .context("the model's metadata lists no input")
}

/// One thread, as `wrk -t1`: the load loops, their connections and their pacing timer share a
/// current-thread runtime (see `runner`).
#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let local = tokio::task::LocalSet::new();
    match local.run_until(run(Args::parse())).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // One line, the causes joined by ": " (anyhow's alternate form), and no backtrace.
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let base = match &args.scenario {
        Some(p) => Scenario::load(p)?,
        None => Scenario::default(),
    };
    let s = apply_overrides(base, &args);
    s.validate()?;
    let url_text = s.url.clone().context("no url")?;
    let url = reqwest::Url::parse(&url_text).with_context(|| format!("bad url {url_text}"))?;
    check_target(&url, args.allow_remote)?;

    let keys = s.resolved_keys()?;
    if url.scheme() != "http" {
        bail!("only http:// targets are supported, got {url_text}");
    }
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs_f64(s.timeout_s))
        .build()?;
    let auth_headers: Vec<(String, Option<String>)> = if keys.is_empty() {
        vec![("anonymous".to_string(), None)]
    } else {
        keys.iter()
            .map(|(l, k, _)| (l.clone(), Some(format!("Bearer {k}"))))
            .collect()
    };
    let auth_values = auth_headers
        .iter()
        .map(|(l, a)| {
            let value = a
                .as_deref()
                .map(http::HeaderValue::from_str)
                .transpose()
                .with_context(|| format!("key {l}: not a valid header value"))?;
            Ok((l.clone(), value))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let host = url.host_str().context("the url has no host")?;
    let port = url.port_or_known_default().unwrap_or(80);
    let addr = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let weights: Vec<u32> = if keys.is_empty() {
        vec![1]
    } else {
        keys.iter().map(|(_, _, w)| *w).collect()
    };

    let metadata = if s.body.source == BodySource::Random {
        Some(fetch_input_metadata(&client, &url, auth_headers[0].1.as_deref()).await?)
    } else {
        None
    };
    let bodies = body::build_pool(&s.body, metadata.as_ref())?;
    let target = Rc::new(Target {
        uri: http::Uri::try_from(path.as_str())
            .with_context(|| format!("bad path in {url_text}"))?,
        host: http::HeaderValue::from_str(&authority)
            .with_context(|| format!("bad host in {url_text}"))?,
        keys: auth_values,
        schedule: weight_schedule(&weights),
        bodies,
        timeout: std::time::Duration::from_secs_f64(s.timeout_s),
    });
    let mut slots = Slots::open(addr, s.concurrency).await;

    let phase = Phase {
        busy_poll: args.busy_poll,
        mode: s.mode,
        rate: s.rate,
        duration_s: s.duration_s,
        max_requests: s.max_requests,
    };
    let progress = !args.no_progress;
    if s.warmup_s > 0.0 {
        let warm = Phase {
            duration_s: s.warmup_s,
            ..phase
        };
        run_phase(target.clone(), &mut slots, warm, progress).await?;
    }
    let (rec, elapsed) = run_phase(target, &mut slots, phase, progress).await?;
    let mode = match s.mode {
        Mode::Open => "open",
        Mode::Closed => "closed",
    };
    let rate = (s.mode == Mode::Open).then_some(s.rate);
    let report = Report::new(&s.name, mode, rate, s.concurrency, &rec, elapsed);
    eprint!("{}", report.table());
    let json = serde_json::to_string_pretty(&report)?;
    match &args.json {
        Some(p) => std::fs::write(p, json).with_context(|| format!("writing {}", p.display()))?,
        None => println!("{json}"),
    }
    if let Some(p) = &args.plot {
        plot::write_svg(p, &[&report])?;
    }
    Ok(())
}
