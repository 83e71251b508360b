//! `loadgen` against real servers on loopback: every scheduled request is sent and counted,
//! HTTP/2 requests do not wait for each other, a request that waits for its HTTP/1.1
//! connection is charged for the wait (no coordinated omission), and over TLS it speaks the
//! protocol it asked for in ALPN and trusts only the certificates it was given.

use std::process::{Command, Output};

use sluice_test_support::{Backend, Mode};

mod tls_server;

use tls_server::TlsServer;

/// Runs loadgen against `url` for `duration` seconds after its 1 s warm-up, with `extra`
/// arguments.
fn run_loadgen(url: &str, rate: u64, connections: u64, duration: u64, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--url", url])
        .args(["--rate", &rate.to_string()])
        .args(["--connections", &connections.to_string()])
        .args(["--duration", &duration.to_string()])
        .args(extra)
        .output()
        .expect("run loadgen")
}

/// Its JSON answer, from a run that must have succeeded.
fn answer(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "loadgen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("loadgen prints one JSON object")
}

/// [`run_loadgen`] against a plain backend.
fn loadgen(
    backend: &Backend,
    rate: u64,
    connections: u64,
    duration: u64,
    http2: bool,
) -> serde_json::Value {
    let url = format!("http://{}/", backend.addr());
    let extra: &[&str] = if http2 { &["--http2"] } else { &[] };
    answer(&run_loadgen(&url, rate, connections, duration, extra))
}

fn field(v: &serde_json::Value, name: &str) -> u64 {
    v[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} in {v}"))
}

#[test]
fn every_scheduled_request_is_sent_and_counted_on_http1_and_http2() {
    for http2 in [false, true] {
        let backend = if http2 {
            Backend::start_h2c("b")
        } else {
            Backend::start("b")
        };
        let v = loadgen(&backend, 400, 4, 2, http2);
        assert_eq!(field(&v, "requests"), 800, "http2={http2}: {v}");
        assert_eq!(field(&v, "errors"), 0, "http2={http2}: {v}");
        // The warm-up's 400 requests are sent too, but not recorded.
        assert_eq!(backend.hits(), 1200, "http2={http2}: {v}");
    }
}

#[test]
fn failed_answers_are_counted_as_errors_not_latencies() {
    let backend = Backend::start("b");
    backend.set_mode(Mode::Status(503));
    let v = loadgen(&backend, 200, 2, 1, false);
    assert_eq!(field(&v, "requests"), 0, "{v}");
    assert_eq!(field(&v, "errors"), 200, "{v}");
}

#[test]
fn http2_requests_are_streams_that_do_not_wait_for_each_other() {
    // One connection, 50 requests a second, each answered after 300 ms: about 15 in flight.
    // Served one after another instead, the last would wait for tens of seconds.
    let backend = Backend::start_h2c("b");
    backend.set_mode(Mode::Delay(300));
    let v = loadgen(&backend, 50, 1, 2, true);
    assert_eq!(field(&v, "errors"), 0, "{v}");
    let p99 = field(&v, "p99_us");
    assert!(
        (300_000..2_000_000).contains(&p99),
        "p99 {p99} µs: streams waited for each other: {v}"
    );
}

#[test]
fn a_request_waiting_for_its_http1_connection_is_charged_for_the_wait() {
    // One connection, 10 requests a second, each answered after 300 ms: the queue grows by
    // two requests a second, and the last ones of a 2 s run have waited for over a second.
    let backend = Backend::start("b");
    backend.set_mode(Mode::Delay(300));
    let v = loadgen(&backend, 10, 1, 2, false);
    assert_eq!(field(&v, "errors"), 0, "{v}");
    let max = field(&v, "max_us");
    assert!(
        max > 1_500_000,
        "max {max} µs: the wait for the connection was not counted: {v}"
    );
}

#[test]
fn over_tls_each_protocol_is_the_one_alpn_chose_and_every_request_is_counted() {
    for http2 in [false, true] {
        let server = TlsServer::start();
        let mut extra = vec!["--ca", server.ca(), "--server-name", tls_server::NAME];
        if http2 {
            extra.push("--http2");
        }
        let v = answer(&run_loadgen(&server.url(), 400, 4, 2, &extra));
        assert_eq!(field(&v, "requests"), 800, "http2={http2}: {v}");
        assert_eq!(field(&v, "errors"), 0, "http2={http2}: {v}");
        // The server counts by the protocol ALPN settled on, warm-up included.
        let (h1, h2) = server.hits();
        let expected = if http2 { (0, 1200) } else { (1200, 0) };
        assert_eq!((h1, h2), expected, "http2={http2}: (HTTP/1.1, HTTP/2) hits");
    }
}

#[test]
fn a_certificate_it_cannot_verify_fails_the_run_before_any_request() {
    let server = TlsServer::start();
    let stranger = sluice_test_support::certs::TestCa::new("Stranger CA");
    let wrong_ca = stranger.ca_path.to_str().expect("utf-8 path");
    for (ca, name) in [(server.ca(), "other.test"), (wrong_ca, tls_server::NAME)] {
        let out = run_loadgen(
            &server.url(),
            100,
            2,
            1,
            &["--ca", ca, "--server-name", name],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} with {ca} was accepted");
        assert!(stderr.contains("certificate"), "{name} with {ca}: {stderr}");
    }
    assert_eq!(server.hits(), (0, 0));
}
