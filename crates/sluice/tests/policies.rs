//! The `sluice` binary with real Wasm policy components: `sluice policy check`, loading at
//! start-up, the admin API, and refusing to start on a bad module.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sluice_policy_test_artifacts::{MIRROR_PRIMARY, WRONG_WORLD};
use sluice_test_support::{SluiceProcess, free_port, http_get, http_request};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

#[test]
fn policy_check_names_the_world_and_runs_one_call() {
    let input = r#"{"instance": {"id": "ap1a", "service": "ap1", "address": "127.0.0.1", "port": 1972, "tags": [], "metadata": [], "health": "Unknown"},
                    "probe": {"kind": "Http", "status": 200, "headers": [], "body_prefix": [83,85,67,67,69,83,83], "latency_us": 900}}"#;
    let out = Command::new(BIN)
        .args(["policy", "check", MIRROR_PRIMARY, "--input", input])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("health"), "names the world: {text}");
    assert!(
        text.to_lowercase().contains("primary"),
        "the probe 200 SUCCESS makes a primary: {text}"
    );

    let out = Command::new(BIN)
        .args(["policy", "check", WRONG_WORLD])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("export"), "names what does not match: {all}");
}

fn config(admin: SocketAddr, web: SocketAddr, policy_file: &str) -> String {
    format!(
        "[admin]\nbind = \"{admin}\"\n[access_log]\npath = \"off\"\n[[listener]]\nname = \"web\"\nbind = \"{web}\"\n\
         [[policy]]\nname = \"mirror\"\nfile = \"{policy_file}\"\nworld = \"health\"\nconfig = {{ primary_status = 200 }}\n"
    )
}

#[test]
fn policies_load_at_start_and_show_in_the_admin_api() {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let web: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut p = SluiceProcess::start(Path::new(BIN), &config(admin, web, MIRROR_PRIMARY), admin);
    let (status, body) = http_get(admin, "/api/policies").unwrap();
    assert_eq!(status, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list[0]["name"], "mirror");
    assert_eq!(list[0]["world"], "health");
    assert_eq!(list[0]["sha256"].as_str().unwrap().len(), 64, "{list}");
    let (status, body) = http_request(admin, "POST", "/api/policies/reload").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("unchanged"),
        "same file, nothing to do: {body}"
    );
    assert!(p.terminate(Duration::from_secs(5)).success());
}

#[test]
fn a_module_of_the_wrong_world_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let web: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, config(admin, web, WRONG_WORLD)).unwrap();
    let out = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("policies could not be loaded") && err.contains("mirror"),
        "{err}"
    );
}
