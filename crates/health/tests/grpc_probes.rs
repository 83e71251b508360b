//! The `grpc` probe against a real gRPC server (grpcio, `sluice_test_support::GrpcServer`) and
//! against servers that are not one.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::SocketAddr;
use std::time::Duration;

use sluice_config::{CheckKind, HealthCheckConfig};
use sluice_health::probe::{ProbeTarget, run};
use sluice_health::{
    Evaluation, Evaluator, NativeEvaluator, ProbeErrorKind, ProbeResult, ProbedInstance, Verdict,
};
use sluice_test_support::certs::{Leaf, TestCa};
use sluice_test_support::{Backend, GrpcServer, free_port};

async fn probe(addr: SocketAddr, service: &str) -> (ProbeResult, Verdict) {
    let kind = CheckKind::grpc(service);
    let check = HealthCheckConfig::with_defaults(kind.clone())
        .with_timeout(Duration::from_secs(2))
        .unwrap();
    let target = ProbeTarget {
        addr,
        instance: addr,
        service: "svc".into(),
    };
    let result = run(&target, &check).await;
    let instance = ProbedInstance {
        id: "i".into(),
        service: "svc".into(),
        address: addr.ip().to_string(),
        port: addr.port(),
    };
    match NativeEvaluator::new(kind).evaluate(&instance, &result) {
        Evaluation::Verdict(v) => (result, v),
        Evaluation::KeepPrevious { error } => panic!("native evaluator cannot fail: {error}"),
    }
}

fn header<'a>(result: &'a ProbeResult, name: &str) -> Option<&'a str> {
    let found = result.headers.iter().find(|(k, _)| k == name);
    found.map(|(_, v)| v.as_str())
}

fn down_reason(verdict: &Verdict) -> &str {
    match verdict {
        Verdict::Down { reason } => reason,
        Verdict::Up { .. } => panic!("up, expected down"),
    }
}

#[tokio::test]
async fn serving_is_up_and_not_serving_is_down() {
    let server = GrpcServer::start("health");
    let (result, verdict) = probe(server.addr, "").await;
    assert!(verdict.is_up(), "{result:?}");
    assert_eq!(result.status, Some(1), "SERVING");
    assert_eq!(header(&result, "grpc-status"), Some("0"));
    assert_eq!(result.body_prefix, [0x08, 1], "the HealthCheckResponse");
    assert_eq!(result.summary(), "serving status SERVING");
    let seen = server.last_call("/grpc.health.v1.Health/Check").unwrap();
    assert_eq!(
        seen.authority.as_deref(),
        Some(server.target().as_str()),
        ":authority is the probed address"
    );

    server.set_health("", false);
    let (result, verdict) = probe(server.addr, "").await;
    assert_eq!(result.status, Some(2));
    assert_eq!(down_reason(&verdict), "serving status NOT_SERVING");

    server.set_health("billing.Ledger", true);
    let (result, verdict) = probe(server.addr, "billing.Ledger").await;
    assert!(verdict.is_up(), "the service's own status: {result:?}");
}

#[tokio::test]
async fn an_unknown_service_is_down_with_the_servers_status() {
    let server = GrpcServer::start("health");
    let (result, verdict) = probe(server.addr, "billing.Nope").await;
    assert_eq!(
        down_reason(&verdict),
        "other: grpc-status 5 (NOT_FOUND): unknown service billing.Nope"
    );
    assert_eq!(result.status, None);
    assert_eq!(
        header(&result, "grpc-status"),
        Some("5"),
        "kept for a policy"
    );
    assert_eq!(
        header(&result, "grpc-message"),
        Some("unknown service billing.Nope")
    );
}

#[tokio::test]
async fn targets_that_are_not_h2c_grpc_servers_are_down_with_what_they_are() {
    let http1 = Backend::start("plain");
    let (result, verdict) = probe(http1.addr(), "").await;
    let reason = down_reason(&verdict);
    assert!(
        reason.starts_with("other: HTTP/2 handshake failed: the target closed the connection"),
        "hyper's HTTP/1.1 server closes on the preface: {reason}"
    );
    assert!(
        reason.ends_with("it does not speak HTTP/2 with prior knowledge (h2c)"),
        "{reason}"
    );
    assert_eq!(result.error.unwrap().kind, ProbeErrorKind::Other);

    let answers_400 = http1_answering_400();
    let (_, verdict) = probe(answers_400, "").await;
    assert_eq!(
        down_reason(&verdict),
        "other: HTTP/2 handshake failed: the target answered \"HTTP/1.1 400 Bad Request\": \
         it does not speak HTTP/2 with prior knowledge (h2c)"
    );

    let h2c = Backend::start_h2c("h2c-json");
    let (_, verdict) = probe(h2c.addr(), "").await;
    let reason = down_reason(&verdict);
    assert!(
        reason.starts_with("other: no grpc-status in the answer (content-type application/json)"),
        "{reason}"
    );

    let ca = TestCa::new("grpc probe ca");
    let leaf = ca.issue(&Leaf::server("grpc", &["grpc.test"]));
    let tls = GrpcServer::start_tls("sealed", &leaf.cert, &leaf.key);
    let (_, verdict) = probe(tls.addr, "").await;
    let reason = down_reason(&verdict);
    assert!(
        reason.starts_with("other: HTTP/2 handshake failed:"),
        "a TLS port probed in cleartext: {reason}"
    );

    let closed: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (result, verdict) = probe(closed, "").await;
    assert_eq!(result.error.as_ref().unwrap().kind, ProbeErrorKind::Refused);
    assert!(
        down_reason(&verdict).starts_with("refused: connect:"),
        "{verdict}"
    );
}

/// An HTTP/1.1 server that answers the HTTP/2 preface `400` as nginx does (hyper's closes).
fn http1_answering_400() -> SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut request = [0u8; 4096];
        let _ = conn.read(&mut request);
        let answer = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        let _ = conn.write_all(answer.as_bytes());
        // Read what is left before closing: a close with unread bytes is a reset, which
        // would discard the answer on the probe's side.
        let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
        let _ = conn.read(&mut request);
    });
    addr
}
