//! TLS and HTTP/2 on the data path, driven with curl (the client users have): ALPN h2 and
//! http/1.1 on the TLS listener with a certificate authority made in the test, h2c prior
//! knowledge on the plaintext listener, a client refusing a certificate its CA did not sign,
//! a reload on SIGHUP and on a file change, and an expired certificate refused at start.
//!
//! Needs `DATABASE_URL` (`make test` provides one) and `curl` built with nghttp2 (Debian's).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use uuid::Uuid;

mod common;

use common::*;

/// A certificate authority made in the test.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A server certificate for 127.0.0.1 and localhost, valid from `not_before` to
    /// `not_after` (UTC dates); PEM certificate and PEM key.
    fn issue(&self, not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "maas gateway test");
        params.not_before = date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = date_time_ymd(not_after.0, not_after.1, not_after.2);
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write_pem(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.cert.pem()).unwrap();
        path
    }
}

const VALID_FROM: (i32, u8, u8) = (2020, 1, 1);
const VALID_UNTIL: (i32, u8, u8) = (2100, 1, 1);

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch() -> Scratch {
    let dir = std::env::temp_dir().join(format!("maas-tls-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// Replace `path` with `content` atomically (write beside it, rename over it), as a
/// certificate manager does.
fn replace_file(path: &Path, content: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// What curl reported: its exit code, `%{http_version} %{http_code}` and its stderr.
struct Curl {
    code: i32,
    written: String,
    stderr: String,
}

/// One authenticated infer call with curl; `args` choose the protocol and trust.
fn curl(url: &str, key: &str, args: &[&str]) -> Curl {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "--max-time", "10"])
        .args(["-w", "%{http_version} %{http_code}"])
        .args(["-H", &format!("authorization: Bearer {key}")])
        .args(["-H", "content-type: application/json"])
        .args(["--data", BODY])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    Curl {
        code: out.status.code().unwrap_or(-1),
        written: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

const INFER: &str = "/v2/models/dense/versions/2/infer";

/// The next stdout line of the gateway, which must be the TLS readiness line.
fn wait_tls_ready(gw: &RunningGateway, tls: SocketAddr) {
    let line = gw
        .stdout
        .recv_timeout(Duration::from_secs(30))
        .expect("no TLS readiness line within 30 s");
    assert_eq!(line, format!("maas-gateway listening on {tls} (tls)"));
}

/// curl with `ca` until `ok(reply)` or 10 s pass; the last reply.
fn curl_until(url: &str, key: &str, ca: &Path, ok: impl Fn(&Curl) -> bool) -> Curl {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = curl(url, key, &["--http2", "--cacert", ca.to_str().unwrap()]);
        if ok(&reply) || Instant::now() > deadline {
            return reply;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// curl runs as a blocking child process: the fake backend needs a worker of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_h2_and_http1_h2c_wrong_ca_and_reload() {
    let (pool, db_url) = fresh_database().await;
    let backend = start_backend().await;
    let dir = scratch();
    let ca = Ca::new("maas test CA");
    let other = Ca::new("some other CA");
    let ca_pem = ca.write_pem(&dir.0, "ca.pem");
    let other_pem = other.write_pem(&dir.0, "other-ca.pem");
    let (cert, key) = ca.issue(VALID_FROM, VALID_UNTIL);
    let cert_path = dir.0.join("server.pem");
    let key_path = dir.0.join("server.key");
    std::fs::write(&cert_path, &cert).unwrap();
    std::fs::write(&key_path, &key).unwrap();

    let tls = free_addr();
    let gw = start_gateway(
        &db_url,
        &[backend],
        &[
            ("MAAS_GATEWAY_TLS__LISTEN", tls.to_string()),
            (
                "MAAS_GATEWAY_TLS__CERT_PATH",
                cert_path.display().to_string(),
            ),
            ("MAAS_GATEWAY_TLS__KEY_PATH", key_path.display().to_string()),
            ("MAAS_GATEWAY_TLS__RELOAD_INTERVAL_MS", "0".into()),
            ("MAAS_GATEWAY_H2C", "true".into()),
        ],
    );
    wait_tls_ready(&gw, tls);
    let api_key = create_key(&db_url, "acme", None);
    let https = format!("https://127.0.0.1:{}{INFER}", tls.port());
    let ca_arg = ca_pem.to_str().unwrap();

    // ALPN: curl offers h2 and http/1.1 with --http2 and gets h2; http/1.1 alone gets 1.1.
    let h2 = curl(&https, &api_key, &["--http2", "--cacert", ca_arg]);
    assert_eq!(
        (h2.code, h2.written.as_str()),
        (0, "2 200"),
        "{}",
        h2.stderr
    );
    let h1 = curl(&https, &api_key, &["--http1.1", "--cacert", ca_arg]);
    assert_eq!(
        (h1.code, h1.written.as_str()),
        (0, "1.1 200"),
        "{}",
        h1.stderr
    );
    // By name too (the certificate carries DNS:localhost).
    let by_name = curl(
        &format!("https://localhost:{}{INFER}", tls.port()),
        &api_key,
        &["--http2", "--cacert", ca_arg],
    );
    assert_eq!(by_name.written, "2 200", "{}", by_name.stderr);
    // A refusal over HTTP/2 keeps its status: no key is 401.
    let refused = curl(&https, "not-a-key", &["--http2", "--cacert", ca_arg]);
    assert_eq!(refused.written, "2 401", "{}", refused.stderr);

    // A client trusting another CA refuses the certificate (curl: 60, peer certificate
    // cannot be authenticated), and so does one with the system's roots only.
    let wrong = curl(
        &https,
        &api_key,
        &["--http2", "--cacert", other_pem.to_str().unwrap()],
    );
    assert_eq!(wrong.code, 60, "curl exit code; stderr: {}", wrong.stderr);
    assert!(wrong.stderr.contains("certificate"), "{}", wrong.stderr);
    let system = curl(&https, &api_key, &["--http2"]);
    assert_eq!(system.code, 60, "{}", system.stderr);

    // The plaintext listener: HTTP/1.1 as before, and HTTP/2 with prior knowledge (h2c).
    let plain = format!("http://{}{INFER}", gw.listen);
    let h1c = curl(&plain, &api_key, &["--http1.1"]);
    assert_eq!(h1c.written, "1.1 200", "{}", h1c.stderr);
    let h2c = curl(&plain, &api_key, &["--http2-prior-knowledge"]);
    assert_eq!(
        (h2c.code, h2c.written.as_str()),
        (0, "2 200"),
        "{}",
        h2c.stderr
    );

    // Every 200 above was forwarded and metered once: 2 TLS + localhost + 2 plaintext.
    wait_for_rows(&pool, 5).await;

    // SIGHUP (this gateway does not poll the files): a certificate from the other CA is
    // served to new handshakes, and the old CA no longer verifies.
    let (cert2, key2) = other.issue(VALID_FROM, VALID_UNTIL);
    replace_file(&key_path, &key2);
    replace_file(&cert_path, &cert2);
    let still_old = curl(&https, &api_key, &["--http2", "--cacert", ca_arg]);
    assert_eq!(
        still_old.written, "2 200",
        "no reload before SIGHUP: {}",
        still_old.stderr
    );
    hangup(&gw);
    let after = curl_until(&https, &api_key, &other_pem, |c| c.written == "2 200");
    assert_eq!(after.written, "2 200", "{}", after.stderr);
    let old = curl(&https, &api_key, &["--http2", "--cacert", ca_arg]);
    assert_eq!(
        old.code, 60,
        "the old CA no longer verifies: {}",
        old.stderr
    );
    assert!(alive(&gw), "the gateway exited on SIGHUP");

    // A broken pair (the key of another certificate) is refused; the current one stays.
    replace_file(&key_path, &key);
    hangup(&gw);
    std::thread::sleep(Duration::from_millis(300));
    let kept = curl(
        &https,
        &api_key,
        &["--http2", "--cacert", other_pem.to_str().unwrap()],
    );
    assert_eq!(kept.written, "2 200", "{}", kept.stderr);
    drop(gw);

    // A gateway polling the files every 200 ms reloads on a change, no signal needed.
    std::fs::write(&key_path, &key2).unwrap();
    let tls = free_addr();
    let gw = start_gateway(
        &db_url,
        &[backend],
        &[
            ("MAAS_GATEWAY_TLS__LISTEN", tls.to_string()),
            (
                "MAAS_GATEWAY_TLS__CERT_PATH",
                cert_path.display().to_string(),
            ),
            ("MAAS_GATEWAY_TLS__KEY_PATH", key_path.display().to_string()),
            ("MAAS_GATEWAY_TLS__RELOAD_INTERVAL_MS", "200".into()),
        ],
    );
    wait_tls_ready(&gw, tls);
    let https = format!("https://127.0.0.1:{}{INFER}", tls.port());
    let first = curl(
        &https,
        &api_key,
        &["--http2", "--cacert", other_pem.to_str().unwrap()],
    );
    assert_eq!(first.written, "2 200", "{}", first.stderr);
    replace_file(&key_path, &key);
    replace_file(&cert_path, &cert);
    let back = curl_until(&https, &api_key, &ca_pem, |c| c.written == "2 200");
    assert_eq!(back.written, "2 200", "{}", back.stderr);

    drop(gw);
    drop_database(pool).await;
}

/// Send SIGHUP to the gateway.
fn hangup(gw: &RunningGateway) {
    let pid = gw.child.0.id().to_string();
    let sent = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(sent.success());
}

/// Whether the gateway process is still running (not exited, not a zombie).
fn alive(gw: &RunningGateway) -> bool {
    std::fs::read_to_string(format!("/proc/{}/stat", gw.child.0.id()))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[tokio::test]
async fn an_expired_certificate_is_refused_at_start() {
    let (pool, db_url) = fresh_database().await;
    let dir = scratch();
    let ca = Ca::new("maas test CA");
    let (cert, key) = ca.issue((2020, 1, 1), (2021, 1, 1));
    let cert_path = dir.0.join("expired.pem");
    let key_path = dir.0.join("expired.key");
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();

    let mut cmd = gateway_command(&db_url);
    let out = cmd
        .arg("serve")
        .env("MAAS_GATEWAY_LISTEN", free_addr().to_string())
        .env("MAAS_GATEWAY_UPSTREAM__BACKENDS", r#"["127.0.0.1:9"]"#)
        .env("MAAS_GATEWAY_TLS__LISTEN", free_addr().to_string())
        .env("MAAS_GATEWAY_TLS__CERT_PATH", &cert_path)
        .env("MAAS_GATEWAY_TLS__KEY_PATH", &key_path)
        .output()
        .expect("run maas-gateway serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let expected = format!(
        "the certificate in {} (subject CN=maas gateway test) expired at 2021-01-01 00:00:00 UTC",
        cert_path.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");

    // And a TLS listener without a key file is a configuration error naming the key.
    let out = gateway_command(&db_url)
        .arg("serve")
        .env("MAAS_GATEWAY_TLS__LISTEN", free_addr().to_string())
        .env("MAAS_GATEWAY_TLS__CERT_PATH", &cert_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("tls.key_path must name a PEM file"),
        "{stderr}"
    );
    drop_database(pool).await;
}
