//! Writing into the model repository without a window in which `maas-backend` could read a
//! half-written file: new version folders and a model's `config.toml`.
//!
//! The layout is the one `maas-backend`'s repository reads: `<repo>/<model>/config.toml` and
//! numbered version folders `<repo>/<model>/<N>/`; hidden folders (`.tmp-*`, `.checkpoints`)
//! are ignored by its loader (see ARCHITECTURE.md).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use maas_backend::version_numbers;

/// Creates a new version folder of `model_dir` without a window in which the server could see
/// it half written: `fill` writes the files into a temporary folder `.tmp-<purpose>-...`
/// (ignored by the repository), which is then renamed to the next free version number.
/// Returns the version and its folder; on error the temporary folder is removed.
pub(crate) fn write_version_folder(
    model_dir: &Path,
    purpose: &str,
    fill: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<(u64, PathBuf)> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let temp = model_dir.join(format!(".tmp-{purpose}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&temp).with_context(|| format!("cannot create {}", temp.display()))?;
    let result = (|| -> anyhow::Result<(u64, PathBuf)> {
        fill(&temp)?;
        // Another writer may take a number between our look and our rename: try the next one.
        for _ in 0..16 {
            let version = version_numbers(model_dir)?.last().copied().unwrap_or(0) + 1;
            let dir = model_dir.join(version.to_string());
            if dir.exists() {
                continue;
            }
            match std::fs::rename(&temp, &dir) {
                Ok(()) => return Ok((version, dir)),
                Err(_) if dir.exists() => continue,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("cannot rename {} to {}", temp.display(), dir.display())
                    })
                }
            }
        }
        bail!(
            "cannot find a free version number in {}",
            model_dir.display()
        )
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    result
}

/// Writes a file through a temporary sibling and a rename.
pub(crate) fn write_atomically(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let temp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&temp, contents).with_context(|| format!("cannot write {}", temp.display()))?;
    std::fs::rename(&temp, path)
        .with_context(|| format!("cannot rename {} to {}", temp.display(), path.display()))
}
