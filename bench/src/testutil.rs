//! Test helpers: a model repository folder removed when dropped.

use std::path::{Path, PathBuf};

/// A fresh folder under the system's temporary directory, removed on drop.
pub struct TempRepo(PathBuf);

impl TempRepo {
    /// `<tmp>/maas-bench-<label>-<pid>-<nanos>`, created empty.
    pub fn new(label: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("maas-bench-{label}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a temporary folder");
        TempRepo(dir)
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempRepo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
