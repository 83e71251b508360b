//! Environment (and KV) values are bytes, not text (issue 18, item 7). The sidecar used to panic
//! at start (exit 101) when any variable was not UTF-8. These run the real binary, and compare
//! envsubst output with GNU envsubst (gettext-base, installed by scripts/setup.sh).

mod common;

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Stdio};

use common::{DEADLINE, Sidecar, binary, read, wait_for};

/// `caf\xe9`: "café" in Latin-1, the usual way such a variable gets into a container.
const LATIN1: &[u8] = b"caf\xe9";

fn os(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

/// PATH plus `BAD=caf\xe9` and a variable whose *name* is not UTF-8.
fn bad_env() -> Vec<(&'static OsStr, &'static OsStr)> {
    vec![
        (os(b"PATH"), os(b"/usr/bin:/bin")),
        (os(b"BAD"), os(LATIN1)),
        (os(b"N\xffME"), os(b"v\xfe")),
    ]
}

fn args<'a>(list: &[&'a str]) -> Vec<&'a OsStr> {
    list.iter().map(|arg| OsStr::new(*arg)).collect()
}

#[test]
fn plain_supervision_passes_non_utf8_variables_to_the_workload() {
    // The exact report: `env -i PATH=/usr/bin:/bin BAD=$'caf\xe9' sluice-sidecar -- /bin/echo hi`.
    let mut sidecar = Sidecar::start_clean(
        tempfile::tempdir().expect("tempdir"),
        &args(&["--", "/bin/echo", "hi"]),
        &bad_env()[..2],
    );
    assert_eq!(sidecar.wait(DEADLINE), 0, "{}", sidecar.stderr());
    assert_eq!(sidecar.stdout(), "hi\n");

    // The workload sees every variable byte for byte, the odd name included.
    let mut sidecar = Sidecar::start_clean(
        tempfile::tempdir().expect("tempdir"),
        &args(&["--", "/usr/bin/env"]),
        &bad_env(),
    );
    assert_eq!(sidecar.wait(DEADLINE), 0, "{}", sidecar.stderr());
    let seen = sidecar.stdout_bytes();
    let lines: Vec<&[u8]> = seen.split(|&b| b == b'\n').collect();
    assert!(lines.contains(&&b"BAD=caf\xe9"[..]), "{seen:?}");
    assert!(lines.contains(&&b"N\xffME=v\xfe"[..]), "{seen:?}");

    // Through a shell, as the report's workload would read it.
    let mut sidecar = Sidecar::start_clean(
        tempfile::tempdir().expect("tempdir"),
        &args(&["--", "/bin/sh", "-c", "printf %s \"$BAD\" | od -An -tx1"]),
        &bad_env(),
    );
    assert_eq!(sidecar.wait(DEADLINE), 0, "{}", sidecar.stderr());
    assert_eq!(sidecar.stdout().trim(), "63 61 66 e9");
}

/// Runs `program args` with only `env`, `input` on stdin; (exit code, stdout bytes, stderr).
fn filter(
    program: &str,
    args: &[&str],
    input: &[u8],
    env: &[(&OsStr, &OsStr)],
) -> (i32, Vec<u8>, String) {
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {program}: {e} (GNU envsubst comes from gettext-base: run scripts/setup.sh)")
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    let output = child.wait_with_output().expect("wait");
    (
        output.status.code().unwrap_or(-1),
        output.stdout,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A template using the variable both ways, with Latin-1 bytes of its own.
const TEMPLATE: &[u8] = b"name=${BAD}\nagain=$BAD!\nown bytes: \xe9\xff $PATH\n";

#[test]
fn envsubst_filter_writes_the_raw_bytes_like_gnu_envsubst() {
    let env = bad_env();
    let gnu = filter("envsubst", &[], TEMPLATE, &env);
    assert_eq!(gnu.0, 0, "GNU envsubst: {}", gnu.2);
    let expected: &[u8] = b"name=caf\xe9\nagain=caf\xe9!\nown bytes: \xe9\xff /usr/bin:/bin\n";
    assert_eq!(gnu.1, expected, "GNU envsubst itself");
    let ours = filter(binary(), &["envsubst"], TEMPLATE, &env);
    assert_eq!(ours.0, 0, "{}", ours.2);
    assert_eq!(ours.1, gnu.1);
    // An allow-list and `-v` also work on such input.
    let ours = filter(binary(), &["envsubst", "$BAD"], TEMPLATE, &env);
    let gnu = filter("envsubst", &["$BAD"], TEMPLATE, &env);
    assert_eq!(ours.1, gnu.1);
    let ours = filter(binary(), &["envsubst", "-v"], TEMPLATE, &env);
    assert_eq!(ours.1, b"BAD\nPATH\n");
}

#[test]
fn envsubst_template_file_gets_the_raw_bytes_like_gnu_envsubst() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("app.conf.in"), TEMPLATE).expect("template");
    let mut sidecar = Sidecar::start_clean(
        dir,
        &args(&[
            "--envsubst",
            "app.conf.in:app.conf",
            "--no-unset",
            "--",
            "/bin/sh",
            "-c",
            "cp app.conf seen-by-workload",
        ]),
        &bad_env(),
    );
    assert_eq!(sidecar.wait(DEADLINE), 0, "{}", sidecar.stderr());
    let gnu = filter("envsubst", &[], TEMPLATE, &bad_env());
    assert_eq!(gnu.0, 0, "GNU envsubst: {}", gnu.2);
    let written = std::fs::read(sidecar.path("app.conf")).expect("rendered file");
    assert_eq!(written, gnu.1);
    assert_eq!(
        std::fs::read(sidecar.path("seen-by-workload")).expect("workload ran"),
        gnu.1
    );
}

#[test]
fn jinja_template_naming_a_non_utf8_variable_fails_the_start_with_its_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("app.conf.j2"),
        "ok = {{ env('PATH') }}\nbad = {{ env('BAD', 'fallback') }}\n",
    )
    .expect("template");
    let mut sidecar = Sidecar::start_clean(
        dir,
        &args(&[
            "--template",
            "app.conf.j2:app.conf",
            "--",
            "/bin/sh",
            "-c",
            "echo ran > workload-ran",
        ]),
        &bad_env(),
    );
    assert_eq!(sidecar.wait(DEADLINE), 1, "start-up failure");
    let stderr = sidecar.stderr();
    // Position of the `env(...)` call; the label is the path as given (relative to the cwd).
    let expected = "sluice-sidecar: first render failed: app.conf.j2:2:10: invalid operation: environment variable BAD is not valid UTF-8 (byte 0xE9 at offset 3): a jinja template renders text and cannot insert it (an envsubst template copies the bytes as they are)";
    assert!(stderr.contains(expected), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!sidecar.path("app.conf").exists(), "nothing is written");
    assert!(!sidecar.path("workload-ran").exists(), "no workload");
}

#[test]
fn jinja_template_not_naming_it_renders_and_the_workload_still_gets_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("app.conf.j2"),
        "path = {{ env('PATH') }}\nother = {{ env('UNSET', 'd') }}\n",
    )
    .expect("template");
    let mut sidecar = Sidecar::start_clean(
        dir,
        &args(&[
            "--template",
            "app.conf.j2:app.conf",
            "--",
            "/bin/sh",
            "-c",
            "printf %s \"$BAD\" > bad-seen",
        ]),
        &bad_env(),
    );
    assert_eq!(sidecar.wait(DEADLINE), 0, "{}", sidecar.stderr());
    assert_eq!(
        read(&sidecar.path("app.conf")),
        "path = /usr/bin:/bin\nother = d\n"
    );
    assert_eq!(
        std::fs::read(sidecar.path("bad-seen")).expect("ran"),
        LATIN1
    );
}

#[test]
fn jinja_template_file_that_is_not_utf8_is_a_config_error_with_its_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("t.j2"), b"line one\nsecond \xe9 line\n").expect("template");
    let mut sidecar = Sidecar::start_clean(
        dir,
        &args(&["--template", "t.j2:out", "--", "/bin/true"]),
        &bad_env(),
    );
    assert_eq!(sidecar.wait(DEADLINE), 2, "bad configuration");
    let expected = "sluice-sidecar: t.j2:2:8: not valid UTF-8 (byte 0xE9 at offset 16): a jinja template must be UTF-8 text";
    assert!(sidecar.stderr().contains(expected), "{}", sidecar.stderr());
}

fn kv_config(dir: &std::path::Path, template: &str) {
    std::fs::write(dir.join("app.conf.j2"), template).expect("template");
    std::fs::create_dir_all(dir.join("kv/app")).expect("kv dir");
    std::fs::write(
        dir.join("sidecar.toml"),
        "[[kv]]\nsource = \"file\"\npath = \"kv\"\npoll = \"50ms\"\n\n[[kv]]\nsource = \"env\"\n\n\
         [watch]\nmin = \"100ms\"\nmax = \"1s\"\nretry_initial = \"200ms\"\n\n\
         [[template]]\nsource = \"app.conf.j2\"\ndestination = \"app.conf\"\n",
    )
    .expect("config");
}

/// Replaces a file KV value atomically, so the poller never sees half of it.
fn put(dir: &std::path::Path, key: &str, value: &[u8]) {
    let staging = dir.join("kv/.staging");
    std::fs::write(&staging, value).expect("write");
    std::fs::rename(staging, dir.join("kv").join(key)).expect("rename");
}

#[test]
fn non_utf8_kv_value_fails_the_first_render_naming_key_and_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    kv_config(dir.path(), "a = {{ kv('app/a') }}\n");
    put(dir.path(), "app/a", LATIN1);
    let mut sidecar = Sidecar::start_clean(
        dir,
        &args(&["--config", "sidecar.toml", "--", "/bin/true"]),
        &bad_env(),
    );
    assert_eq!(sidecar.wait(DEADLINE), 1);
    let stderr = sidecar.stderr();
    let expected = "sluice-sidecar: first render failed: app.conf.j2:1:8: invalid operation: KV key \"app/a\" in file kv is not valid UTF-8 (byte 0xE9 at offset 3): a jinja template renders text and cannot insert it";
    assert!(stderr.contains(expected), "{stderr}");

    // An env KV layer holding a non-UTF-8 variable: the same error, not a wait for a key that
    // seems missing.
    let dir = tempfile::tempdir().expect("tempdir");
    kv_config(dir.path(), "a = {{ kv_or('BAD', 'default') }}\n");
    let mut sidecar = Sidecar::start_clean(
        dir,
        &args(&["--config", "sidecar.toml", "--", "/bin/true"]),
        &bad_env(),
    );
    assert_eq!(sidecar.wait(DEADLINE), 1);
    assert!(
        sidecar
            .stderr()
            .contains("KV key \"BAD\" in env is not valid UTF-8 (byte 0xE9 at offset 3)"),
        "{}",
        sidecar.stderr()
    );
}

#[test]
fn non_utf8_kv_value_on_reload_keeps_the_last_good_file_and_the_workload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_owned();
    kv_config(
        &root,
        "{% for item in kv_list('app/') %}{{ item.name }}={{ item.value }}\n{% endfor %}",
    );
    put(&root, "app/a", b"caf\xc3\xa9");
    let sidecar = Sidecar::start_clean(
        dir,
        &args(&[
            "--config",
            "sidecar.toml",
            "--",
            "/bin/sh",
            "-c",
            "echo started > started; while :; do sleep 0.05; done",
        ]),
        &[
            (os(b"PATH"), os(b"/usr/bin:/bin")),
            (os(b"SLUICE_LOG"), os(b"debug")),
        ],
    );
    wait_for("workload start", DEADLINE, || {
        root.join("started").exists().then_some(())
    });
    assert_eq!(read(&root.join("app.conf")), "a=café\n");
    put(&root, "app/b", LATIN1);
    sidecar.wait_log("re-render failed; keeping the last good file and the workload");
    let stderr = sidecar.stderr();
    // tracing prints the error field Debug-quoted, so match around the key's quotes.
    assert!(
        stderr.contains("app/b") && stderr.contains("in file kv is not valid UTF-8"),
        "{stderr}"
    );
    assert_eq!(
        read(&root.join("app.conf")),
        "a=café\n",
        "last good file kept"
    );
    // Fixing the value lets the retry render it.
    put(&root, "app/b", b"ok");
    wait_for("re-render after the fix", DEADLINE, || {
        (read(&root.join("app.conf")) == "a=café\nb=ok\n").then_some(())
    });
    assert!(sidecar.child.id() > 0 && common::alive(sidecar.child.id() as i32));
}

/// The workload's arguments are bytes too (a container's CMD may hold Latin-1): passed through
/// as they are, like the environment.
#[test]
fn non_utf8_workload_arguments_reach_the_workload_byte_for_byte() {
    let mut sidecar = Sidecar::start_clean(
        tempfile::tempdir().expect("tempdir"),
        &[
            OsStr::new("--"),
            OsStr::new("/usr/bin/printf"),
            OsStr::new("%s"),
            os(LATIN1),
        ],
        &bad_env(),
    );
    assert_eq!(sidecar.wait(DEADLINE), 0, "{}", sidecar.stderr());
    assert_eq!(sidecar.stdout_bytes(), LATIN1);
}

/// The sidecar's own options are text: one that is not UTF-8 is an error (exit 2), not a panic.
#[test]
fn non_utf8_option_is_reported_not_a_panic() {
    let mut sidecar = Sidecar::start_clean(
        tempfile::tempdir().expect("tempdir"),
        &[
            OsStr::new("--template"),
            os(LATIN1),
            OsStr::new("--"),
            OsStr::new("/bin/true"),
        ],
        &bad_env(),
    );
    assert_eq!(sidecar.wait(DEADLINE), 2, "{}", sidecar.stderr());
    assert!(
        sidecar.stderr().contains("invalid UTF-8"),
        "{}",
        sidecar.stderr()
    );
}
