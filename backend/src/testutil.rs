//! Helpers for unit tests.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A unique folder under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `<tmp>/maas-backend-<label>-<pid>-<n>`.
    pub fn new(label: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("maas-backend-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `Some(cuda:0)` where libtorch sees a CUDA device; else `None`, after writing
/// `SKIPPED <test> (GPU half): no CUDA device here` to the stderr handle (not through
/// `eprintln!`, which libtest captures), so that a skipped GPU check says so in every run and
/// `scripts/gpu-check.sh` can count what ran.
pub fn cuda_or_skip(test: &str) -> Option<tch::Device> {
    if tch::Cuda::is_available() {
        return Some(tch::Device::Cuda(0));
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test} (GPU half): no CUDA device here"
    );
    None
}
