//! A mistake on the command line of `maas-backend` (and of `maas-train`, built beside it) is
//! one line on stderr, `error: <what> : <cause>`, exit status 1, no backtrace even when asked
//! for one.

mod common;

use std::path::Path;
use std::process::Command;

fn assert_one_line(mut command: Command, expected: &str) {
    let out = command
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run the command");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(expected), "{stderr}");
}

#[test]
fn errors_are_one_line() {
    let mut backend = Command::new(common::BIN);
    backend.args([
        "serve",
        "--repo",
        "/nonexistent/repo",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_one_line(backend, "/nonexistent/repo");

    let train = Path::new(common::BIN).with_file_name("maas-train");
    let mut train = Command::new(train);
    train.args([
        "train",
        "--data",
        "/nonexistent/digits.csv",
        "--repo",
        "/tmp",
        "--model",
        "x",
    ]);
    assert_one_line(train, "/nonexistent/digits.csv");
}
