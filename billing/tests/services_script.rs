//! `scripts/with-services.sh --data DIR` (what `make run` uses): a second run over the same DIR
//! listens on the same PostgreSQL and Redis ports, so the DATABASE_URL the first one printed
//! still reaches the same database.

use std::path::Path;
use std::process::Command;

/// Runs the script over `data` with a command that prints its URLs and counts the rows of a
/// table it creates on the first run; returns what that command printed.
fn run_once(data: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new(root.join("scripts/with-services.sh"))
        .arg("--data")
        .arg(data)
        .args([
            "sh",
            "-c",
            "psql \"$DATABASE_URL\" -Atqc 'create table if not exists kept (n int); insert into kept values (1)' \
             && echo \"rows=$(psql \"$DATABASE_URL\" -Atc 'select count(*) from kept')\" \
             && echo \"urls=$DATABASE_URL $REDIS_URL\"",
        ])
        // Private servers, not the ones `make test` runs this test under.
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .output()
        .expect("run scripts/with-services.sh");
    assert!(
        out.status.success(),
        "with-services failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("rows=") || l.starts_with("urls="))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_kept_data_folder_keeps_its_ports() {
    let data =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("services-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let first = run_once(&data);
    let second = run_once(&data);
    let urls = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("urls="))
            .unwrap()
            .to_string()
    };
    assert!(first.contains("rows=1"), "{first}");
    assert!(second.contains("rows=2"), "{second}");
    assert_eq!(urls(&first), urls(&second));
    let _ = std::fs::remove_dir_all(&data);
}
