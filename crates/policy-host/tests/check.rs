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

#[test]
fn check_shows_what_the_guest_logged() {
    // Inside its admission window ecp-authz admits an unknown certificate and logs it at warn.
    let peer = r#"{"listener": "ecp", "source_address": "127.0.0.1", "source_port": 4000,
                   "client_certificate": {"subject_cn": "newcomer", "dns_sans": [], "uri_sans": [],
                   "issuer": "CN=ca", "sha256_fingerprint": "ab", "not_before": 0, "not_after": 1}}"#;
    let config = r#"{"client_systems": ["app1"], "admission_window_secs": 600}"#;
    let report = check_module(Path::new(artifacts::ECP_AUTHZ), Some(config), Some(peer)).unwrap();
    assert!(report.passed(), "{report}");
    assert_eq!(report.log.len(), 1, "{:?}", report.log);
    assert_eq!(report.log[0].level, tracing::Level::WARN);
    assert!(
        report.log[0]
            .message
            .starts_with("admission window: admitting unknown client system `newcomer`"),
        "{:?}",
        report.log
    );
    let printed = report.to_string();
    assert!(
        printed.contains("\nlog:       1 line\n  WARN  admission window: admitting"),
        "{printed}"
    );

    let quiet = check_module(Path::new(artifacts::MIRROR_PRIMARY), None, None).unwrap();
    assert!(quiet.log.is_empty());
    assert!(quiet.to_string().ends_with("log:       (nothing logged)"));
}

#[test]
fn a_trap_names_the_guest_functions_on_one_line() {
    let peer = r#"{"listener": "panic", "source_address": "127.0.0.1", "source_port": 1}"#;
    // The call has the default 5 ms deadline; on a loaded machine a panic (formatting, stderr)
    // can miss it, so a timed-out attempt is retried.
    let call = (0..5)
        .map(|_| {
            let report =
                check_module(Path::new(artifacts::MISBEHAVING_AUTHZ), None, Some(peer)).unwrap();
            report.call.unwrap()
        })
        .find(|call| !call.result.starts_with("timed out"))
        .expect("the call timed out five times");
    assert!(!call.answered);
    let (error, _) = call.result.split_once(" (failing closed").unwrap();
    assert!(!error.contains('\n'), "{error}");
    assert!(
        error.starts_with("trapped: wasm trap: wasm `unreachable` instruction executed; guest stderr: thread '<unnamed>' (1) panicked at crates/policy-test-artifacts/guests/src/lib.rs:"),
        "{error}"
    );
    assert!(!error.contains("RUST_BACKTRACE"), "{error}");
    // The policy's own frames, demangled, innermost first; the panic machinery left out.
    assert!(
        error.contains(
            "Rust runtime frames left out): sluice_policy_test_guests::misbehave_on <- authorize"
        ),
        "{error}"
    );
}

#[test]
fn a_file_that_is_not_a_component_is_described_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"GIF89a, not a policy at all").unwrap();
    let error = check_module(&garbage, None, None).unwrap_err().to_string();
    assert_eq!(
        error,
        format!(
            "{}: not a WebAssembly component: not WebAssembly: the file (27 bytes) starts with 47 49 46 38, not the magic number \\0asm (00 61 73 6d)",
            garbage.display()
        )
    );

    // A core module (`(module)`: magic, version 1) is named as such.
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let error = check_module(&core, None, None).unwrap_err().to_string();
    assert!(
        error.ends_with("not a WebAssembly component: a core WebAssembly module, not a component: build for `wasm32-wasip2` (or wrap it with `wasm-tools component new`)"),
        "{error}"
    );

    // A truncated component: wasmtime's own message, on one line.
    let truncated = dir.path().join("truncated.wasm");
    let bytes = std::fs::read(artifacts::URLPREFIX).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let error = check_module(&truncated, None, None)
        .unwrap_err()
        .to_string();
    assert!(!error.contains('\n'), "{error}");
    assert!(error.contains("not a WebAssembly component: "), "{error}");
}
