//! `loadgen` against real backends on loopback: every scheduled request is sent and counted,
//! HTTP/2 requests do not wait for each other, and a request that waits for its HTTP/1.1
//! connection is charged for the wait (no coordinated omission).

use std::process::Command;

use sluice_test_support::{Backend, Mode};

/// Runs loadgen for `duration` seconds after its 1 s warm-up and returns its JSON answer.
fn loadgen(
    backend: &Backend,
    rate: u64,
    connections: u64,
    duration: u64,
    http2: bool,
) -> serde_json::Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loadgen"));
    cmd.args(["--url", &format!("http://{}/", backend.addr())])
        .args(["--rate", &rate.to_string()])
        .args(["--connections", &connections.to_string()])
        .args(["--duration", &duration.to_string()]);
    if http2 {
        cmd.arg("--http2");
    }
    let out = cmd.output().expect("run loadgen");
    assert!(
        out.status.success(),
        "loadgen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("loadgen prints one JSON object")
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
