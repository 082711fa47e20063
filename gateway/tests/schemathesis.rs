//! The admin API against its own OpenAPI document, with schemathesis (PyPI; installed into the
//! project's `.venv` by scripts/setup.sh): every operation the document lists, with generated
//! valid and invalid inputs, answers without a 5xx and with a body that matches the schema
//! the document gives for its status.
//!
//! Needs `DATABASE_URL` (`make test` provides it) and `.venv/bin/schemathesis`.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

const OPERATOR: &str = "test-operator-token-0123456789";

fn schemathesis() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/schemathesis");
    assert!(
        path.exists(),
        "{} not found: run scripts/setup.sh (make test does)",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_conforms_to_its_openapi_document() {
    let (pool, db_url) = fresh_database().await;
    let backend = start_backend().await;
    // Something to list, read and change.
    create_key(&db_url, "acme", None);
    let gw = start_gateway(
        &db_url,
        &[backend],
        &[("MAAS_GATEWAY_ADMIN__OPERATOR_TOKEN", OPERATOR.to_string())],
    );
    let work = std::env::temp_dir().join(format!(
        "maas-schemathesis-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&work).unwrap();
    let schema = format!("http://{}/admin/v1/openapi.json", gw.admin);
    let bin = schemathesis();
    let dir = work.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .current_dir(&dir)
            .args([
                "run",
                &schema,
                "--checks",
                "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
                "--header",
                &format!("Authorization: Bearer {OPERATOR}"),
                "--max-examples",
                "30",
                "--seed",
                "19",
                "--workers",
                "2",
                "--request-timeout",
                "10",
                "--generation-database",
                "none",
                "--no-color",
            ])
            .env("SCHEMATHESIS_TELEMETRY", "false")
            .output()
            .expect("run schemathesis")
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&work);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(gw);
    drop_database(pool).await;
}
