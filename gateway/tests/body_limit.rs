//! The gateway's request body limit (`max_body_bytes`, 1 MiB here) against a real PostgreSQL
//! and the fake backend: a declared Content-Length over it is 413 before the body is sent, a
//! chunked body over it (any chunk size, several at once) is cut off with 413, one within it
//! is forwarded whole; the gateway's resident set (`/proc/<pid>/status`) stays bounded.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod common;
#[path = "../../backend/tests/common/raw_http.rs"]
mod raw_http;

use common::*;
use raw_http::{chunk_frame, connect, read_all, reset_peak, status_bytes, status_of};

const LIMIT: usize = 1 << 20;
const MIB: u64 = 1 << 20;

/// Sends `len` bytes chunked in chunks of `chunk`, stopping when the gateway stops reading;
/// returns the response.
fn send_chunked(gw: SocketAddr, key: &str, len: usize, chunk: usize) -> String {
    let mut stream = connect(gw);
    let head = format!(
        "POST /v2/models/dense/infer HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let piece = vec![b'7'; chunk];
    let mut sent = 0;
    while sent < len {
        let n = chunk.min(len - sent);
        if stream.write_all(&chunk_frame(&piece[..n])).is_err() {
            return read_all(&mut stream);
        }
        sent += n;
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    read_all(&mut stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_413_and_memory_stays_bounded() {
    let (_pool, db_url) = fresh_database().await;
    let backend = start_backend().await;
    let key = create_key(&db_url, "acme", None);
    let gateway = start_gateway(
        &db_url,
        &[backend],
        &[("MAAS_GATEWAY_MAX_BODY_BYTES", LIMIT.to_string())],
    );
    let gw = gateway.listen;
    let pid = gateway.child.0.id();

    tokio::task::spawn_blocking(move || {
        // A declared Content-Length over the limit: answered without a byte of the body.
        let mut stream = connect(gw);
        let started = Instant::now();
        let head = format!(
            "POST /v2/models/dense/infer HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n\
             Content-Length: 40000000\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).unwrap();
        let response = read_all(&mut stream);
        assert_eq!(status_of(&response), 413, "{response}");
        assert!(
            response.contains(
                r#"{"error":"request body is larger than the gateway accepts (1048576 bytes)"}"#
            ),
            "{response}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));

        // Within the limit, small chunks: forwarded whole.
        let response = send_chunked(gw, &key, LIMIT - 1000, 100);
        assert_eq!(status_of(&response), 200, "{response}");
        assert!(
            response.contains(&format!(r#""body_bytes":{}"#, LIMIT - 1000)),
            "{response}"
        );

        // Over the limit, chunked, eight at once of chunk sizes from 1 KiB to 4 MiB.
        reset_peak(pid);
        let before = status_bytes(pid, "VmRSS");
        std::thread::scope(|s| {
            let handles: Vec<_> = [
                1 << 10,
                4 << 10,
                16 << 10,
                64 << 10,
                256 << 10,
                1 << 20,
                4 << 20,
                100,
            ]
            .into_iter()
            .map(|chunk| {
                let key = &key;
                s.spawn(move || send_chunked(gw, key, 40 * LIMIT, chunk))
            })
            .collect();
            for handle in handles {
                let response = handle.join().unwrap();
                assert_eq!(status_of(&response), 413, "{response}");
            }
        });
        let growth = status_bytes(pid, "VmHWM").saturating_sub(before);
        assert!(
            growth < 32 * MIB,
            "the gateway's peak resident set rose {} MiB",
            growth / MIB
        );
    })
    .await
    .unwrap();
    drop(gateway);
}
