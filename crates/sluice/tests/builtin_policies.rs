//! The policies built into the `sluice` binary (`file = "builtin:NAME"`), with the real binary
//! on loopback: `builtin:mirror-primary` and `builtin:ecp-authz` load from one config with no
//! `.wasm` file anywhere and make their decisions; `/api/policies` shows where they come from
//! and a reload leaves them as they are; an unknown name stops the config at its
//! `file:line:col`; `sluice policy check builtin:NAME` runs one and names them all when asked
//! for one that does not exist.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use sluice_config::BUILTIN_POLICIES;
use sluice_test_support::certs::{Leaf, TestCa};
use sluice_test_support::{
    MirrorMember, MirrorRole, SluiceProcess, free_port, http_get, http_request, require_tool,
};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn loopback() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

fn eventually(what: &str, check: impl FnMut() -> Result<(), String>) {
    sluice_test_support::eventually_blocking(what, Duration::from_secs(10), check);
}

/// `host` of the member that answered `GET /api/who` through the web listener.
fn answered_by(web: SocketAddr) -> Result<String, String> {
    let (status, body) = http_get(web, "/api/who").map_err(|e| e.to_string())?;
    let json: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    match (status, json["host"].as_str()) {
        (200, Some(host)) => Ok(host.to_owned()),
        _ => Err(format!("{status} {body}")),
    }
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn builtin_mirror_primary_and_ecp_authz_load_by_name_and_decide() {
    require_tool("openssl");
    let ca = TestCa::new("ECP CA");
    let server = ca.issue(&Leaf::server("data", &["data.test"]));
    ca.issue(&Leaf::client("app1", "app1", &[]));
    ca.issue(&Leaf::client("app3", "app3", &[]));
    let a = MirrorMember::start("a", MirrorRole::Primary);
    let b = MirrorMember::start("b", MirrorRole::Backup);
    let (admin, web, db) = (loopback(), loopback(), loopback());
    let config = format!(
        "[admin]\nbind = \"{admin}\"\n[access_log]\npath = \"off\"\n\
         [[policy]]\nname = \"mirror\"\nworld = \"health\"\nfile = \"builtin:mirror-primary\"\n\
         [[policy]]\nname = \"ecp\"\nworld = \"authz\"\nfile = \"builtin:ecp-authz\"\n\
         config = {{ client_systems = \"app1;app2\" }}\n\
         [[listener]]\nname = \"web\"\nbind = \"{web}\"\n\
         [[listener]]\nname = \"db\"\nbind = \"{db}\"\nprotocol = \"tcp\"\nservice = \"data\"\n\
         [listener.tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\nclient_auth = \"required\"\n\
         [listener.authz]\npolicy = \"ecp\"\n\
         [[route]]\nlistener = \"web\"\npath = \"/\"\nservice = \"app\"\n\
         [[service]]\nname = \"app\"\ninstances = [\"{}\", \"{}\"]\nserve = \"primary\"\n\
         health = {{ kind = \"http\", path = \"/csp/mirror_status.cxw\", policy = \"mirror\", interval = \"300ms\", timeout = \"300ms\" }}\n\
         [[service]]\nname = \"data\"\ninstances = [\"{}\"]\n",
        server.cert,
        server.key,
        ca.ca_path,
        a.web(),
        b.web(),
        a.tcp(),
    );
    let mut sluice = SluiceProcess::start(Path::new(BIN), &config, admin);

    // mirror-primary: traffic follows whichever member says it is primary.
    eventually("a, the primary, answers", || match answered_by(web)? {
        host if host == "a" => Ok(()),
        other => Err(other),
    });
    b.set_role(MirrorRole::Primary);
    a.set_role(MirrorRole::Backup);
    eventually("b, primary now, answers", || match answered_by(web)? {
        host if host == "b" => Ok(()),
        other => Err(other),
    });

    // ecp-authz: the allow-list in its config decides who may connect.
    let first_line = |client: &str| sluice_test_support::s_client_first_line_as(db, &ca, client);
    assert_eq!(first_line("app1"), "a", "app1 is on the allow-list");
    assert_eq!(first_line("app3"), "", "app3 is not");

    // Where they come from, and a reload that has nothing to reload.
    let (status, body) = http_get(admin, "/api/policies").unwrap();
    assert_eq!(status, 200, "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    let sources: Vec<(&str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["file"].as_str().unwrap()))
        .collect();
    assert_eq!(
        sources,
        [
            ("ecp", "builtin:ecp-authz"),
            ("mirror", "builtin:mirror-primary")
        ]
    );
    let (status, body) = http_request(admin, "POST", "/api/policies/reload").unwrap();
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    let reloaded = report["policies"].as_array().unwrap();
    assert_eq!(reloaded.len(), 2, "{body}");
    for policy in reloaded {
        assert_eq!(policy["outcome"], "unchanged", "{body}");
    }
    assert!(sluice.terminate(Duration::from_secs(5)).success());
}

#[test]
fn an_unknown_builtin_stops_the_config_at_its_position_naming_the_known_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(
        &path,
        "[[policy]]\nname = \"mirror\"\nworld = \"health\"\nfile = \"builtin:mirror-primry\"\n",
    )
    .unwrap();
    for command in ["check", "run"] {
        let out = Command::new(BIN)
            .args([command, "-c"])
            .arg(&path)
            .output()
            .unwrap();
        let text = output_text(&out);
        assert_eq!(out.status.code(), Some(2), "{command}: {text}");
        let at = format!(
            "{}:4:8: error: unknown built-in policy `mirror-primry`",
            path.display()
        );
        assert!(text.contains(&at), "{command}: {text}");
        let hint = format!(
            "did you mean \"builtin:mirror-primary\"? built-in policies: {}",
            BUILTIN_POLICIES.join(", ")
        );
        assert!(text.contains(&hint), "{command}: {text}");
    }
}

#[test]
fn policy_check_runs_a_builtin_and_lists_them_for_an_unknown_name() {
    let peer = |cn: &str| {
        format!(
            r#"{{"listener": "db", "source_address": "127.0.0.1", "source_port": 50000, "sni": null, "alpn": null,
               "client_certificate": {{"subject_cn": "{cn}", "dns_sans": [], "uri_sans": [], "issuer": "CN=ECP CA",
                                      "sha256_fingerprint": "{}", "not_before": 0, "not_after": 4000000000}}}}"#,
            "00".repeat(32)
        )
    };
    let check = |input: &str| {
        Command::new(BIN)
            .args(["policy", "check", "builtin:ecp-authz"])
            .args([
                "--config",
                r#"{"client_systems": "app1;app2"}"#,
                "--input",
                input,
            ])
            .output()
            .unwrap()
    };
    let out = check(&peer("app1"));
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with("module:    builtin:ecp-authz ("), "{text}");
    assert!(text.contains("world:     authz"), "{text}");
    assert!(text.contains("authorize: \"Allow\""), "{text}");
    let out = check(&peer("app3"));
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("authorize: {\n  \"Deny\""), "{text}");

    let out = Command::new(BIN)
        .args(["policy", "check", "builtin:nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "sluice: builtin:nope: no built-in policy `nope` (built-in policies: {})\n",
            BUILTIN_POLICIES.join(", ")
        )
    );
}
