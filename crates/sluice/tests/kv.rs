#![allow(clippy::unwrap_used)]
//! `[[kv]]` end to end: the `ecp-authz` policy reads its allow-list from a KV key (a file
//! document, then a real etcd) and a change to that key admits a client at run time, with no
//! reload. Clients are `openssl s_client` with certificates from a CA made at test time.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use sluice_test_support::certs::{Leaf, TestCa};
use sluice_test_support::etcd::Etcd;
use sluice_test_support::{
    MirrorMember, MirrorRole, SluiceProcess, free_port, http_get, s_client_first_line_as,
};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn eventually_true(what: &str, check: impl FnMut() -> Result<(), String>) {
    sluice_test_support::eventually_blocking(what, Duration::from_secs(15), check);
}

fn metrics(admin: SocketAddr) -> String {
    http_get(admin, "/metrics").unwrap().1
}

struct Setup {
    ca: TestCa,
    member: MirrorMember,
    admin: SocketAddr,
    db: SocketAddr,
}

fn setup() -> Setup {
    let ca = TestCa::new("KV CA");
    ca.issue(&Leaf::server("data", &["data.test"]));
    for app in ["app1", "app2", "app3"] {
        ca.issue(&Leaf::client(app, app, &[]));
    }
    Setup {
        ca,
        member: MirrorMember::start("datasrv", MirrorRole::Primary),
        admin: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        db: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
    }
}

/// A data-server listener whose `ecp-authz` allow-list is only the KV key `ecp/CLIENT_SYSTEMS`.
fn config(s: &Setup, kv: &str) -> String {
    format!(
        "[admin]\nbind = \"{}\"\n[runtime]\nworker_threads = 2\nshutdown_grace = \"1s\"\n[access_log]\npath = \"off\"\n\
         {kv}\n\
         [[policy]]\nname = \"ecp\"\nfile = {:?}\nworld = \"authz\"\nconfig = {{ client_systems_kv_key = \"ecp/CLIENT_SYSTEMS\" }}\n\
         [[listener]]\nname = \"db\"\nbind = \"{}\"\nprotocol = \"tcp\"\nservice = \"data\"\n\
         [listener.tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\nclient_auth = \"required\"\n\
         [listener.authz]\npolicy = \"ecp\"\n\
         [[service]]\nname = \"data\"\ninstances = [\"{}\"]\n",
        s.admin,
        sluice_policy_test_artifacts::ECP_AUTHZ,
        s.db,
        s.ca.dir().join("data.pem"),
        s.ca.dir().join("data.key"),
        s.ca.ca_path,
        s.member.tcp()
    )
}

#[test]
fn allow_list_in_a_kv_file_changes_at_run_time_without_a_reload() {
    let s = setup();
    let kv_file = s.ca.dir().join("kv.toml");
    std::fs::write(&kv_file, "[ecp]\nCLIENT_SYSTEMS = \"app1;app2\"\n").unwrap();
    let kv = format!("[[kv]]\nsource = \"file\"\npath = {kv_file:?}\npoll = \"200ms\"\n");
    let mut p = SluiceProcess::start(Path::new(BIN), &config(&s, &kv), s.admin);

    assert_eq!(s_client_first_line_as(s.db, &s.ca, "app1"), "datasrv");
    assert_eq!(
        s_client_first_line_as(s.db, &s.ca, "app3"),
        "",
        "app3 is not listed yet"
    );

    std::fs::write(&kv_file, "[ecp]\nCLIENT_SYSTEMS = \"app1;app2;app3\"\n").unwrap();
    eventually_true(
        "app3 admitted after the KV change",
        || match s_client_first_line_as(s.db, &s.ca, "app3").as_str() {
            "datasrv" => Ok(()),
            other => Err(format!("got {other:?}")),
        },
    );
    let m = metrics(s.admin);
    assert!(
        !m.contains("sluice_config_reloads_total"),
        "no reload happened: {m}"
    );
    assert!(
        m.contains(&format!(
            "sluice_kv_source_up{{source=\"file {}\"}} 1",
            kv_file.display()
        )),
        "{m}"
    );
    assert!(m.contains("sluice_kv_changes_total"), "{m}");
    assert!(
        p.stderr().contains("KV keys changed"),
        "the change is logged: {}",
        p.stderr()
    );

    // Removing a name denies it again, with the policy's reason.
    std::fs::write(&kv_file, "[ecp]\nCLIENT_SYSTEMS = \"app2\"\n").unwrap();
    eventually_true(
        "app1 refused after the KV change",
        || match s_client_first_line_as(s.db, &s.ca, "app1").as_str() {
            "" => Ok(()),
            other => Err(format!("got {other:?}")),
        },
    );
    assert!(
        p.stderr()
            .contains("client system `app1` is not in the allow-list"),
        "{}",
        p.stderr()
    );
    assert!(p.terminate(Duration::from_secs(5)).success());
}

#[test]
fn allow_list_in_etcd_changes_at_run_time_and_survives_an_etcd_outage() {
    let s = setup();
    let mut etcd = Etcd::start();
    etcd.put("ecp/CLIENT_SYSTEMS", "app1;app2");
    let kv = format!(
        "[[kv]]\nsource = \"etcd\"\nendpoints = [\"{}\"]\nprefix = \"ecp/\"\nrequest_timeout = \"1s\"\n",
        etcd.endpoint()
    );
    let mut p = SluiceProcess::start(Path::new(BIN), &config(&s, &kv), s.admin);
    let up = format!("sluice_kv_source_up{{source=\"etcd {}\"}}", etcd.endpoint());

    assert_eq!(s_client_first_line_as(s.db, &s.ca, "app2"), "datasrv");
    assert_eq!(s_client_first_line_as(s.db, &s.ca, "app3"), "");

    etcd.put("ecp/CLIENT_SYSTEMS", "app1;app2;app3");
    eventually_true(
        "app3 admitted after the etcd put",
        || match s_client_first_line_as(s.db, &s.ca, "app3").as_str() {
            "datasrv" => Ok(()),
            other => Err(format!("got {other:?}")),
        },
    );
    assert!(!metrics(s.admin).contains("sluice_config_reloads_total"));

    // etcd down: the last values keep deciding; the outage is logged and visible.
    etcd.stop();
    eventually_true("outage reported", || {
        let m = metrics(s.admin);
        if m.contains(&format!("{up} 0")) && p.stderr().contains("KV source unreachable") {
            Ok(())
        } else {
            Err(m)
        }
    });
    assert_eq!(
        s_client_first_line_as(s.db, &s.ca, "app3"),
        "datasrv",
        "the last values stay in use while etcd is down"
    );
    etcd.restart();
    eventually_true("etcd back", || {
        let m = metrics(s.admin);
        if m.contains(&format!("{up} 1")) {
            Ok(())
        } else {
            Err(m)
        }
    });
    etcd.put("ecp/CLIENT_SYSTEMS", "app2");
    eventually_true(
        "app3 refused after the next change",
        || match s_client_first_line_as(s.db, &s.ca, "app3").as_str() {
            "" => Ok(()),
            other => Err(format!("got {other:?}")),
        },
    );
    assert!(p.terminate(Duration::from_secs(5)).success());
}
