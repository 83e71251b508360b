//! Values built in code equal what the file form gives, and break the same rules.

use std::time::Duration;

use sluice_config::{
    CheckKind, GrpcServiceProblem, HealthCheckConfig, HealthCheckProblem, ListenerConfig,
    PathProblem, parse_str,
};

fn parsed(text: &str) -> sluice_config::Config {
    parse_str("c.toml", text).unwrap_or_else(|e| panic!("{e}"))
}

fn health_of(table: &str) -> HealthCheckConfig {
    let text = format!("[[service]]\nname = \"s\"\n[service.health]\n{table}");
    parsed(&text).services[0]
        .health
        .clone()
        .unwrap_or_else(|| panic!("no health in {text}"))
}

#[test]
fn a_tcp_listener_with_defaults_is_what_the_file_gives() {
    let cfg = parsed(
        "[[listener]]\nname = \"t\"\nbind = \"127.0.0.1:7000\"\nprotocol = \"tcp\"\nservice = \"s\"\n\
         [[service]]\nname = \"s\"\n",
    );
    let bind = "127.0.0.1:7000".parse().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cfg.listeners[0],
        ListenerConfig::tcp_with_defaults("t", bind, "s")
    );
}

#[test]
fn checks_with_defaults_are_what_the_file_gives() {
    assert_eq!(
        health_of("kind = \"tcp\"\n"),
        HealthCheckConfig::with_defaults(CheckKind::tcp_connect())
    );
    assert_eq!(
        health_of("kind = \"http\"\npath = \"/status\"\n"),
        HealthCheckConfig::with_defaults(CheckKind::http_get("/status"))
    );
    assert_eq!(
        health_of("kind = \"grpc\"\n"),
        HealthCheckConfig::with_defaults(CheckKind::grpc(""))
    );
    assert_eq!(
        health_of("kind = \"grpc\"\ngrpc_service = \"billing.Ledger\"\n"),
        HealthCheckConfig::with_defaults(CheckKind::grpc("billing.Ledger"))
    );
    assert_eq!(
        health_of("kind = \"tcp\"\ninterval = \"30s\"\n"),
        HealthCheckConfig::with_defaults(CheckKind::tcp_connect()).every(Duration::from_secs(30))
    );
}

#[test]
fn checks_built_in_code_break_the_files_rules_with_a_reason() {
    let tcp = HealthCheckConfig::with_defaults(CheckKind::tcp_connect());
    assert_eq!(tcp.validate(), Ok(()));
    let bad_fall = HealthCheckConfig {
        fall: 500,
        ..tcp.clone()
    };
    assert_eq!(
        bad_fall.validate(),
        Err(HealthCheckProblem::Threshold {
            which: "fall",
            value: 500
        })
    );
    assert_eq!(
        bad_fall.validate().map_err(|e| e.to_string()),
        Err("fall 500 is out of range 1..=100".to_owned())
    );
    assert!(matches!(
        tcp.clone().with_timeout(Duration::from_secs(5)),
        Err(HealthCheckProblem::TimeoutOverInterval { .. })
    ));
    let quick = tcp.clone().every(Duration::from_millis(200));
    assert_eq!(
        quick.validate(),
        Ok(()),
        "the default timeout fits any interval"
    );
    let zero = tcp.clone().every(Duration::ZERO);
    assert_eq!(
        zero.validate(),
        Err(HealthCheckProblem::Zero { which: "interval" })
    );
    let no_program = HealthCheckConfig::with_defaults(CheckKind::Command { args: vec![] });
    assert_eq!(no_program.validate(), Err(HealthCheckProblem::NoCommand));
    let query = HealthCheckConfig::with_defaults(CheckKind::http_get("/health?x=1"));
    assert_eq!(
        query.validate(),
        Err(HealthCheckProblem::Path {
            path: "/health?x=1".into(),
            problem: PathProblem::NotAllowed
        })
    );
    let spaced = HealthCheckConfig::with_defaults(CheckKind::grpc("billing Ledger"));
    assert_eq!(
        spaced.validate(),
        Err(HealthCheckProblem::GrpcService(GrpcServiceProblem {
            service: "billing Ledger".into()
        }))
    );
    assert_eq!(
        spaced.validate().map_err(|e| e.to_string()),
        Err(
            "gRPC service name \"billing Ledger\" contains whitespace or control characters".into()
        )
    );
    // The file refuses the same values, and takes the default timeout with a short interval.
    health_of("kind = \"tcp\"\ninterval = \"200ms\"\n");
    for table in [
        "kind = \"tcp\"\nfall = 500\n",
        "kind = \"tcp\"\ntimeout = \"5s\"\n",
        "kind = \"tcp\"\ninterval = \"0s\"\n",
        "kind = \"http\"\npath = \"/health?x=1\"\n",
        "kind = \"grpc\"\ngrpc_service = \"billing Ledger\"\n",
    ] {
        let text = format!("[[service]]\nname = \"s\"\n[service.health]\n{table}");
        assert!(parse_str("c.toml", &text).is_err(), "accepted: {table}");
    }
}
