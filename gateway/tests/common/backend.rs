//! Real `maas-backend serve` processes for the gateway's integration tests: started on a
//! loopback port over a model repository, SIGKILLed (and restarted on the same address) at
//! will.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{workspace_bin, ChildGuard};

/// A running `maas-backend serve`, SIGKILLed on drop.
pub struct Backend {
    /// The process (`None` once killed).
    pub child: Option<ChildGuard>,
    /// Its OIP v2 REST address.
    pub addr: SocketAddr,
    /// The model repository it serves.
    pub repo: PathBuf,
}

impl Backend {
    /// On a free port.
    pub fn start(repo: &Path) -> Backend {
        Backend::start_at(repo, "127.0.0.1:0")
    }

    /// On `listen` (retried for a few seconds while the port is still taken), once it prints
    /// `maas-backend listening on <addr>` (its models are loaded by then).
    pub fn start_at(repo: &Path, listen: &str) -> Backend {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut child = Command::new(workspace_bin("maas-backend"))
                .args(["serve", "--repo"])
                .arg(repo)
                .args(["--listen", listen])
                .env("RUST_LOG", "error")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("start maas-backend");
            let mut line = String::new();
            let stdout = child.stdout.take().unwrap();
            let mut reader = BufReader::new(stdout);
            let _ = reader.read_line(&mut line);
            if let Some(addr) = line.trim().strip_prefix("maas-backend listening on ") {
                std::thread::spawn(move || {
                    let mut sink = Vec::new();
                    let _ = reader.read_to_end(&mut sink);
                });
                return Backend {
                    addr: addr.parse().unwrap(),
                    child: Some(ChildGuard(child)),
                    repo: repo.to_path_buf(),
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                Instant::now() < deadline,
                "maas-backend did not start on {listen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL, now (and reaped).
    pub fn kill(&mut self) {
        self.child.take();
    }

    /// Start again on the same address.
    pub fn restart(&mut self) {
        let mut again = Backend::start_at(&self.repo, &self.addr.to_string());
        self.child = again.child.take();
    }
}
