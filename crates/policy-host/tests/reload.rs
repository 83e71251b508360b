//! Hot reload: swapping under concurrent load with no failed call, rejecting a bad module
//! while the old one keeps serving, and reloading on a file change.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use sluice_config::PolicyWorld;
use sluice_policy_host::types::Decision;
use sluice_policy_host::{AuthzOutcome, PolicyWatcher, ReloadOutcome};
use sluice_policy_test_artifacts as artifacts;

/// Replaces `to` with a copy of `from` atomically (write aside, then rename), as deploy tools do.
fn install(from: &str, to: &Path) {
    let aside = to.with_extension("tmp");
    std::fs::copy(from, &aside).expect("copy the module aside");
    std::fs::rename(&aside, to).expect("rename it into place");
}

#[test]
fn reload_swaps_under_concurrent_load_with_no_failed_call() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ecp.wasm");
    install(artifacts::ECP_AUTHZ, &file);
    let host = Arc::new(host());
    let mut config = policy(
        "ecp",
        &file,
        PolicyWorld::Authz,
        json!({"client_systems": ["app1"]}),
    );
    // Deadlines are wall-clock: four callers on a shared two-core machine can be descheduled
    // for several milliseconds. This test is about the swap, not the deadline.
    config.limits.timeout = Duration::from_millis(500);
    let report = host.apply_config(&[config]);
    assert!(report.is_ok(), "{report:?}");
    let handle = host.authz("ecp").unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let allowed_after_swap = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(5));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (handle, stop, allowed, start) = (
                handle.clone(),
                stop.clone(),
                allowed_after_swap.clone(),
                start.clone(),
            );
            std::thread::spawn(move || {
                start.wait();
                let visitor = peer("ecp", Some("app2"), "127.0.0.1");
                let mut calls = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match handle.authorize(&visitor) {
                        AuthzOutcome::Decided(Decision::Allow) => {
                            allowed.fetch_add(1, Ordering::Relaxed);
                        }
                        AuthzOutcome::Decided(Decision::Deny(_)) => {}
                        failed @ AuthzOutcome::Failed { .. } => {
                            panic!("a call failed during reload: {failed:?}")
                        }
                    }
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    start.wait();
    std::thread::sleep(Duration::from_millis(100));
    // The new module allows everyone: answers flip from deny to allow once it serves.
    install(artifacts::MISBEHAVING_AUTHZ, &file);
    let report = host.reload();
    assert!(
        matches!(report.policies[0].outcome, ReloadOutcome::Loaded { .. }),
        "{report:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while allowed_after_swap.load(Ordering::Relaxed) < 100 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let calls: u64 = callers
        .into_iter()
        .map(|c| c.join().expect("no caller saw a failure"))
        .sum();
    assert!(
        allowed_after_swap.load(Ordering::Relaxed) >= 100,
        "the new version serves"
    );
    let status = &host.list()[0];
    assert_eq!(status.errors, 0);
    assert_eq!(status.calls, calls);
}

#[test]
fn a_failing_reload_is_rejected_and_the_old_version_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ecp.wasm");
    install(artifacts::ECP_AUTHZ, &file);
    let host = host();
    assert!(
        host.apply_config(&[policy(
            "ecp",
            &file,
            PolicyWorld::Authz,
            json!({"client_systems": ["app1"]})
        )])
        .is_ok()
    );
    let sha_before = host.list()[0].sha256.clone();

    install(artifacts::WRONG_WORLD, &file);
    let report = host.reload();
    let (_, error) = report.rejected().next().expect("rejected");
    assert!(error.contains("missing export `authorize`"), "{error}");

    std::fs::write(&file, b"not wasm at all").unwrap();
    let report = host.reload();
    let (_, error) = report.rejected().next().expect("rejected");
    assert!(error.contains("not a WebAssembly component"), "{error}");

    let ecp = host.authz("ecp").unwrap();
    assert_eq!(
        ecp.authorize(&peer("ecp", Some("app1"), "127.0.0.1")),
        AuthzOutcome::Decided(Decision::Allow)
    );
    let status = &host.list()[0];
    assert_eq!(status.sha256, sha_before, "the old version still serves");
    assert!(
        status
            .last_load_error
            .as_deref()
            .unwrap()
            .contains("not a WebAssembly component")
    );
}

#[test]
fn a_changed_file_is_reloaded_by_the_watcher() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ecp.wasm");
    install(artifacts::ECP_AUTHZ, &file);
    let host = Arc::new(host());
    assert!(
        host.apply_config(&[policy(
            "ecp",
            &file,
            PolicyWorld::Authz,
            json!({"client_systems": ["app1"]})
        )])
        .is_ok()
    );
    let _watcher = PolicyWatcher::start(&host, Duration::from_millis(50)).unwrap();
    let ecp = host.authz("ecp").unwrap();
    let visitor = peer("ecp", Some("app2"), "127.0.0.1");
    assert!(!ecp.authorize(&visitor).is_allowed());

    install(artifacts::MISBEHAVING_AUTHZ, &file);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ecp.authorize(&visitor).is_allowed() {
        assert!(
            Instant::now() < deadline,
            "the watcher did not reload the changed file"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
