//! Validation against the Kubernetes API schema, offline: `deploy/kubernetes/validate.py`
//! (kubernetes-validate's strict JSON schemas for built-in kinds, the prometheus-operator
//! models for ServiceMonitor) run by the project's `.venv` Python.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::render::repository_root;

/// What the validator said of one object at one Kubernetes version.
#[derive(Debug, Clone, Deserialize)]
pub struct Verdict {
    /// The object's `kind`.
    pub kind: String,
    /// The object's `metadata.name`.
    pub name: Option<String>,
    /// The Kubernetes version (`1.30`) whose schema was used.
    pub version: String,
    /// What does not match the schema, one line each (`spec.ports.0: ...`); empty: it passed.
    pub errors: Vec<String>,
}

/// Validate a YAML stream of objects against the schemas of each Kubernetes `versions`
/// (`"1.30"`): one [`Verdict`] per object and version.
///
/// # Errors
/// When the validator cannot run (`.venv` missing its packages) or cannot read the stream;
/// objects that do not match are verdicts with errors, not an `Err`.
pub fn validate(yaml: &str, versions: &[&str]) -> anyhow::Result<Vec<Verdict>> {
    let root = repository_root();
    let python = root.join(".venv/bin/python");
    let mut cmd = Command::new(&python);
    cmd.arg(root.join("deploy/kubernetes/validate.py"));
    for v in versions {
        cmd.arg("--kubernetes-version").arg(v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {} (scripts/setup.sh creates it)", python.display()))?;
    child
        .stdin
        .take()
        .context("validator stdin")?
        .write_all(yaml.as_bytes())?;
    let out = child.wait_with_output()?;
    if !matches!(out.status.code(), Some(0 | 1)) {
        bail!(
            "validate.py failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).with_context(|| format!("validator said {line:?}")))
        .collect()
}
