//! The Kubernetes manifests (`deploy/kubernetes/`): every overlay renders with
//! `kubectl kustomize`, every object it renders matches the Kubernetes API schema (offline,
//! strict), the parts fit together (selectors, Secrets, pools), and the probes and ports are
//! what the binaries serve: the gateway's configuration is read by the gateway's own loader,
//! and the real `maas-gateway` and `maas-backend` are started with the overlay's
//! configuration, arguments and environment (addresses moved to free loopback ports) and
//! probed as the kubelet would.
//!
//! Needs the tools `scripts/setup.sh` installs into `.venv`, and for the probe test
//! `DATABASE_URL` and `REDIS_URL` (`make test` provides both) and the built binaries
//! (`make test` builds them first; `MAAS_BIN_DIR` names another folder).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use maas_deploy::{
    name_of, overlay_dir, pod_spec, render, validate, Container, Manifest, Probe, ProbeAction,
};
use maas_gateway::config::GatewayConfig;
use serde_json::{json, Value};

const OVERLAYS: [&str; 2] = ["dev", "production"];
/// The oldest and the newest Kubernetes whose schemas are checked.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30", "1.37"];

fn rendered(overlay: &str) -> (String, Manifest) {
    render(&overlay_dir(overlay)).unwrap_or_else(|e| panic!("{overlay}: {e:#}"))
}

fn failures(yaml: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut out = BTreeMap::new();
    for v in validate(yaml, &KUBERNETES_VERSIONS).expect("the validator runs") {
        if !v.errors.is_empty() {
            out.entry((v.kind, v.name.unwrap_or_default()))
                .or_insert_with(Vec::new)
                .extend(v.errors.into_iter().map(|e| format!("{}: {e}", v.version)));
        }
    }
    out
}

#[test]
fn every_overlay_renders_and_each_object_matches_the_kubernetes_api_schema() {
    for overlay in OVERLAYS {
        let (yaml, manifest) = rendered(overlay);
        let verdicts = validate(&yaml, &KUBERNETES_VERSIONS).expect("the validator runs");
        assert_eq!(
            verdicts.len(),
            manifest.objects.len() * KUBERNETES_VERSIONS.len(),
            "{overlay}: one verdict per object and version"
        );
        let bad = failures(&yaml);
        assert!(
            bad.is_empty(),
            "{overlay}: objects not matching the schema: {bad:#?}"
        );
        let kinds: BTreeSet<&str> = manifest
            .objects
            .iter()
            .filter_map(|o| o["kind"].as_str())
            .collect();
        for kind in [
            "Deployment",
            "Service",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "ServiceMonitor",
            "Job",
            "ConfigMap",
            "PersistentVolumeClaim",
            "Namespace",
        ] {
            assert!(
                kinds.contains(kind),
                "{overlay} renders no {kind}: {kinds:?}"
            );
        }
    }
}

/// Objects back into one YAML stream, each document as JSON (which is YAML, and keeps
/// strings such as `no` strings for a YAML 1.1 reader).
fn to_yaml(objects: &[Value]) -> String {
    objects
        .iter()
        .map(|o| o.to_string())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

#[test]
fn the_schema_check_refuses_misspelt_and_mistyped_fields() {
    let (_, manifest) = rendered("dev");
    let mut objects = manifest.objects.clone();
    for o in &mut objects {
        match (o["kind"].as_str(), name_of(o)) {
            // A misspelt property of a built-in kind.
            (Some("Deployment"), "maas-gateway") => {
                let port = &mut o["spec"]["template"]["spec"]["containers"][0]["ports"][0];
                let number = port["containerPort"].take();
                port.as_object_mut()
                    .expect("a port")
                    .remove("containerPort");
                port["containerPrt"] = number;
            }
            // A mistyped one.
            (Some("HorizontalPodAutoscaler"), _) => o["spec"]["minReplicas"] = json!("two"),
            // A property the ServiceMonitor CRD does not define.
            (Some("ServiceMonitor"), "maas-backend") => {
                o["spec"]["endpoints"][0]["scrapeEvery"] = json!("15s")
            }
            _ => {}
        }
    }
    let bad = failures(&to_yaml(&objects));
    let names: BTreeSet<(&str, &str)> = bad.keys().map(|(k, n)| (k.as_str(), n.as_str())).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            ("Deployment", "maas-gateway"),
            ("HorizontalPodAutoscaler", "maas-gateway"),
            ("ServiceMonitor", "maas-backend"),
        ]),
        "exactly the changed objects fail: {bad:#?}"
    );
    let all = format!("{bad:?}");
    for needle in ["containerPort", "minReplicas", "scrapeEvery"] {
        assert!(all.contains(needle), "the errors name {needle}: {all}");
    }
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// The pod labels of the workloads a selector (`matchLabels` or a Service's `selector`) picks.
fn selected<'a>(manifest: &'a Manifest, selector: &Value) -> Vec<&'a Value> {
    manifest
        .objects
        .iter()
        .filter(|o| matches!(o["kind"].as_str(), Some("Deployment" | "StatefulSet")))
        .filter(|o| labels_match(selector, &o["spec"]["template"]["metadata"]["labels"]))
        .collect()
}

fn only_container(manifest: &Manifest, kind: &str, name: &str) -> Container {
    let workload = manifest.require(kind, name).expect("rendered");
    let mut containers = Container::of(workload, false).expect("containers");
    assert_eq!(containers.len(), 1, "{name} has one container");
    containers.remove(0)
}

/// Every Secret key a workload reads (`env[].valueFrom.secretKeyRef`, `envFrom[].secretRef`).
fn secret_refs(manifest: &Manifest) -> BTreeSet<(String, Option<String>)> {
    let mut out = BTreeSet::new();
    for o in &manifest.objects {
        let Ok(spec) = pod_spec(o) else { continue };
        for field in ["containers", "initContainers"] {
            for c in spec[field].as_array().into_iter().flatten() {
                for e in c["env"].as_array().into_iter().flatten() {
                    let r = &e["valueFrom"]["secretKeyRef"];
                    if let Some(name) = r["name"].as_str() {
                        out.insert((name.to_string(), r["key"].as_str().map(String::from)));
                    }
                }
                for e in c["envFrom"].as_array().into_iter().flatten() {
                    if let Some(name) = e["secretRef"]["name"].as_str() {
                        out.insert((name.to_string(), None));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn each_overlay_fits_together() {
    for overlay in OVERLAYS {
        let (_, m) = rendered(overlay);
        // Services and PodDisruptionBudgets select pods that exist, on ports they have.
        for svc in m.of_kind("Service") {
            let pods = selected(&m, &svc["spec"]["selector"]);
            assert!(
                !pods.is_empty(),
                "{overlay}: Service {} selects no pod",
                name_of(svc)
            );
            for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
                for w in &pods {
                    let c = Container::of(w, false).expect("containers");
                    assert!(
                        c.iter().any(|c| c.port(&p["targetPort"]).is_some()),
                        "{overlay}: Service {} targets port {} that {} does not have",
                        name_of(svc),
                        p["targetPort"],
                        name_of(w)
                    );
                }
            }
        }
        for pdb in m.of_kind("PodDisruptionBudget") {
            let sel = &pdb["spec"]["selector"]["matchLabels"];
            assert_eq!(
                selected(&m, sel).len(),
                1,
                "{overlay}: PDB {}",
                name_of(pdb)
            );
        }
        // A ServiceMonitor selects a Service that has the port it scrapes.
        for sm in m.of_kind("ServiceMonitor") {
            let sel = &sm["spec"]["selector"]["matchLabels"];
            let services: Vec<&Value> = m
                .of_kind("Service")
                .filter(|s| labels_match(sel, &s["metadata"]["labels"]))
                .collect();
            assert!(
                !services.is_empty(),
                "{overlay}: {} selects no Service",
                name_of(sm)
            );
            for ep in sm["spec"]["endpoints"].as_array().into_iter().flatten() {
                for s in &services {
                    assert!(
                        s["spec"]["ports"]
                            .as_array()
                            .is_some_and(|ps| ps.iter().any(|p| p["name"] == ep["port"])),
                        "{overlay}: Service {} has no port {}",
                        name_of(s),
                        ep["port"]
                    );
                }
            }
        }
        let hpa = m
            .require("HorizontalPodAutoscaler", "maas-gateway")
            .expect("HPA");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "maas-gateway");
        // The Secret: generated in dev with every key read; external in production.
        let refs = secret_refs(&m);
        let names: BTreeSet<&str> = refs.iter().map(|(n, _)| n.as_str()).collect();
        if overlay == "production" {
            assert_eq!(
                names,
                BTreeSet::from(["maas-secrets"]),
                "production reads one Secret"
            );
            assert_eq!(
                m.of_kind("Secret").count(),
                0,
                "production holds no credential"
            );
            assert_eq!(
                m.of_kind("StatefulSet").count(),
                0,
                "production's databases are external"
            );
        } else {
            for (name, key) in &refs {
                let secret = m.require("Secret", name).expect("a generated Secret");
                if let Some(key) = key {
                    assert!(secret["data"].get(key).is_some(), "{name} has no key {key}");
                }
            }
            for db in ["maas-postgres", "maas-redis"] {
                m.require("StatefulSet", db)
                    .expect("dev runs its own databases");
            }
        }
        // Migrations run as a Job of the gateway image; the gateway does not run them.
        let job = only_container(&m, "Job", "maas-migrate");
        let gateway = only_container(&m, "Deployment", "maas-gateway");
        assert_eq!(job.image, gateway.image);
        assert_eq!(job.args.first().map(String::as_str), Some("migrate"));
        // The backend pool: GPU in production, a headless Service, the model repository.
        let backend_deployment = m
            .require("Deployment", "maas-backend-digits")
            .expect("pool");
        let backend = only_container(&m, "Deployment", "maas-backend-digits");
        let gpu = backend_deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
            ["limits"]["nvidia.com/gpu"]
            .clone();
        if overlay == "production" {
            assert_eq!(gpu, json!("1"), "a production backend holds one GPU");
        }
        let svc = m
            .require("Service", "maas-backend-digits")
            .expect("headless");
        assert_eq!(
            svc["spec"]["clusterIP"], "None",
            "the pool's Service is headless"
        );
        let repo = backend.arg("--repo").expect("--repo");
        assert!(
            backend
                .volume_mounts
                .iter()
                .any(|v| v["mountPath"] == repo && v["readOnly"] == true),
            "the model repository {repo} is a read-only volume"
        );
        for (what, probe) in [
            ("startup", &backend.startup_probe),
            ("readiness", &backend.readiness_probe),
        ] {
            let action = probe.as_ref().expect(what).action().expect("an action");
            assert!(
                matches!(&action, ProbeAction::HttpGet { path, .. } if path == "/v2/health/ready"),
                "the backend's {what} probe is GET /v2/health/ready: {action:?}"
            );
        }
        check_gateway(overlay, &m);
        check_backend(overlay, &m);
    }
}

fn port_of(addr: &str) -> (bool, u16) {
    let a: SocketAddr = addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}"));
    (a.ip().is_unspecified(), a.port())
}

/// The gateway's configuration, read by the gateway's own loader from the ConfigMap the
/// Deployment mounts, and what the Deployment says about it.
fn gateway_config(m: &Manifest) -> (GatewayConfig, String, PathBuf) {
    let deployment = m.require("Deployment", "maas-gateway").expect("gateway");
    let gateway = only_container(m, "Deployment", "maas-gateway");
    let config_path = gateway.arg("--config").expect("--config");
    let mount = gateway
        .volume_mounts
        .iter()
        .find(|v| Path::new(config_path).starts_with(v["mountPath"].as_str().unwrap_or("-")))
        .expect("the config file is on a volume");
    let volume = pod_spec(deployment).expect("pod")["volumes"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == mount["name"]))
        .expect("the mounted volume");
    let map_name = volume["configMap"]["name"].as_str().expect("a ConfigMap");
    let file = Path::new(config_path)
        .strip_prefix(mount["mountPath"].as_str().unwrap_or("-"))
        .expect("under the mount");
    let text = m.require("ConfigMap", map_name).expect("generated")["data"]
        [file.to_str().expect("utf-8")]
    .as_str()
    .expect("the file's text")
    .to_string();
    let dir = std::env::temp_dir().join(format!("maas-deploy-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(file);
    std::fs::write(&path, &text).expect("write config");
    let config = GatewayConfig::load(&path, true).expect("the gateway accepts its ConfigMap");
    (config, text, dir)
}

fn check_gateway(overlay: &str, m: &Manifest) {
    let (config, _, dir) = gateway_config(m);
    let _ = std::fs::remove_dir_all(dir);
    let gateway = only_container(m, "Deployment", "maas-gateway");
    let ports: BTreeMap<&str, u16> = gateway
        .ports
        .iter()
        .map(|p| (p.name.as_deref().unwrap_or(""), p.container_port))
        .collect();
    for (name, addr) in [
        ("http", &config.listen),
        ("admin", &config.admin.listen),
        ("metrics", &config.metrics.listen),
    ] {
        let (all, port) = port_of(addr);
        assert!(
            all,
            "{overlay}: the gateway's {name} listener {addr} is reachable from the kubelet"
        );
        assert_eq!(
            ports.get(name),
            Some(&port),
            "{overlay}: containerPort {name} is {addr}'s port"
        );
    }
    assert!(
        !config.run_migrations,
        "{overlay}: the Job migrates, not each gateway"
    );
    // The spool is on a volume of its own, and the grace period covers its drain.
    let spool = config.spool_dir();
    assert!(
        gateway.volume_mounts.iter().any(|v| spool
            .starts_with(v["mountPath"].as_str().unwrap_or("-"))
            && v["readOnly"] != true),
        "{overlay}: the spool {} is on a writable volume",
        spool.display()
    );
    let deployment = m.require("Deployment", "maas-gateway").expect("gateway");
    let grace = pod_spec(deployment).expect("pod")["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("a grace period");
    let needed =
        gateway.pre_stop_sleep_s() + config.grace_period_s + config.graceful_shutdown_timeout_s;
    assert!(gateway.pre_stop_sleep_s() > 0, "{overlay}: a preStop sleep");
    assert!(
        grace > needed,
        "{overlay}: terminationGracePeriodSeconds {grace} covers preStop + grace + shutdown ({needed})"
    );
    // Each pool names a headless Service of the overlay on the port its pods serve.
    for pool in &config.pools {
        for entry in &pool.backends {
            let (host, port) = entry.address().rsplit_once(':').expect("host:port");
            let svc = m
                .require("Service", host)
                .expect("a pool backend is a Service");
            assert_eq!(svc["spec"]["clusterIP"], "None", "{host} is headless");
            let sp = svc["spec"]["ports"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["port"].as_u64() == port.parse().ok()))
                .unwrap_or_else(|| panic!("{host} has no port {port}"));
            let pods = selected(m, &svc["spec"]["selector"]);
            for w in pods {
                let c = &Container::of(w, false).expect("containers")[0];
                assert_eq!(
                    c.port(&sp["targetPort"]).map(u64::from),
                    port.parse::<u64>().ok(),
                    "a headless Service's port is the pods' port"
                );
            }
        }
    }
    // The Secret keys the gateway reads land in the variables its loader reads.
    let env: BTreeSet<&str> = gateway
        .env
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    for var in [
        "MAAS_GATEWAY_DATABASE_URL",
        "MAAS_GATEWAY_REDIS_URL",
        "MAAS_GATEWAY_ADMIN__OPERATOR_TOKEN",
    ] {
        assert!(env.contains(var), "{overlay}: the gateway gets {var}");
    }
}

fn check_backend(overlay: &str, m: &Manifest) {
    let backend = only_container(m, "Deployment", "maas-backend-digits");
    let (all, port) = port_of(backend.arg("--listen").expect("--listen"));
    assert!(all, "{overlay}: the backend listens on every interface");
    assert_eq!(
        backend.port(&json!("http")),
        Some(port),
        "{overlay}: containerPort http"
    );
    let deployment = m
        .require("Deployment", "maas-backend-digits")
        .expect("pool");
    let grace = pod_spec(deployment).expect("pod")["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("a grace period");
    let drain: u64 = backend
        .arg("--shutdown-timeout-s")
        .and_then(|s| s.parse().ok())
        .expect("--shutdown-timeout-s");
    assert!(backend.pre_stop_sleep_s() > 0, "{overlay}: a preStop sleep");
    assert!(
        grace > backend.pre_stop_sleep_s() + drain,
        "{overlay}: grace covers the drain"
    );
}

// ---- the binaries, started with the dev overlay's configuration --------------------------

fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MAAS_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/<test> -> target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} not found: build it first (`cargo build -p {name} --bins`; make test does), or set MAAS_BIN_DIR",
        path.display()
    );
    path
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// A child process killed when dropped.
struct Running(Child, &'static str);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.0.try_wait() {
            panic!("{} exited: {status}", self.1);
        }
    }
}

/// One probe as the kubelet runs it: a TCP connect, or a GET answered 2xx (200-399 for the
/// kubelet; the binaries answer 200).
async fn probe_once(action: &ProbeAction, addr: SocketAddr) -> Result<(), String> {
    match action {
        ProbeAction::TcpSocket { .. } => TcpStream::connect_timeout(&addr, Duration::from_secs(1))
            .map(drop)
            .map_err(|e| e.to_string()),
        ProbeAction::HttpGet { path, .. } => {
            let url = format!("http://{addr}{path}");
            match reqwest::get(&url).await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("GET {url}: {}", r.status())),
                Err(e) => Err(format!("GET {url}: {e}")),
            }
        }
        ProbeAction::Exec => Err("exec probes are not run here".into()),
    }
}

/// Run `probe` until it passes within its budget (periodSeconds x failureThreshold).
async fn passes(what: &str, probe: &Probe, addr: SocketAddr, proc: &mut Running) {
    let action = probe.action().expect("an action");
    let deadline = Instant::now() + Duration::from_secs(probe.budget_s().max(5));
    loop {
        proc.assert_alive();
        match probe_once(&action, addr).await {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what} ({action:?} on {addr}): {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn port_number(c: &Container, action: &ProbeAction) -> u16 {
    let port = match action {
        ProbeAction::HttpGet { port, .. } | ProbeAction::TcpSocket { port } => port,
        ProbeAction::Exec => panic!("no port"),
    };
    c.port(port)
        .unwrap_or_else(|| panic!("{} has no port {port}", c.name))
}

/// A database of its own on the test's PostgreSQL, empty (the Job migrates it).
fn fresh_database() -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL (make test provides it)");
    let name = format!("maas_deploy_{}", uuid::Uuid::new_v4().simple());
    let status = Command::new("psql")
        .arg(&base)
        .args(["-qc", &format!("CREATE DATABASE {name}")])
        .status()
        .expect("psql");
    assert!(status.success(), "CREATE DATABASE {name}");
    let (server, _) = base.rsplit_once('/').expect("a database URL");
    format!("{server}/{name}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_ports_match_what_the_binaries_serve() {
    let (_, m) = rendered("dev");
    let redis_url = std::env::var("REDIS_URL").expect("REDIS_URL (make test provides it)");
    let work =
        std::env::temp_dir().join(format!("maas-deploy-run-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&work).expect("work dir");
    let bins = bin_dir();
    let path = format!(
        "{}:{}",
        bins.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    // The backend: the init container's command writes the demo model, then the container's
    // own arguments serve it (its repository and address moved here).
    let backend_deployment = m
        .require("Deployment", "maas-backend-digits")
        .expect("pool");
    let init = Container::of(backend_deployment, true).expect("init containers");
    let backend = only_container(&m, "Deployment", "maas-backend-digits");
    let models_mount = backend.arg("--repo").expect("--repo").to_string();
    let repo = work.join("models");
    std::fs::create_dir_all(&repo).expect("repo");
    binary("maas-backend");
    binary("maas-bench");
    for c in &init {
        let command: Vec<String> = c
            .command
            .iter()
            .chain(&c.args)
            .map(|a| a.replace(&models_mount, repo.to_str().expect("utf-8")))
            .collect();
        let status = Command::new(&command[0])
            .args(&command[1..])
            .env("PATH", &path)
            .status()
            .expect("init container command");
        assert!(status.success(), "init container {}: {command:?}", c.name);
    }
    let backend_addr = free_addr();
    let (_, backend_port) = port_of(backend.arg("--listen").expect("--listen"));
    let args: Vec<String> = backend
        .args
        .iter()
        .map(|a| match a.as_str() {
            a if a == models_mount => repo.display().to_string(),
            a if a
                .parse::<SocketAddr>()
                .is_ok_and(|s| s.port() == backend_port) =>
            {
                backend_addr.to_string()
            }
            a => a.to_string(),
        })
        .collect();
    let mut backend_proc = Running(
        Command::new(binary("maas-backend"))
            .args(&args)
            .stdout(Stdio::null())
            .spawn()
            .expect("maas-backend starts"),
        "maas-backend",
    );
    for (what, probe) in [
        ("backend startup", &backend.startup_probe),
        ("backend readiness", &backend.readiness_probe),
        ("backend liveness", &backend.liveness_probe),
    ] {
        let probe = probe.as_ref().unwrap_or_else(|| panic!("{what} probe"));
        let action = probe.action().expect("action");
        assert_eq!(
            port_number(&backend, &action),
            backend_port,
            "{what} probes the listener"
        );
        passes(what, probe, backend_addr, &mut backend_proc).await;
    }
    let ready = reqwest::get(format!("http://{backend_addr}/v2/models/dense-demo/ready"))
        .await
        .expect("model ready");
    assert_eq!(ready.status(), 200, "the init container's model is served");

    // The migrations Job's command on an empty database.
    let database_url = fresh_database();
    let (_, config_text, config_dir) = gateway_config(&m);
    let job = only_container(&m, "Job", "maas-migrate");
    let config_arg = job.arg("--config").expect("--config").to_string();
    let gateway = only_container(&m, "Deployment", "maas-gateway");
    let config_file = config_dir.join(Path::new(&config_arg).file_name().expect("a file name"));
    let run_env = |cmd: &mut Command, c: &Container| {
        cmd.env_remove("DATABASE_URL").env_remove("REDIS_URL");
        for e in &c.env {
            let name = e["name"].as_str().expect("env name");
            let value = match e["valueFrom"]["secretKeyRef"]["key"].as_str() {
                Some("database-url") => database_url.clone(),
                Some("redis-url") => redis_url.clone(),
                Some("operator-token") => "deploy-test-operator-token".to_string(),
                Some(other) => panic!("a Secret key this test does not know: {other}"),
                None => e["value"].as_str().unwrap_or_default().to_string(),
            };
            cmd.env(name, value);
        }
    };
    let mut migrate = Command::new(binary("maas-gateway"));
    migrate.args(job.args.iter().map(|a| {
        if *a == config_arg {
            config_file.display().to_string()
        } else {
            a.clone()
        }
    }));
    run_env(&mut migrate, &job);
    let status = migrate.status().expect("maas-gateway migrate");
    assert!(status.success(), "the migrations Job's command");

    // The gateway with its ConfigMap, every address moved to a free loopback port.
    let mut doc: toml::Table = config_text.parse().expect("TOML");
    let mut local: BTreeMap<u16, SocketAddr> = BTreeMap::new();
    let mut relisten = |value: &mut toml::Value| {
        let (_, port) = port_of(value.as_str().expect("an address"));
        let addr = free_addr();
        local.insert(port, addr);
        *value = toml::Value::String(addr.to_string());
    };
    relisten(doc.get_mut("listen").expect("listen"));
    for section in ["admin", "metrics"] {
        relisten(
            doc.get_mut(section)
                .and_then(|s| s.get_mut("listen"))
                .unwrap_or_else(|| panic!("[{section}] listen")),
        );
    }
    doc["metering"]["spool_dir"] = toml::Value::String(work.join("spool").display().to_string());
    for pool in doc["pools"].as_array_mut().into_iter().flatten() {
        pool["backends"] = toml::Value::Array(vec![toml::Value::String(backend_addr.to_string())]);
    }
    std::fs::write(&config_file, toml::to_string(&doc).expect("TOML")).expect("write config");
    let mut serve = Command::new(binary("maas-gateway"));
    serve.args(gateway.args.iter().map(|a| {
        if *a == config_arg {
            config_file.display().to_string()
        } else {
            a.clone()
        }
    }));
    run_env(&mut serve, &gateway);
    let mut gateway_proc = Running(
        serve
            .stdout(Stdio::null())
            .spawn()
            .expect("maas-gateway starts"),
        "maas-gateway",
    );
    for (what, probe) in [
        ("gateway startup", &gateway.startup_probe),
        ("gateway readiness", &gateway.readiness_probe),
        ("gateway liveness", &gateway.liveness_probe),
    ] {
        let probe = probe.as_ref().unwrap_or_else(|| panic!("{what} probe"));
        let action = probe.action().expect("action");
        let port = port_number(&gateway, &action);
        let addr = *local
            .get(&port)
            .unwrap_or_else(|| panic!("{what} probes port {port}, where no listener is"));
        passes(what, probe, addr, &mut gateway_proc).await;
    }
    // Every container port is a listener that answers.
    for p in &gateway.ports {
        let addr = local[&p.container_port];
        TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("containerPort {:?} ({addr}): {e}", p.name));
    }
    // What the ServiceMonitors scrape answers with metrics.
    for (service, container, addr_of) in [
        ("maas-gateway", &gateway, &local),
        (
            "maas-backend-digits",
            &backend,
            &BTreeMap::from([(backend_port, backend_addr)]),
        ),
    ] {
        let svc = m.require("Service", service).expect("Service");
        for sm in m.of_kind("ServiceMonitor") {
            if !labels_match(
                &sm["spec"]["selector"]["matchLabels"],
                &svc["metadata"]["labels"],
            ) {
                continue;
            }
            for ep in sm["spec"]["endpoints"].as_array().into_iter().flatten() {
                let sp = svc["spec"]["ports"]
                    .as_array()
                    .and_then(|ps| ps.iter().find(|p| p["name"] == ep["port"]))
                    .expect("the scraped port");
                let port = container.port(&sp["targetPort"]).expect("target port");
                let url = format!(
                    "http://{}{}",
                    addr_of[&port],
                    ep["path"].as_str().unwrap_or("/metrics")
                );
                let body = reqwest::get(&url)
                    .await
                    .expect(&url)
                    .text()
                    .await
                    .expect("body");
                assert!(body.contains("# TYPE maas_"), "{url} serves maas metrics");
            }
        }
    }
    // The gateway found the pool's backend (the dev model is listed through it).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        gateway_proc.assert_alive();
        let admin = local[&gateway.port(&json!("admin")).expect("admin port")];
        let pools: Value = reqwest::Client::new()
            .get(format!("http://{admin}/admin/v1/pools"))
            .bearer_auth("deploy-test-operator-token")
            .send()
            .await
            .expect("admin API")
            .json()
            .await
            .expect("JSON");
        if pools.to_string().contains("dense-demo") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway's pool never listed dense-demo: {pools}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(gateway_proc);
    drop(backend_proc);
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&config_dir);
}
