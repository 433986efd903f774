//! Clients that stall, trickle or never finish: they hold their own connection, never a slot other
//! requests need, get a 4xx rather than a 5xx, and cannot stretch shutdown past one drain timeout.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::{Server, ferplus_faces};

/// Opens a connection and sends `bytes` (a request, or the start of one).
fn send(server: &Server, bytes: &[u8]) -> TcpStream {
    let address = server.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    stream.write_all(bytes).unwrap();
    stream
}

/// Everything the server sends until it closes the connection or `wait` passes; `None` when the
/// connection is still open after `wait`.
fn read_until_closed(stream: &mut TcpStream, wait: Duration) -> Option<String> {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return Some(String::from_utf8_lossy(&received).into_owned()),
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(String::from_utf8_lossy(&received).into_owned());
            }
            Err(_) => return None,
        }
    }
}

fn upload_head(length: u64) -> String {
    format!(
        "POST /v1/classify HTTP/1.1\r\nhost: test\r\ncontent-type: image/png\r\ncontent-length: {length}\r\n\r\n"
    )
}

fn classify_status(server: &Server, png: &[u8]) -> u16 {
    let mut stream = send(server, upload_head(png.len() as u64).as_bytes());
    stream.write_all(png).unwrap();
    let mut status = [0u8; 12];
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.read_exact(&mut status).unwrap();
    String::from_utf8_lossy(&status[9..12]).parse().unwrap()
}

#[test]
fn a_stalled_upload_gets_408_and_holds_no_admission_slot() {
    let server = Server::start(&[
        "--max-concurrent-requests",
        "2",
        "--body-read-timeout-ms",
        "3000",
    ]);
    let png = ferplus_faces(9, 1).remove(0).png;
    // Eight uploads send their headers and a few bytes of a 100 kB body, then stall.
    let mut stalled: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = send(&server, upload_head(100_000).as_bytes());
            s.write_all(&png[..10]).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Meanwhile, with two slots, everyone else is served.
    for _ in 0..4 {
        assert_eq!(classify_status(&server, &png), 200);
    }
    for stream in &mut stalled {
        let answer =
            read_until_closed(stream, Duration::from_secs(20)).expect("answered and closed");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("\"code\":\"body_timeout\""), "{answer}");
    }
    let mut scrape = send(
        &server,
        b"GET /metrics HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n",
    );
    let metrics = read_until_closed(&mut scrape, Duration::from_secs(10)).unwrap();
    assert!(
        metrics.contains("fer_failures_total{reason=\"body_timeout\"} 8"),
        "counted as body_timeout"
    );
}

#[test]
fn a_content_length_over_the_limit_is_refused_before_the_body() {
    // A long body-read timeout: the answer cannot be that one.
    let server = Server::start(&["--body-read-timeout-ms", "600000"]);
    let mut stream = send(&server, upload_head(10_000_000_000).as_bytes());
    stream.write_all(b"abc").unwrap();
    let answer = read_until_closed(&mut stream, Duration::from_secs(20)).expect("answered");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
}

#[test]
fn trickled_headers_and_idle_connections_are_closed() {
    let server = Server::start(&[
        "--header-read-timeout-ms",
        "1000",
        "--idle-timeout-ms",
        "2000",
    ]);
    // Half a request line, then nothing.
    let mut trickled = send(&server, b"POST /v1/classify HTTP/1.1\r\nhost: te");
    // A connection that never sends anything.
    let mut silent = send(&server, b"");
    // A keep-alive connection after one answered request.
    let mut kept = send(&server, b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n");
    let mut answer = [0u8; 12];
    kept.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");

    let started = Instant::now();
    assert!(read_until_closed(&mut trickled, Duration::from_secs(20)).is_some());
    let trickle_closed = started.elapsed();
    assert!(read_until_closed(&mut silent, Duration::from_secs(20)).is_some());
    assert!(read_until_closed(&mut kept, Duration::from_secs(20)).is_some());
    assert!(
        trickle_closed < Duration::from_millis(1900),
        "a trickled head is cut at the header timeout, not the idle one: {trickle_closed:?}"
    );
    // And the server goes on serving.
    assert_eq!(
        crate::common::get_status(&server.url("/healthz")),
        Some(200),
        "still serving"
    );
}

#[test]
fn shutdown_takes_at_most_one_drain_timeout_whatever_the_connections_do() {
    let server = Server::start(&[
        "--drain-timeout-ms",
        "3000",
        "--body-read-timeout-ms",
        "600000",
        "--header-read-timeout-ms",
        "600000",
        "--idle-timeout-ms",
        "600000",
    ]);
    let mut stalled = send(&server, upload_head(100_000).as_bytes());
    stalled.write_all(b"abc").unwrap();
    let _trickled = send(&server, b"GET /healthz HTTP/1.1\r\nho");
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    server.signal("TERM");
    let exit = server.wait();
    let took = started.elapsed();
    assert!(exit.success(), "{exit:?}");
    assert!(
        took < Duration::from_millis(4500),
        "shutdown within one drain timeout (3 s) and a margin: {took:?}"
    );
    // The stalled upload was refused while shutting down, or cut when the process ended.
    let answer = read_until_closed(&mut stalled, Duration::from_secs(5)).unwrap_or_default();
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 503"),
        "{answer}"
    );
}
