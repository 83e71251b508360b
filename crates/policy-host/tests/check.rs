//! `sluice policy check` as a library call, on the real components.

use sluice_config::PolicyWorld;
use sluice_policy_host::ModuleError;
use sluice_policy_host::check::{CheckError, check_module};
use sluice_policy_test_artifacts as artifacts;
use std::path::Path;

#[test]
fn check_detects_the_world_configures_and_calls() {
    let input = r#"{
        "instance": {"id": "ap1a", "service": "ap1", "address": "127.0.0.1", "port": 52773,
                     "tags": [], "metadata": [], "health": "Unknown"},
        "probe": {"kind": "Http", "status": 503, "headers": [], "body_prefix": [70, 65, 73, 76, 69, 68],
                  "latency_us": 1000}
    }"#;
    let report = check_module(Path::new(artifacts::MIRROR_PRIMARY), None, Some(input)).unwrap();
    assert_eq!(report.world, PolicyWorld::Health);
    assert!(report.passed(), "{report}");
    let call = report.call.as_ref().unwrap();
    assert_eq!(call.export, "evaluate");
    assert!(call.result.contains("Backup"), "{}", call.result);
    let printed = report.to_string();
    assert!(
        printed.contains("world:     health (exports configure, evaluate)"),
        "{printed}"
    );
    assert!(printed.contains("configure: ok"), "{printed}");
    assert!(printed.contains("evaluate: {"), "{printed}");
    assert_eq!(report.sha256.len(), 64);
}

#[test]
fn check_routes_and_authz_inputs() {
    let catalog = r#"[{"id": "w1", "service": "web", "address": "10.0.0.1", "port": 80,
                       "tags": ["urlprefix-/web"], "metadata": [], "health": "Passing"}]"#;
    let report = check_module(Path::new(artifacts::URLPREFIX), None, Some(catalog)).unwrap();
    assert_eq!(report.world, PolicyWorld::Routing);
    assert!(report.passed(), "{report}");
    assert!(
        report
            .call
            .unwrap()
            .result
            .contains("\"path_prefix\": \"/web\"")
    );

    let peer = r#"{"listener": "ecp", "source_address": "127.0.0.1", "source_port": 4000,
                   "client_certificate": {"subject_cn": "app9", "dns_sans": [], "uri_sans": [],
                   "issuer": "CN=ca", "sha256_fingerprint": "00", "not_before": 0, "not_after": 1}}"#;
    let report = check_module(
        Path::new(artifacts::ECP_AUTHZ),
        Some(r#"{"client_systems": "app1"}"#),
        Some(peer),
    )
    .unwrap();
    assert!(report.passed());
    assert!(
        report
            .call
            .unwrap()
            .result
            .contains("not in the allow-list")
    );
}

#[test]
fn check_reports_configure_failures_and_skips_the_call() {
    let peer = r#"{"listener": "ecp", "source_address": "127.0.0.1", "source_port": 1}"#;
    let report = check_module(Path::new(artifacts::ECP_AUTHZ), Some("{}"), Some(peer)).unwrap();
    assert!(!report.passed());
    let printed = report.to_string();
    assert!(
        printed.contains("configure: FAILED: configure rejected the config: nothing to allow"),
        "{printed}"
    );
    assert!(printed.contains("skipped (configure failed)"), "{printed}");
}

#[test]
fn check_reports_a_failing_call_with_its_failure_mode() {
    let peer = r#"{"listener": "loop", "source_address": "127.0.0.1", "source_port": 1}"#;
    let report = check_module(Path::new(artifacts::MISBEHAVING_AUTHZ), None, Some(peer)).unwrap();
    assert!(!report.passed());
    let call = report.call.unwrap();
    assert!(!call.answered);
    assert!(
        call.result
            .starts_with("timed out after 5ms (failing closed"),
        "{}",
        call.result
    );
}

#[test]
fn check_names_mismatched_exports_and_types() {
    // Exports `configure`, `authorise` and a mistyped `evaluate`.
    let error = check_module(Path::new(artifacts::WRONG_WORLD), None, None).unwrap_err();
    let CheckError::Module {
        source:
            ModuleError::ExportTypes {
                world: PolicyWorld::Health,
                ..
            },
        ..
    } = &error
    else {
        panic!("expected a type mismatch: {error}");
    };
    assert!(
        error
            .to_string()
            .contains("exports of world `health` do not match the contract's types")
    );
}

#[test]
fn check_rejects_bad_arguments_clearly() {
    let error = check_module(Path::new(artifacts::MIRROR_PRIMARY), None, Some("[]")).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("--input is not a valid {\"instance\": …, \"probe\": …} object"),
        "{error}"
    );
    let error = check_module(Path::new(artifacts::MIRROR_PRIMARY), Some("{"), None).unwrap_err();
    assert!(matches!(error, CheckError::Config(_)));
    let error = check_module(Path::new("/nonexistent/policy.wasm"), None, None).unwrap_err();
    assert!(matches!(error, CheckError::Read { .. }));
}
