//! Template mode with a file KV source, missing-key policies, atomic writes and `check_cmd`,
//! re-render on change with quiescence, and the bind-mount (EBUSY) fallback.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use common::{DEADLINE, Sidecar, count_lines, read, trap_script, wait_for};
use nix::sys::signal::Signal;

const SETTINGS_TEMPLATE: &str = "DEBUG = {{ kv('web/debug') }}\nALLOWED_HOSTS = [{% for h in kv('web/allowed_hosts') | split(',') %}\"{{ h | trim }}\", {% endfor %}]\nINSTALLED_APPS = [{% for app in kv_list('web/apps/') %}\"{{ app.value }}\"{{ \", \" if not loop.last }}{% endfor %}]\nHOST = \"{{ env('HOSTNAME_FOR_TEST', 'none') }}\"\nLEVEL = \"{{ kv_or('web/level', 'info') }}\"\nSECRET = \"{{ file('secret.txt') | trim }}\"\n";

fn write_config(dir: &std::path::Path, extra_template: &str, extra: &str) {
    std::fs::write(dir.join("settings.py.j2"), SETTINGS_TEMPLATE).expect("template");
    std::fs::write(dir.join("secret.txt"), "s3cret\n").expect("secret");
    std::fs::create_dir_all(dir.join("kv")).expect("kv dir");
    std::fs::write(
        dir.join("sidecar.toml"),
        format!(
            "[[kv]]\nsource = \"file\"\npath = \"kv\"\npoll = \"50ms\"\n\n[watch]\nmin = \"300ms\"\nmax = \"3s\"\n\n[startup]\nblock_log_interval = \"200ms\"\n\n[[template]]\nsource = \"settings.py.j2\"\ndestination = \"out/settings.py\"\nmode = \"0640\"\n{extra_template}\n{extra}"
        ),
    )
    .expect("config");
}

fn put(dir: &std::path::Path, key: &str, value: &str) {
    let path = dir.join("kv").join(key);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    // Atomic, like the sidecar's own writes, so the poller never sees half a value.
    let staging = dir.join("kv").join(".staging");
    std::fs::write(&staging, value).expect("write");
    std::fs::rename(staging, path).expect("rename");
}

#[test]
fn templates_render_from_file_kv_and_block_until_keys_appear() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), "", "");
    put(dir.path(), "web/debug", "True");
    put(dir.path(), "web/apps/1", "tweetapp");
    put(dir.path(), "web/apps/2", "admin");
    let root = dir.path().to_owned();
    let log = root.join("signals.log");
    let script = trap_script(&log);
    let sidecar = Sidecar::start_in(
        dir,
        &["--config", "sidecar.toml", "--", "/bin/sh", "-c", &script],
        &[("HOSTNAME_FOR_TEST", "web_1")],
    );
    // `web/allowed_hosts` is missing: the render blocks, says which key it waits for, and the
    // workload has not started.
    sidecar.wait_log("still waiting for keys");
    assert!(
        sidecar.stderr().contains("web/allowed_hosts"),
        "{}",
        sidecar.stderr()
    );
    assert!(!log.exists(), "workload started before the first render");
    put(&root, "web/allowed_hosts", "localhost, 33.10.0.100");
    wait_for("workload start", DEADLINE, || {
        read(&log).contains("started").then_some(())
    });
    let settings = read(&root.join("out/settings.py"));
    assert_eq!(
        settings,
        "DEBUG = True\nALLOWED_HOSTS = [\"localhost\", \"33.10.0.100\", ]\nINSTALLED_APPS = [\"tweetapp\", \"admin\"]\nHOST = \"web_1\"\nLEVEL = \"info\"\nSECRET = \"s3cret\"\n"
    );
    let metadata = std::fs::metadata(root.join("out/settings.py")).expect("metadata");
    assert_eq!(metadata.permissions().mode() & 0o777, 0o640);
    let leftovers: Vec<_> = std::fs::read_dir(root.join("out"))
        .expect("out")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "staged files are cleaned up");
}

#[test]
fn missing_key_policy_fail_exits_listing_every_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), "missing = \"fail\"\n", "");
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
    let stderr = sidecar.stderr();
    assert!(
        stderr.contains("missing keys: web/allowed_hosts, web/debug"),
        "{stderr}"
    );
    assert!(!sidecar.path("ran").exists());
}

#[test]
fn blocking_render_gives_up_at_its_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), "missing_timeout = \"600ms\"\n", "");
    put(dir.path(), "web/debug", "True");
    let mut sidecar = Sidecar::start_in(dir, &["--config", "sidecar.toml", "--", "/bin/true"], &[]);
    assert_eq!(sidecar.wait(DEADLINE), 1);
    let stderr = sidecar.stderr();
    assert!(
        stderr.contains("settings.py.j2: still missing after 600ms: web/allowed_hosts"),
        "{stderr}"
    );
}

#[test]
fn change_rerenders_with_quiescence_and_signals_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), "signal = \"SIGHUP\"\n", "");
    put(dir.path(), "web/debug", "True");
    put(dir.path(), "web/allowed_hosts", "a");
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
    let inode = std::fs::metadata(root.join("out/settings.py"))
        .expect("rendered")
        .ino();
    // A burst of changes inside the quiescence window: one render, one SIGHUP.
    for value in ["b", "c", "d", "e"] {
        put(&root, "web/allowed_hosts", value);
        std::thread::sleep(Duration::from_millis(80));
    }
    wait_for("SIGHUP after the re-render", DEADLINE, || {
        (count_lines(&log, "HUP") == 1).then_some(())
    });
    assert!(read(&root.join("out/settings.py")).contains("[\"e\", ]"));
    assert_ne!(
        std::fs::metadata(root.join("out/settings.py"))
            .expect("file")
            .ino(),
        inode,
        "replaced by rename"
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(count_lines(&log, "HUP"), 1, "the burst was coalesced");
    // A change to a key no template reads renders nothing and signals nobody.
    put(&root, "unrelated/key", "x");
    // A change that renders the same bytes is not written and not signalled.
    put(&root, "web/level", "info");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(count_lines(&log, "HUP"), 1);
    assert!(
        sidecar.stderr().contains("unchanged"),
        "{}",
        sidecar.stderr()
    );
}

#[test]
fn check_cmd_rejection_keeps_the_last_good_file_and_the_workload() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The check refuses any settings file with DEBUG = False.
    write_config(
        dir.path(),
        "signal = \"SIGHUP\"\ncheck_cmd = [\"/bin/sh\", \"-c\", \"! grep -q 'DEBUG = False' {staged} || { echo refusing DEBUG=False >&2; exit 1; }\"]\n",
        "",
    );
    put(dir.path(), "web/debug", "True");
    put(dir.path(), "web/allowed_hosts", "a");
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
    put(&root, "web/debug", "False");
    sidecar.wait_log("check_cmd rejected the new content");
    assert!(
        sidecar.stderr().contains("refusing DEBUG=False"),
        "{}",
        sidecar.stderr()
    );
    assert!(
        read(&root.join("out/settings.py")).contains("DEBUG = True"),
        "last good file kept"
    );
    assert_eq!(count_lines(&log, "HUP"), 0);
    assert!(
        sidecar
            .stderr()
            .contains("keeping the last good file and the workload")
    );
    // Fixed value: the retry renders it and the workload is signalled.
    put(&root, "web/debug", "Maybe");
    wait_for("SIGHUP after the fix", DEADLINE, || {
        (count_lines(&log, "HUP") == 1).then_some(())
    });
    assert!(read(&root.join("out/settings.py")).contains("DEBUG = Maybe"));
    sidecar.signal(Signal::SIGTERM);
}

#[test]
fn check_cmd_rejection_at_start_exits_without_touching_the_destination() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(
        dir.path(),
        "missing = \"default\"\ncheck_cmd = \"exit 3\"\n",
        "",
    );
    std::fs::create_dir_all(dir.path().join("out")).expect("mkdir");
    std::fs::write(dir.path().join("out/settings.py"), "previous\n").expect("previous");
    let mut sidecar = Sidecar::start_in(dir, &["--config", "sidecar.toml", "--", "/bin/true"], &[]);
    assert_eq!(sidecar.wait(DEADLINE), 1);
    assert!(
        sidecar
            .stderr()
            .contains("check_cmd rejected the new content (exit code 3)"),
        "{}",
        sidecar.stderr()
    );
    assert_eq!(read(&sidecar.path("out/settings.py")), "previous\n");
}

#[test]
fn restart_action_restarts_the_workload() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), "on_change = \"restart\"\n", "");
    put(dir.path(), "web/debug", "True");
    put(dir.path(), "web/allowed_hosts", "a");
    let root = dir.path().to_owned();
    let log = root.join("signals.log");
    let script = trap_script(&log);
    let sidecar = Sidecar::start_in(
        dir,
        &["--config", "sidecar.toml", "--", "/bin/sh", "-c", &script],
        &[],
    );
    wait_for("workload start", DEADLINE, || {
        (count_lines(&log, "started") == 1).then_some(())
    });
    put(&root, "web/debug", "False");
    wait_for("workload restarted", DEADLINE, || {
        (count_lines(&log, "started") == 2).then_some(())
    });
    assert_eq!(
        count_lines(&log, "TERM"),
        1,
        "stopped with the stop signal first"
    );
    sidecar.signal(Signal::SIGTERM);
}

#[test]
fn single_file_bind_mount_is_written_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(
        dir.path(),
        "missing = \"default\"\nmissing_default = \"x\"\n",
        "",
    );
    let root = dir.path().to_owned();
    std::fs::create_dir_all(root.join("out")).expect("mkdir");
    std::fs::write(root.join("out/settings.py"), "mount point\n").expect("target");
    std::fs::write(root.join("host-file"), "host side\n").expect("source");
    // In a private mount namespace: bind a file over the destination (rename onto it gives
    // EBUSY), run the sidecar, and show what the host-side file holds afterwards.
    let script = format!(
        "mount --bind {host} {dest} && {bin} --config {config} -- /bin/true",
        host = root.join("host-file").display(),
        dest = root.join("out/settings.py").display(),
        bin = common::binary(),
        config = root.join("sidecar.toml").display()
    );
    let output = std::process::Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            &script,
        ])
        .current_dir(&root)
        .output()
        .expect("unshare");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("writing in place"), "{stderr}");
    assert!(
        read(&root.join("host-file")).starts_with("DEBUG = x\n"),
        "the bind-mounted file got the content"
    );
}

#[test]
fn invalid_configuration_is_reported_with_positions() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("sidecar.toml"), "[watch]\nmin = \"soon\"\n").expect("config");
    let mut sidecar = Sidecar::start_in(dir, &["--config", "sidecar.toml", "--", "/bin/true"], &[]);
    assert_eq!(sidecar.wait(DEADLINE), 2);
    assert!(
        sidecar
            .stderr()
            .contains("sidecar.toml:2:7: invalid duration \"soon\""),
        "{}",
        sidecar.stderr()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("t.j2"), "ok\n{% if %}\n").expect("template");
    let mut sidecar = Sidecar::start_in(dir, &["--template", "t.j2:out", "--", "/bin/true"], &[]);
    assert_eq!(sidecar.wait(DEADLINE), 2);
    assert!(sidecar.stderr().contains("t.j2:2:"), "{}", sidecar.stderr());
}
