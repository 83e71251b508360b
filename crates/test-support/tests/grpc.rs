//! The gRPC test stack against itself: grpcio's client calling the grpcio test server directly
//! (no proxy), so the proxy's gRPC tests can trust what it reports.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::{Duration, Instant};

use sluice_test_support::certs::{Leaf, TestCa};
use sluice_test_support::{GrpcCall, GrpcServer, grpc_call, grpc_calls};

const DEADLINE: Duration = Duration::from_secs(10);

#[test]
fn unary_calls_echo_with_metadata_both_ways() {
    let server = GrpcServer::start("alpha");
    let call = GrpcCall::unary(b"hello".to_vec())
        .deadline(DEADLINE)
        .with_metadata("x-forwarded-for", "192.0.2.7");
    let outcome = grpc_call(&server.target(), &call);
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(outcome.responses, [b"hello".to_vec()]);
    assert_eq!(outcome.initial("x-served-by"), Some("alpha"));
    assert_eq!(outcome.trailing("x-tag"), Some("alpha"));

    let seen = server.last_call("/sluice.test.Echo/Unary").unwrap();
    assert_eq!(seen.authority.as_deref(), Some(server.target().as_str()));
    assert_eq!(seen.get("x-forwarded-for"), Some("192.0.2.7"));
    let left = seen.deadline_ms.unwrap();
    // grpc core rounds grpc-timeout up a little and the server reads it on its own clock.
    assert!(
        (5_000..=10_500).contains(&left),
        "grpc-timeout arrived: {left} ms left"
    );
    assert_eq!(
        server.last_call(""),
        Some(seen),
        "the last call of any method"
    );
    assert_eq!(server.last_call("/sluice.test.Echo/Bidi"), None);

    let without = grpc_call(&server.target(), &GrpcCall::unary(b"x".to_vec()));
    assert!(without.is_ok(), "{without:?}");
    let seen = server.last_call("/sluice.test.Echo/Unary").unwrap();
    assert_eq!(seen.deadline_ms, None, "no deadline, no grpc-timeout");
}

#[test]
fn streams_flow_each_way() {
    let server = GrpcServer::start("beta");
    let streamed = grpc_call(
        &server.target(),
        &GrpcCall::server_stream(3).deadline(DEADLINE),
    );
    assert!(streamed.is_ok(), "{streamed:?}");
    assert_eq!(streamed.texts(), ["beta:0", "beta:1", "beta:2"]);
    assert_eq!(streamed.trailing("x-tag"), Some("beta"));

    let parts = vec![b"ab".to_vec(), b"cd".to_vec(), b"e".to_vec()];
    let gathered = grpc_call(
        &server.target(),
        &GrpcCall::client_stream(parts).deadline(DEADLINE),
    );
    assert!(gathered.is_ok(), "{gathered:?}");
    assert_eq!(gathered.texts(), ["abcde"]);
}

/// The client sends each message only after reading the reply to the previous one, so a
/// server that waited for more of the stream before answering would hit the deadline.
#[test]
fn bidi_calls_ping_pong() {
    let server = GrpcServer::start("gamma");
    let pings = ["one", "two", "three"]
        .map(|p| p.as_bytes().to_vec())
        .to_vec();
    let outcome = grpc_call(
        &server.target(),
        &GrpcCall::bidi(pings).deadline(Duration::from_secs(5)),
    );
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(outcome.texts(), ["gamma:one", "gamma:two", "gamma:three"]);
    assert!(outcome.elapsed_ms < 5_000, "{outcome:?}");
}

#[test]
fn failing_calls_report_their_status() {
    let server = GrpcServer::start("delta");
    let target = server.target();
    let failed = grpc_call(&target, &GrpcCall::unary(b"fail:no such ledger".to_vec()));
    assert_eq!(
        (failed.code.as_str(), failed.details.as_str()),
        ("INVALID_ARGUMENT", "no such ledger")
    );
    assert!(failed.responses.is_empty());
    assert_eq!(failed.trailing("x-tag"), Some("delta"));

    let slow = GrpcCall::unary(b"sleep:2000".to_vec()).deadline(Duration::from_millis(300));
    let late = grpc_call(&target, &slow);
    assert_eq!(late.code, "DEADLINE_EXCEEDED", "{late:?}");
    assert!(late.elapsed_ms < 1_500, "{late:?}");

    let missing = grpc_call(
        &target,
        &GrpcCall::unary(b"x".to_vec()).method("/no.Such/Method"),
    );
    assert_eq!(missing.code, "UNIMPLEMENTED", "{missing:?}");

    let port = sluice_test_support::free_port();
    let refused = grpc_call(
        &format!("127.0.0.1:{port}"),
        &GrpcCall::unary(b"x".to_vec()).deadline(Duration::from_secs(2)),
    );
    assert_eq!(refused.code, "UNAVAILABLE", "{refused:?}");
}

#[test]
fn health_status_follows_set_health() {
    let server = GrpcServer::start("epsilon");
    let status = |service: &str| {
        let outcome = grpc_call(&server.target(), &GrpcCall::health(service));
        (
            outcome.code.clone(),
            outcome.responses.concat(),
            outcome.details,
        )
    };
    assert_eq!(
        status(""),
        ("OK".into(), vec![0x08, 1], String::new()),
        "SERVING"
    );
    server.set_health("", false);
    assert_eq!(
        status(""),
        ("OK".into(), vec![0x08, 2], String::new()),
        "NOT_SERVING"
    );
    server.set_health("", true);
    assert_eq!(status("").1, [0x08, 1]);
    assert_eq!(
        status("billing.Ledger"),
        (
            "NOT_FOUND".into(),
            Vec::new(),
            "unknown service billing.Ledger".into()
        ),
        "a name never set is NOT_FOUND, as grpc's own health service answers"
    );
    server.set_health("billing.Ledger", true);
    assert_eq!(status("billing.Ledger").1, [0x08, 1]);
}

#[test]
fn tls_servers_speak_to_clients_that_trust_them() {
    let ca = TestCa::new("grpc test ca");
    let leaf = ca.issue(&Leaf::server("grpc", &["grpc.test"]));
    let server = GrpcServer::start_tls("zeta", &leaf.cert, &leaf.key);
    let call = GrpcCall::unary(b"sealed".to_vec()).deadline(DEADLINE);
    let trusted = grpc_call(
        &server.target(),
        &call.clone().tls(&ca.ca_path, "grpc.test"),
    );
    assert!(trusted.is_ok(), "{trusted:?}\n{}", server.stderr());
    assert_eq!(trusted.texts(), ["sealed"]);

    let wrong_name = grpc_call(
        &server.target(),
        &call.clone().tls(&ca.ca_path, "other.test"),
    );
    assert_eq!(wrong_name.code, "UNAVAILABLE", "{wrong_name:?}");
    let cleartext = grpc_call(&server.target(), &call);
    assert_eq!(cleartext.code, "UNAVAILABLE", "{cleartext:?}");

    // Control calls take the cleartext control port.
    server.set_health("", false);
    let health = grpc_call(
        &server.target(),
        &GrpcCall::health("").tls(&ca.ca_path, "grpc.test"),
    );
    assert_eq!(health.responses.concat(), [0x08, 2], "{health:?}");
}

#[test]
fn a_batch_of_calls_runs_at_once() {
    let server = GrpcServer::start("eta");
    let call = GrpcCall::unary(b"sleep:300".to_vec()).deadline(DEADLINE);
    let started = Instant::now();
    let outcomes = grpc_calls(&server.target(), &vec![call; 20]);
    let took = started.elapsed();
    assert_eq!(outcomes.len(), 20);
    assert!(outcomes.iter().all(|o| o.is_ok()), "{outcomes:?}");
    assert!(
        took < Duration::from_secs(3),
        "20 calls of 300 ms one after another would take 6 s: {took:?}"
    );
}
