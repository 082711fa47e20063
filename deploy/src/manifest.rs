//! The objects of a rendered overlay, and typed views of the parts the tests check: a pod
//! template's containers, their ports, probes, environment and volume mounts (the fields of
//! the Kubernetes API's `core/v1` `Container`, read with serde; what is not read is ignored).

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::Value;

/// Every object of a rendered overlay, in the order kustomize printed them.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The objects as JSON values (`apiVersion`, `kind`, `metadata`, ...).
    pub objects: Vec<Value>,
}

impl Manifest {
    /// Parse a YAML stream (documents separated by `---`); empty documents are skipped.
    ///
    /// # Errors
    /// When a document is not YAML, or not a mapping with a `kind`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut objects = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(text) {
            let value = Value::deserialize(doc).context("rendered YAML")?;
            if value.is_null() {
                continue;
            }
            if value.get("kind").and_then(Value::as_str).is_none() {
                bail!("a rendered document has no kind: {value}");
            }
            objects.push(value);
        }
        Ok(Manifest { objects })
    }

    /// The objects of `kind`.
    pub fn of_kind<'a>(&'a self, kind: &str) -> impl Iterator<Item = &'a Value> + 'a {
        let kind = kind.to_string();
        self.objects
            .iter()
            .filter(move |o| o.get("kind").and_then(Value::as_str) == Some(kind.as_str()))
    }

    /// The object of `kind` named `name` (`metadata.name`).
    pub fn get(&self, kind: &str, name: &str) -> Option<&Value> {
        self.of_kind(kind).find(|o| name_of(o) == name)
    }

    /// The object of `kind` named `name`, or an error naming what is missing.
    ///
    /// # Errors
    /// When there is none.
    pub fn require(&self, kind: &str, name: &str) -> anyhow::Result<&Value> {
        self.get(kind, name)
            .with_context(|| format!("the overlay renders no {kind} {name}"))
    }
}

/// `metadata.name` of an object ("" when it has none).
pub fn name_of(object: &Value) -> &str {
    object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// One container of a pod template (`core/v1` `Container`, the fields read here).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// `name`.
    pub name: String,
    /// `image`.
    #[serde(default)]
    pub image: String,
    /// `command` (the image's entrypoint when empty).
    #[serde(default)]
    pub command: Vec<String>,
    /// `args`.
    #[serde(default)]
    pub args: Vec<String>,
    /// `ports`.
    #[serde(default)]
    pub ports: Vec<Port>,
    /// `env`, each entry as written (`value` or `valueFrom`).
    #[serde(default)]
    pub env: Vec<Value>,
    /// `volumeMounts`, each entry as written.
    #[serde(default)]
    pub volume_mounts: Vec<Value>,
    /// `startupProbe`.
    pub startup_probe: Option<Probe>,
    /// `readinessProbe`.
    pub readiness_probe: Option<Probe>,
    /// `livenessProbe`.
    pub liveness_probe: Option<Probe>,
    /// `lifecycle`, as written.
    pub lifecycle: Option<Value>,
}

impl Container {
    /// The containers of a workload's pod template (`spec.template.spec.containers` of a
    /// Deployment, StatefulSet or Job); `init` selects `initContainers` instead.
    ///
    /// # Errors
    /// When the object has no pod template or a container does not read.
    pub fn of(workload: &Value, init: bool) -> anyhow::Result<Vec<Container>> {
        let field = if init { "initContainers" } else { "containers" };
        let list = pod_spec(workload)?
            .get(field)
            .cloned()
            .unwrap_or(Value::Array(Vec::new()));
        serde_json::from_value(list).with_context(|| format!("{field} of {}", name_of(workload)))
    }

    /// The container port a probe or Service names: a number, or a port's `name`.
    pub fn port(&self, port: &Value) -> Option<u16> {
        match port {
            Value::Number(n) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
            Value::String(name) => self
                .ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name))
                .map(|p| p.container_port),
            _ => None,
        }
    }

    /// Seconds a `preStop` hook of `exec: ["sleep", N]` (or `sleep: {seconds: N}`) waits;
    /// 0 without one.
    pub fn pre_stop_sleep_s(&self) -> u64 {
        let Some(pre_stop) = self.lifecycle.as_ref().and_then(|l| l.get("preStop")) else {
            return 0;
        };
        if let Some(s) = pre_stop.pointer("/sleep/seconds").and_then(Value::as_u64) {
            return s;
        }
        match pre_stop
            .pointer("/exec/command")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
        {
            Some([cmd, secs]) if cmd.as_str() == Some("sleep") => {
                secs.as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
            }
            _ => 0,
        }
    }

    /// The value of the argument after `flag` (`--listen 0.0.0.0:8001`).
    pub fn arg(&self, flag: &str) -> Option<&str> {
        self.args
            .iter()
            .position(|a| a == flag)
            .and_then(|i| self.args.get(i + 1))
            .map(String::as_str)
    }
}

/// `spec.template.spec` of a workload.
///
/// # Errors
/// When the object has none.
pub fn pod_spec(workload: &Value) -> anyhow::Result<&Value> {
    workload
        .pointer("/spec/template/spec")
        .with_context(|| format!("{} has no pod template", name_of(workload)))
}

/// A container port (`core/v1` `ContainerPort`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    /// `name`.
    pub name: Option<String>,
    /// `containerPort`.
    pub container_port: u16,
}

/// A probe (`core/v1` `Probe`): what it does, and how often.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    /// `httpGet` (`path`, `port`).
    pub http_get: Option<Value>,
    /// `tcpSocket` (`port`).
    pub tcp_socket: Option<Value>,
    /// `exec` (`command`).
    pub exec: Option<Value>,
    /// `periodSeconds` (Kubernetes' default 10).
    pub period_seconds: Option<u64>,
    /// `failureThreshold` (Kubernetes' default 3).
    pub failure_threshold: Option<u64>,
}

/// What a [`Probe`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAction {
    /// `GET path` on a port (number or name) of the container.
    HttpGet {
        /// The request path.
        path: String,
        /// The port as written.
        port: Value,
    },
    /// A TCP connect to a port (number or name).
    TcpSocket {
        /// The port as written.
        port: Value,
    },
    /// A command in the container.
    Exec,
}

impl Probe {
    /// What this probe does.
    ///
    /// # Errors
    /// When it names no action, or an `httpGet` without a port.
    pub fn action(&self) -> anyhow::Result<ProbeAction> {
        if let Some(get) = &self.http_get {
            let path = get
                .get("path")
                .and_then(Value::as_str)
                .unwrap_or("/")
                .to_string();
            let port = get.get("port").cloned().context("httpGet without a port")?;
            return Ok(ProbeAction::HttpGet { path, port });
        }
        if let Some(tcp) = &self.tcp_socket {
            let port = tcp
                .get("port")
                .cloned()
                .context("tcpSocket without a port")?;
            return Ok(ProbeAction::TcpSocket { port });
        }
        if self.exec.is_some() {
            return Ok(ProbeAction::Exec);
        }
        bail!("a probe without httpGet, tcpSocket or exec")
    }

    /// The longest a failing probe is tolerated: `periodSeconds x failureThreshold`, seconds.
    pub fn budget_s(&self) -> u64 {
        self.period_seconds.unwrap_or(10) * self.failure_threshold.unwrap_or(3)
    }
}
