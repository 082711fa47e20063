//! Shared helpers of the training crate's integration tests: the workspace's data files, the
//! `maas-backend` binary (another package's, see [`backend_bin`]), a real `maas-backend serve`
//! on a free loopback port, and a temporary folder.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

/// This package's own binary, which cargo builds for these tests.
pub const TRAIN_BIN: &str = env!("CARGO_BIN_EXE_maas-train");

/// The workspace root (the parent of `training/`).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("training/ has a parent")
        .to_path_buf()
}

pub fn data_path() -> PathBuf {
    workspace().join("data/digits.csv.gz")
}

/// The `maas-backend` binary, up to date (see [`workspace_bin`]).
pub fn backend_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("maas-backend", "maas-backend"))
}

/// Another workspace package's binary `bin`, up to date, in this test's own
/// `target/<profile>/` folder.
///
/// Cargo gives a test the path of its own package's binaries only (`CARGO_BIN_EXE_<name>`),
/// and `cargo test -p maas-train` does not build `maas-backend`'s binary. So this runs
/// `cargo build --workspace --bins` with the target folder and profile this test binary was
/// built with (read from its path, `target/<profile>/deps/<test>`): the very build `make test`
/// runs first, so there it is a no-op (building one package alone would unify dependency
/// features differently and rebuild them), a build when a binary is missing or stale, never a
/// run of an outdated server. Serving in process through
/// the backend's router is not an option: these tests stop the server with SIGTERM and read its
/// exit status.
pub fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test binary lives in target/<profile>/deps");
    let target_dir = profile_dir.parent().expect("target/<profile> has a parent");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "--workspace", "--bins"])
        .args(["--profile", profile, "--target-dir"])
        .arg(target_dir)
        .current_dir(workspace())
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run cargo build --workspace --bins (for {package}): {e}")
        });
    assert!(
        status.success(),
        "cargo build --workspace --bins (for {package}'s {bin}) failed"
    );
    let path = profile_dir.join(bin);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// A running `maas-backend serve`, killed on drop (also when the test panics).
pub struct Server {
    pub child: Child,
    /// `127.0.0.1:port`.
    pub addr: String,
    log: PathBuf,
}

impl Server {
    /// Starts `maas-backend serve --repo <repo> --listen 127.0.0.1:0 <extra>` and waits for
    /// its `listening on` line.
    pub fn start(repo: &Path, extra: &[&str]) -> Server {
        let log = std::env::temp_dir().join(format!(
            "maas-train-serve-{}-{}.log",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let log_file = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(backend_bin())
            .args(["serve", "--repo"])
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

/// The backend's unit-test helpers (a temp folder removed on drop), shared with its own and
/// these integration tests.
#[path = "../../../backend/src/testutil.rs"]
mod testutil;
pub use testutil::TempDir;
