//! Shared helpers of the backend's integration tests: a trained digits repository (made once
//! per test binary), a real `maas-backend serve` on a free loopback port, the digits rows.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

pub const BIN: &str = env!("CARGO_BIN_EXE_maas-backend");

/// The workspace root (the parent of `backend/`).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("backend/ has a parent")
        .to_path_buf()
}

pub fn data_path() -> PathBuf {
    workspace().join("data/digits.csv.gz")
}

/// A model repository with `digits` (version 1 trained on the digits table, no batching) and
/// `digits_batched` (the same weights, `max_batch_size = 64`, dynamic batching with a 2 ms
/// delay). Trained once per test binary, under cargo's per-target temp folder.
pub fn trained_repo() -> &'static Path {
    static REPO: OnceLock<PathBuf> = OnceLock::new();
    REPO.get_or_init(|| {
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        remove_stale_repos(tmp);
        let repo = tmp.join(format!("protocol-repo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&repo);
        std::fs::create_dir_all(&repo).unwrap();
        let output = workspace_bin("maas-train")
            .args(["train", "--epochs", "15", "--data"])
            .arg(data_path())
            .arg("--repo")
            .arg(&repo)
            .args(["--model", "digits"])
            .output()
            .expect("run maas-train train");
        assert!(
            output.status.success(),
            "train failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let batched = repo.join("digits_batched");
        std::fs::create_dir_all(batched.join("1")).unwrap();
        std::fs::copy(
            repo.join("digits/1/model.safetensors"),
            batched.join("1/model.safetensors"),
        )
        .unwrap();
        let config = std::fs::read_to_string(repo.join("digits/config.toml")).unwrap();
        let config = config.replace(
            "max_batch_size = 0\n",
            "max_batch_size = 64\n\n[dynamic_batching]\nmax_queue_delay_us = 2000\nmax_queue_size = 256\n",
        );
        assert!(config.contains("[dynamic_batching]"), "{config}");
        std::fs::write(batched.join("config.toml"), config).unwrap();
        repo
    })
}

/// Another binary of the workspace (`maas-train`, `maas-bench`), next to `maas-backend` (the
/// workspace's binaries share one target folder; `make test` builds them all first).
pub fn workspace_bin(name: &str) -> Command {
    let path = Path::new(BIN).with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} not found: run `cargo build --workspace --bins` first (make test does)",
        path.display()
    );
    Command::new(path)
}

/// Removes `protocol-repo-<pid>` folders of test processes that are gone.
fn remove_stale_repos(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(pid) = name.strip_prefix("protocol-repo-") else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A running `maas-backend serve`, killed on drop (also when the test panics).
pub struct Server {
    pub child: Child,
    /// `127.0.0.1:port`.
    pub addr: String,
    log: PathBuf,
}

impl Server {
    /// Starts the server on a free port with `extra` arguments.
    pub fn start(repo: &Path, extra: &[&str]) -> Server {
        Server::run("serve", repo, extra)
    }

    /// Starts `maas-backend <command> --repo <repo> --listen 127.0.0.1:0 <extra>` (`serve` or
    /// `serve-stage`) and waits for its `listening on` line.
    pub fn run(command: &str, repo: &Path, extra: &[&str]) -> Server {
        let log = std::env::temp_dir().join(format!(
            "maas-backend-serve-{}-{}.log",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let log_file = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(BIN)
            .args([command, "--repo"])
            .arg(repo)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("start maas-backend serve");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let Some(addr) = line.trim().strip_prefix("maas-backend listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("unexpected first line {line:?}; stderr:\n{stderr}");
        };
        Server {
            child,
            addr: addr.to_string(),
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// GETs `url`; its JSON answer, whatever the status.
pub async fn get_json(client: &reqwest::Client, url: String) -> serde_json::Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// POSTs `body` as JSON to `url`; the status and the JSON answer.
pub async fn post_json(
    client: &reqwest::Client,
    url: String,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let response = client.post(url).json(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// The first `n` rows of the digits table: (64 raw pixels, label).
pub fn digits_rows(n: usize) -> Vec<(Vec<f32>, usize)> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(data_path()).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    text.lines()
        .take(n)
        .map(|line| {
            let values: Vec<f32> = line.split(',').map(|v| v.trim().parse().unwrap()).collect();
            let (label, pixels) = values.split_last().unwrap();
            (pixels.to_vec(), *label as usize)
        })
        .collect()
}

pub mod raw_http;

/// The unit tests' helpers (a temp folder removed on drop), shared with the integration tests.
#[path = "../../src/testutil.rs"]
mod testutil;
#[allow(unused_imports)]
pub use testutil::TempDir;
