//! The `examples/ecp` topology (seed 000) end to end: the example's own config file and
//! `gen-certificates.sh` (run here, into a temp dir), the real `ecp-authz` Wasm policy as the
//! binary carries it (`file = "builtin:ecp-authz"`, as the example names it), the
//! data-server stand-in on 127.0.0.21 and the `sluice` binary on 127.0.0.20, with
//! `openssl s_client` as the application servers. It walks the README: app1 and app2 allowed,
//! app3 refused (reason logged, `sluice_authz_denied_total` counted), then the KV key changed
//! at run time admits app3 without a restart or a reload.
//!
//! The addresses are the example's fixed ones, so everything runs in this one test.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sluice_test_support::{MirrorMember, MirrorRole, SluiceProcess, http_get, require_tool};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const EXAMPLE: &str = include_str!("../../../examples/ecp/sluice.toml");
const GEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/ecp/gen-certificates.sh"
);
const POLICY_LINE: &str = "file = \"builtin:ecp-authz\"";

/// The example's config with its relative paths (certificates, KV) made absolute: the test runs
/// it from another directory. The policy is the built-in one, as in the example.
fn example_config(dir: &Path) -> String {
    for needle in [POLICY_LINE, "path = \"kv\"", "\"certs/"] {
        assert!(
            EXAMPLE.contains(needle),
            "the example config no longer contains {needle:?}"
        );
    }
    EXAMPLE
        .replace(
            "path = \"kv\"",
            &format!("path = \"{}\"", dir.join("kv").display()),
        )
        .replace("\"certs/", &format!("\"{}/certs/", dir.display()))
}

/// What an application server with `app`'s certificate reads first from the superserver port:
/// the data server's greeting, or "" when Sluice closed the connection.
fn app_connects(dir: &Path, app: &str) -> String {
    let certs = dir.join("certs");
    sluice_test_support::s_client_first_line(
        "127.0.0.20:1972".parse().unwrap(),
        "datasrv",
        &certs.join("ca.pem"),
        &certs.join(format!("{app}.pem")),
        &certs.join(format!("{app}.key")),
    )
}

fn eventually_true(what: &str, check: impl FnMut() -> Result<(), String>) {
    sluice_test_support::eventually_blocking(what, Duration::from_secs(10), check);
}

#[test]
fn ecp_example_allows_refuses_and_admits_at_run_time() {
    require_tool("openssl");
    let dir = tempfile::tempdir().unwrap();
    let made = Command::new(require_tool("bash"))
        .arg(GEN)
        .arg(dir.path().join("certs"))
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "gen-certificates.sh failed: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    std::fs::create_dir_all(dir.path().join("kv/ecp")).unwrap();
    let key = dir.path().join("kv/ecp/CLIENT_SYSTEMS");
    std::fs::write(&key, "app1;app2\n").unwrap();

    let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
    let _datasrv = MirrorMember::start_on(
        "datasrv",
        MirrorRole::Primary,
        addr("127.0.0.21:52773"),
        addr("127.0.0.21:1972"),
    );
    let admin = addr("127.0.0.20:9901");
    let mut p = SluiceProcess::start(Path::new(BIN), &example_config(dir.path()), admin);

    assert_eq!(app_connects(dir.path(), "app1"), "datasrv");
    assert_eq!(app_connects(dir.path(), "app2"), "datasrv");
    assert_eq!(
        app_connects(dir.path(), "app3"),
        "",
        "app3 is not a client system yet"
    );
    eventually_true("the refusal is counted", || {
        let m = http_get(admin, "/metrics").map_err(|e| e.to_string())?.1;
        if m.contains(r#"sluice_authz_denied_total{listener="superserver",reason="policy"} 1"#) {
            Ok(())
        } else {
            Err(m)
        }
    });
    let stderr = p.stderr();
    assert!(
        stderr.contains("connection denied by [listener.authz]")
            && stderr.contains("client system `app3` is not in the allow-list"),
        "{stderr}"
    );

    // The seed's CLIENT_SYSTEMS grows by one: the key changes, nothing restarts.
    std::fs::write(&key, "app1;app2;app3\n").unwrap();
    eventually_true("app3 admitted", || {
        match app_connects(dir.path(), "app3").as_str() {
            "datasrv" => Ok(()),
            other => Err(format!("got {other:?}")),
        }
    });
    let m = http_get(admin, "/metrics").unwrap().1;
    assert!(!m.contains("sluice_config_reloads_total"), "no reload: {m}");
    // The access-log line is written when the session ends, a moment after the client left.
    eventually_true("app3's session logged", || {
        let out = p.stdout();
        if out.contains("\"cn\":\"app3\"") {
            Ok(())
        } else {
            Err(out)
        }
    });
    assert!(p.terminate(Duration::from_secs(5)).success());
}
