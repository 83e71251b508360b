//! With a real etcd: re-render + SIGHUP on a KV change, KV outage keeps the workload up,
//! unreachable etcd at start, and registration (file and etcd registries) with role switch and
//! deregistration, read back the way discovery reads the registry (`sluice_kv::registry`).

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{DEADLINE, Sidecar, count_lines, read, trap_script, wait_for};
use nix::sys::signal::Signal;
use sluice_kv::KvEntry;
use sluice_kv::registry::{self, RegistryKind, ServiceDefinition};
use sluice_test_support::etcd::Etcd;

fn etcd_config(dir: &std::path::Path, endpoint: &str, extra: &str) {
    std::fs::write(dir.join("settings.j2"), "DEBUG = {{ kv('web/debug') }}\n").expect("template");
    std::fs::write(
        dir.join("sidecar.toml"),
        format!(
            "[[kv]]\nsource = \"etcd\"\nendpoints = [\"{endpoint}\"]\nprefix = \"web/\"\n\n[watch]\nmin = \"100ms\"\nmax = \"1s\"\n\n[[template]]\nsource = \"settings.j2\"\ndestination = \"settings.py\"\nsignal = \"SIGHUP\"\n{extra}"
        ),
    )
    .expect("config");
}

#[test]
fn etcd_change_rerenders_and_signals_and_an_outage_keeps_the_workload() {
    let mut etcd = Etcd::start();
    etcd.put("web/debug", "True");
    let dir = tempfile::tempdir().expect("tempdir");
    etcd_config(dir.path(), &etcd.endpoint(), "");
    let root = dir.path().to_owned();
    let log = root.join("signals.log");
    let script = trap_script(&log);
    let sidecar = Sidecar::start_in(
        dir,
        &["--config", "sidecar.toml", "--", "/bin/sh", "-c", &script],
        &[],
    );
    wait_for("workload start", DEADLINE, || {
        read(&log).contains("started").then_some(())
    });
    assert_eq!(read(&root.join("settings.py")), "DEBUG = True\n");

    etcd.put("web/debug", "False");
    wait_for("SIGHUP after the etcd change", DEADLINE, || {
        (count_lines(&log, "HUP") == 1).then_some(())
    });
    assert_eq!(read(&root.join("settings.py")), "DEBUG = False\n");

    // Outage: the sidecar reports it, the workload and the file stay.
    etcd.stop();
    sidecar.wait_log("KV source unavailable");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        common::alive(common::children_of(sidecar.pid())[0].0),
        "workload still running"
    );
    assert_eq!(read(&root.join("settings.py")), "DEBUG = False\n");
    // Back: the watch resumes and new changes flow again.
    etcd.restart();
    etcd.put("web/debug", "Maybe");
    wait_for("SIGHUP after the outage", DEADLINE, || {
        (count_lines(&log, "HUP") == 2).then_some(())
    });
    assert_eq!(read(&root.join("settings.py")), "DEBUG = Maybe\n");
    sidecar.signal(Signal::SIGTERM);
}

#[test]
fn unreachable_etcd_at_start_exits_after_the_deadline_naming_it() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().expect("tempdir");
    etcd_config(
        dir.path(),
        &endpoint,
        "\n[startup]\nkv_deadline = \"700ms\"\n",
    );
    let started = std::time::Instant::now();
    let mut sidecar = Sidecar::start_in(
        dir,
        &[
            "--config",
            "sidecar.toml",
            "--",
            "/bin/sh",
            "-c",
            "echo ran > ran",
        ],
        &[],
    );
    assert_eq!(sidecar.wait(DEADLINE), 1);
    assert!(started.elapsed() >= Duration::from_millis(650));
    let stderr = sidecar.stderr();
    assert!(
        stderr.contains(&format!("could not reach KV source etcd {endpoint}")),
        "{stderr}"
    );
    assert!(!sidecar.path("ran").exists());
}

/// Instances of `service` in a file registry directory, read the way discovery reads them.
fn file_instances(dir: &std::path::Path) -> Vec<ServiceDefinition> {
    let entries: Vec<KvEntry> = std::fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| {
                    KvEntry::new(
                        e.file_name().to_string_lossy(),
                        std::fs::read(e.path()).unwrap_or_default(),
                        1,
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let (instances, errors) = registry::instances_from_entries(&RegistryKind::File, &entries);
    assert!(errors.is_empty(), "{errors:?}");
    instances
}

#[test]
fn file_registration_waits_for_the_check_follows_the_role_and_deregisters_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_owned();
    let registry_dir = root.join("registry");
    std::fs::write(
        root.join("sidecar.toml"),
            "[registry]\nkind = \"file\"\ndir = \"registry\"\n\n[register]\nname = \"mongo\"\nid = \"mongo-1\"\naddress = \"10.0.0.3\"\nport = 27017\ntags = [\"nosql\"]\n\n[register.check]\ncommand = \"test -f ready\"\ninterval = \"100ms\"\n\n[register.role]\ncommand = \"test -f primary\"\ninterval = \"100ms\"\npass = { name = \"mongo-primary\", tags = [\"primary\"] }\nfail = { name = \"mongo-secondary\" }\n\n[exec]\ncommand = \"trap 'ls registry > seen-at-term; exit 0' TERM; touch started; while :; do sleep 0.05; done\"\n",
    )
    .expect("config");
    let mut sidecar = Sidecar::start_in(dir, &["--config", "sidecar.toml"], &[]);
    wait_for("workload start", DEADLINE, || {
        root.join("started").exists().then_some(())
    });
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        file_instances(&registry_dir).is_empty(),
        "not registered before the check passes"
    );

    std::fs::write(root.join("ready"), "").expect("ready");
    let registered = wait_for("registration as secondary", DEADLINE, || {
        file_instances(&registry_dir)
            .into_iter()
            .find(|i| i.name == "mongo-secondary")
    });
    assert_eq!(
        (
            registered.instance_id(),
            registered.address.as_str(),
            registered.port
        ),
        ("mongo-1", "10.0.0.3", 27017)
    );
    assert_eq!(registered.tags, ["nosql"]);
    assert_eq!(
        registered.check.as_ref().map(|c| c.args.clone()),
        Some(vec!["/bin/sh".into(), "-c".into(), "test -f ready".into()])
    );

    // The role probe passes: the same instance moves to mongo-primary, in place.
    std::fs::write(root.join("primary"), "").expect("primary");
    let primary = wait_for("role switch to primary", DEADLINE, || {
        let instances = file_instances(&registry_dir);
        (instances.len() == 1 && instances[0].name == "mongo-primary").then(|| instances[0].clone())
    });
    assert_eq!(primary.tags, ["nosql", "primary"]);
    std::fs::remove_file(root.join("primary")).expect("rm");
    wait_for("role switch back", DEADLINE, || {
        let instances = file_instances(&registry_dir);
        (instances.len() == 1 && instances[0].name == "mongo-secondary").then_some(())
    });

    // Stop: deregistered before the workload gets its stop signal.
    sidecar.signal(Signal::SIGTERM);
    assert_eq!(sidecar.wait(DEADLINE), 0, "{}", sidecar.stderr());
    assert_eq!(
        read(&root.join("seen-at-term")),
        "",
        "registry was empty when TERM arrived"
    );
    assert!(file_instances(&registry_dir).is_empty());
}

/// A status page like seed 001's mirror_status: 200 SUCCESS on the primary, 503 otherwise.
fn mirror_status_server(primary: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buffer = [0u8; 1024];
            let _ = stream.read(&mut buffer);
            let response = if primary.load(Ordering::SeqCst) {
                "HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nSUCCESS"
            } else {
                "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 6\r\nConnection: close\r\n\r\nFAILED"
            };
            let _ = stream.write_all(response.as_bytes());
        }
    });
    port
}

#[test]
fn etcd_registration_with_lease_http_role_probe_and_deregistration() {
    let etcd = Etcd::start();
    let primary = Arc::new(AtomicBool::new(false));
    let port = mirror_status_server(primary.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_owned();
    std::fs::write(
        root.join("sidecar.toml"),
        format!(
            "[registry]\nkind = \"etcd\"\nendpoints = [\"{endpoint}\"]\nttl = \"2s\"\n\n[register]\nname = \"ap1\"\nid = \"ap1a\"\naddress = \"127.0.0.1\"\nport = 1972\n\n[register.role]\nhttp = \"http://127.0.0.1:{port}/csp/mirror_status.cxw\"\ninterval = \"100ms\"\npass = {{ name = \"ap1-primary\" }}\nfail = {{ name = \"ap1-backup\" }}\n\n[exec]\ncommand = \"trap 'exit 0' TERM; while :; do sleep 0.05; done\"\n",
            endpoint = etcd.endpoint()
        ),
    )
    .expect("config");
    let mut sidecar = Sidecar::start_in(dir, &["--config", "sidecar.toml"], &[]);
    let prefix = registry::DEFAULT_ETCD_PREFIX;
    let instances = || -> Vec<ServiceDefinition> {
        let entries: Vec<KvEntry> = etcd
            .list(prefix)
            .into_iter()
            .map(|(k, v)| KvEntry::new(k, v.into_bytes(), 1))
            .collect();
        let (found, errors) = registry::instances_from_entries(
            &RegistryKind::Etcd {
                prefix: prefix.into(),
            },
            &entries,
        );
        assert!(errors.is_empty(), "{errors:?}");
        found
    };
    wait_for("registered as backup", DEADLINE, || {
        let found = instances();
        (found.len() == 1 && found[0].name == "ap1-backup").then_some(())
    });
    assert_eq!(etcd.list(prefix)[0].0, "/sluice/services/ap1-backup/ap1a");
    primary.store(true, Ordering::SeqCst);
    wait_for("moved to primary", DEADLINE, || {
        let found = instances();
        (found.len() == 1 && found[0].name == "ap1-primary").then_some(())
    });
    // Heartbeats keep the 2 s lease alive well past its TTL.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(instances().len(), 1, "lease kept alive");
    sidecar.signal(Signal::SIGTERM);
    assert_eq!(sidecar.wait(DEADLINE), 0, "{}", sidecar.stderr());
    assert!(instances().is_empty(), "deregistered on stop");

    // A registrant that dies without deregistering disappears when its lease expires.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("sidecar.toml"),
        read(&root.join("sidecar.toml")),
    )
    .expect("config");
    let mut sidecar = Sidecar::start_in(dir, &["--config", "sidecar.toml"], &[]);
    wait_for("registered again", DEADLINE, || {
        (instances().len() == 1).then_some(())
    });
    sidecar.kill_with_workload();
    wait_for("lease expiry removes the dead registrant", DEADLINE, || {
        instances().is_empty().then_some(())
    });
}

#[test]
fn services_function_renders_registered_instances() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_owned();
    std::fs::create_dir_all(root.join("registry")).expect("mkdir");
    std::fs::write(root.join("registry/web-1.json"), r#"{"service": {"name": "web", "id": "web-1", "address": "10.0.0.10", "port": 8000, "tags": ["urlprefix-/web"]}}"#).expect("def");
    std::fs::write(root.join("upstreams.j2"), "{% for s in services('web') %}server {{ s.address }}:{{ s.port }}; # {{ s.id }}\n{% endfor %}").expect("template");
    std::fs::write(
        root.join("sidecar.toml"),
        "[registry]\nkind = \"file\"\ndir = \"registry\"\npoll = \"50ms\"\n\n[watch]\nmin = \"50ms\"\n\n[[template]]\nsource = \"upstreams.j2\"\ndestination = \"upstreams.conf\"\n\n[exec]\ncommand = \"trap 'exit 0' TERM; while :; do sleep 0.05; done\"\n",
    )
    .expect("config");
    let sidecar = Sidecar::start_in(dir, &["--config", "sidecar.toml"], &[]);
    wait_for("first render", DEADLINE, || {
        (read(&root.join("upstreams.conf")) == "server 10.0.0.10:8000; # web-1\n").then_some(())
    });
    std::fs::write(
        root.join("registry/web-2.json"),
        r#"{"service": {"name": "web", "id": "web-2", "address": "10.0.0.11", "port": 8000}}"#,
    )
    .expect("def");
    wait_for("second instance rendered", DEADLINE, || {
        (read(&root.join("upstreams.conf"))
            == "server 10.0.0.10:8000; # web-1\nserver 10.0.0.11:8000; # web-2\n")
            .then_some(())
    });
    sidecar.signal(Signal::SIGTERM);
}
