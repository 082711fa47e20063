//! Scenario files (`loadtest/scenarios/*.toml`): what load to send, where, and as whom.
//!
//! Every key can also be set on the command line, which overrides the file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

/// How requests are issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Constant arrival rate (`rate` requests/s), as wrk2: each request has an intended send
    /// time and its latency is measured from that time, so a stalled server is charged for
    /// the requests it delayed (no coordinated omission).
    Open,
    /// `concurrency` workers, each sending its next request when the previous one is answered.
    Closed,
}

/// Where request bodies come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BodySource {
    /// Real rows of the digits data set (64 features), cycled.
    Digits,
    /// Random values shaped after the model's metadata (`GET /v2/models/{model}`).
    Random,
    /// A file sent as is (`body_file`).
    File,
}

/// How tensors are encoded in the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// `"data": [...]` in the JSON body.
    Json,
    /// Open Inference Protocol binary tensor data extension: a JSON header
    /// (`Inference-Header-Content-Length`) followed by little-endian row-major bytes.
    Binary,
}

/// One credential and its share of the traffic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// Label for the report (e.g. the tenant's name).
    #[serde(default)]
    pub label: Option<String>,
    /// The API key itself (prefer `key_env` in committed files).
    #[serde(default)]
    pub key: Option<String>,
    /// Name of an environment variable holding the API key.
    #[serde(default)]
    pub key_env: Option<String>,
    /// Relative share of requests sent with this key (default 1).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// The body section of a scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodySpec {
    /// `digits` (default), `random` or `file`.
    #[serde(default = "default_source")]
    pub source: BodySource,
    /// `json` (default) or `binary`.
    #[serde(default = "default_encoding")]
    pub encoding: Encoding,
    /// Rows per request (the batch dimension), default 1.
    #[serde(default = "one_usize")]
    pub batch: usize,
    /// The digits data (CSV, gzip), default `data/digits.csv.gz`.
    #[serde(default = "default_digits")]
    pub digits_path: PathBuf,
    /// The file for `source = "file"`.
    #[serde(default)]
    pub body_file: Option<PathBuf>,
    /// Input tensor name, default `input`.
    #[serde(default = "default_input")]
    pub input_name: String,
}

fn default_source() -> BodySource {
    BodySource::Digits
}
fn default_encoding() -> Encoding {
    Encoding::Json
}
fn one_usize() -> usize {
    1
}
fn default_digits() -> PathBuf {
    PathBuf::from("data/digits.csv.gz")
}
fn default_input() -> String {
    "input".to_string()
}

impl Default for BodySpec {
    fn default() -> Self {
        BodySpec {
            source: default_source(),
            encoding: default_encoding(),
            batch: 1,
            digits_path: default_digits(),
            body_file: None,
            input_name: default_input(),
        }
    }
}

/// A whole scenario. Units: seconds, requests per second.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name shown in the report.
    #[serde(default = "default_name")]
    pub name: String,
    /// Full URL of the infer endpoint (`.../v2/models/{model}/infer`). Loopback only unless
    /// `--allow-remote`.
    #[serde(default)]
    pub url: Option<String>,
    /// `open` (default) or `closed`.
    #[serde(default = "default_mode")]
    pub mode: Mode,
    /// Open loop: requests per second.
    #[serde(default = "default_rate")]
    pub rate: f64,
    /// Closed loop: workers. Open loop: the most requests in flight at once (connections).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Measured duration, seconds.
    #[serde(default = "default_duration")]
    pub duration_s: f64,
    /// Unmeasured warm-up before the measured run, seconds (same load).
    #[serde(default)]
    pub warmup_s: f64,
    /// Stop after this many measured requests.
    #[serde(default = "default_max_requests")]
    pub max_requests: u64,
    /// Per-request timeout, seconds.
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Credentials and their weights; none means no `Authorization` header.
    #[serde(default)]
    pub keys: Vec<KeySpec>,
    /// Request bodies.
    #[serde(default)]
    pub body: BodySpec,
}

fn default_name() -> String {
    "adhoc".to_string()
}
fn default_mode() -> Mode {
    Mode::Open
}
fn default_rate() -> f64 {
    100.0
}
fn default_concurrency() -> usize {
    32
}
fn default_duration() -> f64 {
    10.0
}
fn default_max_requests() -> u64 {
    10_000_000
}
fn default_timeout() -> f64 {
    10.0
}

impl Default for Scenario {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("an empty scenario has only defaults"))
    }
}

impl Scenario {
    /// Reads a scenario file.
    ///
    /// # Errors
    /// The file cannot be read, is not TOML, or has an unknown key.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing scenario {}", path.display()))
    }

    /// Checks the values make a runnable scenario.
    ///
    /// # Errors
    /// A missing URL, a non-positive rate, zero concurrency or batch, or a negative duration.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.url.is_none() {
            bail!("no target: set `url` in the scenario or pass --url");
        }
        if self.mode == Mode::Open && !(self.rate > 0.0 && self.rate.is_finite()) {
            bail!("open loop needs rate > 0 requests/s, got {}", self.rate);
        }
        if self.concurrency == 0 {
            bail!("concurrency must be at least 1");
        }
        if self.body.batch == 0 {
            bail!("body.batch must be at least 1");
        }
        if !(self.duration_s >= 0.0 && self.warmup_s >= 0.0 && self.timeout_s > 0.0) {
            bail!("duration_s and warmup_s must be >= 0 and timeout_s > 0");
        }
        if self.body.source == BodySource::File && self.body.body_file.is_none() {
            bail!("body.source = \"file\" needs body.body_file");
        }
        Ok(())
    }

    /// Resolves the keys to (label, secret, weight), reading `key_env` variables.
    ///
    /// # Errors
    /// A key with neither `key` nor `key_env`, or an unset variable.
    pub fn resolved_keys(&self) -> anyhow::Result<Vec<(String, String, u32)>> {
        self.keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let secret = match (&k.key, &k.key_env) {
                    (Some(s), _) => s.clone(),
                    (None, Some(var)) => std::env::var(var).with_context(|| {
                        format!("keys[{i}]: environment variable {var} is not set")
                    })?,
                    (None, None) => bail!("keys[{i}]: set `key` or `key_env`"),
                };
                let label = k.label.clone().unwrap_or_else(|| format!("key{i}"));
                Ok((label, secret, k.weight))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scenario_file_parses_with_defaults_filled_in() {
        let s: Scenario = toml::from_str(
            r#"
            name = "t"
            url = "http://127.0.0.1:1/v2/models/m/infer"
            rate = 250
            [body]
            encoding = "binary"
            batch = 4
            [[keys]]
            key = "k1"
            weight = 3
            [[keys]]
            label = "b"
            key = "k2"
            "#,
        )
        .expect("parses");
        assert_eq!(s.mode, Mode::Open);
        assert_eq!(s.rate, 250.0);
        assert_eq!(s.body.encoding, Encoding::Binary);
        assert_eq!(s.body.batch, 4);
        assert_eq!(s.body.source, BodySource::Digits);
        let keys = s.resolved_keys().expect("keys");
        assert_eq!(keys[0], ("key0".to_string(), "k1".to_string(), 3));
        assert_eq!(keys[1], ("b".to_string(), "k2".to_string(), 1));
        s.validate().expect("valid");
    }

    #[test]
    fn bad_scenarios_say_what_is_wrong() {
        let err = toml::from_str::<Scenario>("rat = 1").expect_err("unknown key");
        assert!(err.to_string().contains("rat"), "{err}");
        let s = Scenario::default();
        assert!(s
            .validate()
            .expect_err("no url")
            .to_string()
            .contains("url"));
        let s: Scenario = toml::from_str("url = \"http://127.0.0.1:1/\"\nrate = 0").expect("toml");
        assert!(s.validate().expect_err("rate").to_string().contains("rate"));
    }

    #[test]
    fn committed_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("scenarios folder") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::load(&path).expect("scenario parses");
                n += 1;
            }
        }
        assert!(n > 0, "no scenarios in {}", dir.display());
    }
}
