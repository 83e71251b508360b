//! `sluice-sidecar envsubst` and `--envsubst` templates, against documented expectations and
//! against GNU envsubst (gettext-base) for the forms both support.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{DEADLINE, Sidecar, binary, read};

fn run(program: &str, args: &[&str], input: &str, env: &[(&str, &str)]) -> (i32, String, String) {
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
        .write_all(input.as_bytes())
        .expect("write stdin");
    let output = child.wait_with_output().expect("wait");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

const ENV: &[(&str, &str)] = &[
    ("CLIENT_SYSTEMS", "app_1;app_2;app_3"),
    ("CA_ROOT", "/certificates/CA_Server.cer"),
    ("EMPTY", ""),
];

#[test]
fn plain_forms_match_gnu_envsubst() {
    // Seed 000's data-server.json fragment plus the corner cases GNU handles.
    let input = "{\n  \"ClientSystems\": \"${CLIENT_SYSTEMS}\",\n  \"CAFile\": \"$CA_ROOT\",\n  \"none\": \"$UNSET${UNSET}\",\n  \"empty\": \"$EMPTY\",\n  \"price\": \"5$\", \"odd\": \"$1 $- ${\"\n}\n";
    // Identical except where we differ on purpose: a bare "${" (GNU copies it; we reject it
    // with its position, since it is almost always a typo in a template).
    let ours = run(binary(), &["envsubst"], input, ENV);
    assert_eq!(ours.0, 1);
    assert!(
        ours.2.starts_with("<stdin>:6:34: expected a variable name"),
        "{}",
        ours.2
    );
    let gnu = run("envsubst", &[], input, ENV);
    assert_eq!(gnu.0, 0);
    assert!(gnu.1.contains("${"));
    let input = input.replace(" ${\"", "\"");
    let ours = run(binary(), &["envsubst"], &input, ENV);
    let gnu = run("envsubst", &[], &input, ENV);
    assert_eq!(ours.0, 0, "{}", ours.2);
    assert!(
        ours.1.contains("\"ClientSystems\": \"app_1;app_2;app_3\""),
        "{}",
        ours.1
    );
    assert_eq!(ours.1, gnu.1);
}

#[test]
fn shell_format_allow_list_matches_gnu_envsubst() {
    let input = "$CLIENT_SYSTEMS ${CA_ROOT} $EMPTY ${UNSET}\n";
    for format in ["$CA_ROOT", "${CLIENT_SYSTEMS} $EMPTY", "nothing"] {
        let ours = run(binary(), &["envsubst", format], input, ENV);
        let gnu = run("envsubst", &[format], input, ENV);
        assert_eq!(ours.1, gnu.1, "SHELL-FORMAT {format:?}");
    }
    let ours = run(binary(), &["envsubst", "-v", "$A ${B} C"], "", ENV);
    let gnu = run("envsubst", &["-v", "$A ${B} C"], "", ENV);
    assert_eq!(ours.1, gnu.1);
}

#[test]
fn extended_forms_follow_the_shell() {
    let input = "${UNSET:-d1} ${EMPTY:-d2} ${EMPTY-d3} ${NEW:=made} $NEW ${CA_ROOT:+alt} ${EMPTY+set} $$literal\n";
    let (code, out, err) = run(binary(), &["envsubst"], input, ENV);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "d1 d2  made made alt set $literal\n");
    // The same line through the shell itself gives the same answer.
    let shell = Command::new("/bin/sh")
        .arg("-c")
        .arg("printf '%s\\n' \"${UNSET:-d1} ${EMPTY:-d2} ${EMPTY-d3} ${NEW:=made} $NEW ${CA_ROOT:+alt} ${EMPTY+set} \\$literal\"")
        .env_clear()
        .envs(ENV.iter().copied())
        .output()
        .expect("sh");
    assert_eq!(String::from_utf8_lossy(&shell.stdout), out);
}

#[test]
fn no_unset_lists_every_offender_with_position() {
    let input = "a=$UNSET_A\nb=${EMPTY}\nc=${UNSET_B}\nd=${REQ:?must be set}\n";
    let (code, out, err) = run(
        binary(),
        &["envsubst", "--no-unset", "--no-empty"],
        input,
        ENV,
    );
    assert_eq!(code, 1);
    assert!(out.is_empty(), "nothing is written on failure: {out}");
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        [
            "<stdin>:1:3: UNSET_A is not set",
            "<stdin>:2:3: EMPTY is set but empty",
            "<stdin>:3:3: UNSET_B is not set",
            "<stdin>:4:3: REQ: must be set"
        ]
    );
}

#[test]
fn envsubst_template_failure_stops_before_the_workload() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("data-server.json.in"),
        "{\n  \"ClientSystems\": \"${CLIENT_SYSTEMS}\",\n  \"CAFile\": \"${CA_ROOT}\",\n  \"Key\": \"${CA_PRIVATE_KEY}\"\n}\n",
    )
    .expect("write template");
    let mut sidecar = Sidecar::start_in(
        dir,
        &[
            "--envsubst",
            "data-server.json.in:data-server.json",
            "--no-unset",
            "--",
            "/bin/sh",
            "-c",
            "echo ran > workload-ran",
        ],
        &[("CLIENT_SYSTEMS", "a;b")],
    );
    assert_eq!(sidecar.wait(DEADLINE), 1);
    let stderr = sidecar.stderr();
    assert!(
        stderr.contains("data-server.json.in:3:14: CA_ROOT is not set"),
        "{stderr}"
    );
    assert!(
        stderr.contains("data-server.json.in:4:11: CA_PRIVATE_KEY is not set"),
        "{stderr}"
    );
    assert!(
        !sidecar.path("workload-ran").exists(),
        "the workload must not start"
    );
    assert!(!sidecar.path("data-server.json").exists());
}

#[test]
fn envsubst_template_renders_then_launches() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("app-server.json.in"),
        "{\"Address\": \"${DATASERVER_IP}\", \"Port\": \"${DATASERVER_PORT:-1972}\"}\n",
    )
    .expect("write template");
    let mut sidecar = Sidecar::start_in(
        dir,
        &[
            "--envsubst",
            "app-server.json.in:app-server.json",
            "--",
            "/bin/sh",
            "-c",
            "cat app-server.json > seen-by-workload",
        ],
        &[("DATASERVER_IP", "data-server")],
    );
    assert_eq!(sidecar.wait(DEADLINE), 0, "{}", sidecar.stderr());
    assert_eq!(
        read(&sidecar.path("seen-by-workload")),
        "{\"Address\": \"data-server\", \"Port\": \"1972\"}\n"
    );
}
