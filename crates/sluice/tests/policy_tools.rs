//! The author tools of the `sluice` binary, for real: `sluice policy new` projects built with
//! cargo for `wasm32-wasip2` against this workspace's SDK, then `policy check` and `policy test`
//! on them; traps naming the guest's functions and rejected modules described in one line, in
//! the CLI, the log and `GET /api/policies`.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use sluice_policy_test_artifacts::{MISBEHAVING_AUTHZ, WRONG_WORLD};
use sluice_test_support::{SluiceProcess, eventually_blocking, free_port, http_get};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn sluice(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Where the generated projects live: under the cargo target directory, so reruns rebuild
/// incrementally (`target/tmp/policy-new/`, one shared target directory).
fn work_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("policy-new")
}

/// `sluice policy new` for `world`, built with cargo; returns the component's path.
fn new_and_build(world: &str) -> PathBuf {
    let name = format!("new-{world}");
    let project = work_dir().join(&name);
    // `policy new` refuses an existing directory: start from scratch, keep the build cache.
    let _ = std::fs::remove_dir_all(&project);
    std::fs::create_dir_all(work_dir()).unwrap();
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy-sdk");
    let out = Command::new(BIN)
        .args(["policy", "new"])
        .arg(&project)
        .args(["--world", world, "--sdk"])
        .arg(&sdk)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let created = String::from_utf8_lossy(&out.stdout);
    assert!(
        created.contains(&format!("(rust, world {world}): Cargo.toml, README.md")),
        "{created}"
    );
    assert!(
        created.contains("cargo build --release --target wasm32-wasip2"),
        "{created}"
    );
    // Resolve the project's dependencies to the versions this workspace already builds with
    // (cargo keeps the entries it needs), so the build does not depend on the network.
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.lock"),
        project.join("Cargo.lock"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO"))
        .current_dir(&project)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .arg("--target-dir")
        .arg(work_dir().join("target"))
        // The outer build's flags (e.g. `-C target-cpu=native`) must not reach a Wasm build.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the generated {world} project builds unchanged: {}",
        text(&out)
    );
    // The template's own unit tests pass natively too.
    let out = Command::new(env!("CARGO"))
        .current_dir(&project)
        .arg("test")
        .arg("--target-dir")
        .arg(work_dir().join("target"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the generated {world} project's tests pass: {}",
        text(&out)
    );
    let wasm = work_dir()
        .join("target/wasm32-wasip2/release")
        .join(format!("new_{world}.wasm"));
    assert!(wasm.is_file(), "{} was built", wasm.display());
    wasm
}

#[test]
fn policy_new_projects_build_and_pass_check_and_test_unchanged() {
    for (world, export) in [
        ("authz", "authorize"),
        ("health", "evaluate"),
        ("routing", "build-routes"),
        ("request", "on-request, on-response"),
    ] {
        let wasm = new_and_build(world);
        let wasm = wasm.to_str().unwrap();
        let out = sluice(&["policy", "check", wasm]);
        let report = text(&out);
        assert!(out.status.success(), "{report}");
        assert!(
            report.contains(&format!("world:     {world} (exports configure, {export})")),
            "{report}"
        );
        // The template logs its configuration: `check` shows the guest's log lines.
        assert!(
            report.contains("\nlog:       1 line\n  INFO  configured: "),
            "{report}"
        );

        let cases = work_dir().join(format!("new-{world}/cases.json"));
        let out = sluice(&["policy", "test", wasm, "--cases", cases.to_str().unwrap()]);
        let report = text(&out);
        assert!(out.status.success(), "{report}");
        assert_eq!(report.lines().count(), 1, "{report}");
        assert!(report.starts_with("ok: "), "{report}");
        assert!(
            report.trim_end().ends_with(&format!("world {world})")),
            "{report}"
        );
    }
}

#[test]
fn policy_test_exits_non_zero_with_a_diff_on_a_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.json");
    std::fs::write(
        &cases,
        r#"[{"name": "fine listener", "call": "authorize",
             "input": {"listener": "fine", "source_address": "127.0.0.1", "source_port": 1},
             "expect": "Allow"},
            {"name": "expects a denial", "call": "authorize",
             "input": {"listener": "fine", "source_address": "127.0.0.1", "source_port": 1},
             "expect": {"Deny": "not you"}}]"#,
    )
    .unwrap();
    let cases = cases.to_str().unwrap();
    let out = sluice(&["policy", "test", MISBEHAVING_AUTHZ, "--cases", cases]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "FAIL \"expects a denial\": expected (-) and got (+) differ:\n    - {{\n    -   \"Deny\": \"not you\"\n    - }}\n    + \"Allow\"\nFAILED: 1 of 2 cases failed ({MISBEHAVING_AUTHZ}, world authz)\n"
        )
    );

    let out = sluice(&["policy", "test", WRONG_WORLD, "--cases", cases]);
    assert_eq!(out.status.code(), Some(1));
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        error.starts_with(&format!(
            "sluice: {WRONG_WORLD}: exports of world `health` do not match the contract's types: type-checking export func `evaluate`"
        )),
        "{error}"
    );
}

#[test]
fn policy_test_runs_cases_on_a_built_in_policy() {
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.json");
    std::fs::write(
        &cases,
        r#"[{"name": "backup answers", "call": "evaluate",
             "input": {"instance": {"id": "a", "service": "s", "address": "127.0.0.1", "port": 1,
                                    "tags": [], "metadata": [], "health": "Unknown"},
                       "probe": {"kind": "Http", "status": 503, "headers": [],
                                 "body_prefix": [70, 65, 73, 76, 69, 68], "latency_us": 5}},
             "expect": {"Up": {"role": "Backup", "weight": null}}}]"#,
    )
    .unwrap();
    let out = sluice(&[
        "policy",
        "test",
        "builtin:mirror-primary",
        "--cases",
        cases.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok: 1 case passed (builtin:mirror-primary, world health)\n"
    );
}

#[test]
fn policy_new_refuses_what_it_cannot_do() {
    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("taken");
    std::fs::create_dir(&existing).unwrap();
    let cases: [(PathBuf, &[&str], String); 3] = [
        (
            existing.clone(),
            &["--world", "authz"],
            format!("{} already exists", existing.display()),
        ),
        (
            dir.path().join("9lives"),
            &["--world", "authz"],
            "is not a usable project name".into(),
        ),
        (
            dir.path().join("no-sdk"),
            &["--world", "authz", "--sdk", "/nonexistent"],
            "cannot find the Rust SDK".into(),
        ),
    ];
    for (project, args, expected) in cases {
        let out = Command::new(BIN)
            .args(["policy", "new"])
            .arg(&project)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let error = String::from_utf8_lossy(&out.stderr);
        assert!(error.starts_with("sluice: policy new: "), "{error}");
        assert!(error.contains(&expected), "{error}");
        assert_eq!(error.lines().count(), 1, "{error}");
    }
    assert!(!dir.path().join("no-sdk").exists(), "nothing half-written");
}

#[test]
fn policy_new_python_writes_the_contract_and_an_app() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("py-authz");
    let out = Command::new(BIN)
        .args(["policy", "new"])
        .arg(&project)
        .args(["--world", "authz", "--lang", "python"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let wit = std::fs::read_to_string(project.join("wit/policy.wit")).unwrap();
    let ours =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../wit/policy.wit"))
            .unwrap();
    assert_eq!(wit, ours, "the WIT is copied verbatim");
    let app = std::fs::read_to_string(project.join("app.py")).unwrap();
    assert!(app.contains("class WitWorld(wit_world.WitWorld):"), "{app}");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains(
        "componentize-py --wit-path wit --world authz componentize app -o py_authz.wasm"
    ));
    // Where the guide's `sluice_policy` helpers are, and how a build finds them.
    let sdk = printed
        .lines()
        .find_map(|line| line.strip_prefix("SDK:     "))
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no SDK line: {printed}"));
    assert!(
        Path::new(sdk).join("sluice_policy/__init__.py").is_file(),
        "{printed}"
    );
    assert!(printed.contains(&format!("-p . -p {sdk}")), "{printed}");
}

/// The componentize-py that scripts/setup.sh installs (or one on PATH); fails saying how to get
/// it rather than skipping.
fn componentize_py() -> PathBuf {
    let data = std::env::var_os("XDG_DATA_HOME").map_or_else(
        || Path::new(&std::env::var_os("HOME").unwrap()).join(".local/share"),
        PathBuf::from,
    );
    let venv = data.join("sluice/componentize-py/bin/componentize-py");
    if venv.is_file() {
        return venv;
    }
    sluice_test_support::require_tool("componentize-py")
}

/// The Python scaffolds build with componentize-py exactly as their README says, and pass
/// `policy check` and their own `cases.json` unchanged.
#[test]
fn policy_new_python_projects_build_and_pass_check_and_test() {
    let tool = componentize_py();
    let dir = tempfile::tempdir().unwrap();
    for world in ["authz", "health", "routing", "request"] {
        let project = dir.path().join(format!("py-{world}"));
        let out = sluice(&[
            "policy",
            "new",
            project.to_str().unwrap(),
            "--world",
            world,
            "--lang",
            "python",
        ]);
        assert!(out.status.success(), "{}", text(&out));
        let wasm = project.join(format!("py_{world}.wasm"));
        let built = Command::new(&tool)
            .current_dir(&project)
            .args([
                "--wit-path",
                "wit",
                "--world",
                world,
                "componentize",
                "app",
                "-o",
            ])
            .arg(&wasm)
            .output()
            .unwrap();
        assert!(built.status.success(), "{world}: {}", text(&built));
        let wasm = wasm.to_str().unwrap();
        let check = sluice(&["policy", "check", wasm]);
        assert!(check.status.success(), "{world}: {}", text(&check));
        assert!(
            text(&check).contains(&format!("world:     {world}")),
            "{}",
            text(&check)
        );
        let cases = project.join("cases.json");
        let test = sluice(&["policy", "test", wasm, "--cases", cases.to_str().unwrap()]);
        assert!(test.status.success(), "{world}: {}", text(&test));
        assert!(text(&test).starts_with("ok: "), "{}", text(&test));
    }
}

fn authz_config(admin: SocketAddr, listener: SocketAddr, file: &Path) -> String {
    format!(
        "[admin]\nbind = \"{admin}\"\n[access_log]\npath = \"off\"\n\
         [[policy]]\nname = \"shaky\"\nworld = \"authz\"\nfile = \"{}\"\ntimeout = \"200ms\"\n\
         [[service]]\nname = \"db\"\ninstances = [\"127.0.0.1:9\"]\n\
         [[listener]]\nname = \"panic\"\nbind = \"{listener}\"\nprotocol = \"tcp\"\nservice = \"db\"\n\
         [listener.authz]\npolicy = \"shaky\"\n",
        file.display()
    )
}

fn policy_status(admin: SocketAddr) -> serde_json::Value {
    let (status, body) = http_get(admin, "/api/policies").unwrap();
    assert_eq!(status, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    list[0].clone()
}

#[test]
fn a_trap_names_the_guest_functions_in_the_log_and_the_admin_api() {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let listener: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = authz_config(admin, listener, Path::new(MISBEHAVING_AUTHZ));
    let sluice = SluiceProcess::start(Path::new(BIN), &config, admin);
    // The guest panics for connections on the listener named `panic`.
    drop(TcpStream::connect(listener).unwrap());
    eventually_blocking(
        "the trap is recorded",
        Duration::from_secs(5),
        || match policy_status(admin)["last_error"].as_str() {
            Some(error) => {
                assert!(!error.contains('\n'), "{error}");
                let wanted = "sluice_policy_test_guests::misbehave_on <- authorize";
                if error.contains(wanted) {
                    Ok(())
                } else {
                    Err(format!("last_error lacks {wanted:?}: {error}"))
                }
            }
            None => Err("no last_error yet".into()),
        },
    );
    let stderr = sluice.stderr();
    let line = stderr
        .lines()
        .find(|line| line.contains("policy call failed"))
        .unwrap_or_else(|| panic!("the failure is logged: {stderr}"));
    assert!(
        line.contains("asked to panic") && line.contains("sluice_policy_test_guests::misbehave_on"),
        "one log line with the panic message and the backtrace: {line}"
    );
}

#[test]
fn a_rejected_module_is_one_precise_line_in_check_the_log_and_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, [0xbd, 0x89, 0x51, 0x36, 0, 1, 2, 3]).unwrap();
    let not_wasm = format!(
        "{}: not a WebAssembly component: not WebAssembly: the file (8 bytes) starts with bd 89 51 36, not the magic number \\0asm (00 61 73 6d)",
        garbage.display()
    );
    let out = sluice(&["policy", "check", garbage.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("sluice: {not_wasm}\n")
    );

    // Served from a file that is then replaced: by garbage, then by a module of another world.
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let listener: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let served = dir.path().join("policy.wasm");
    std::fs::copy(MISBEHAVING_AUTHZ, &served).unwrap();
    let sluice = SluiceProcess::start(
        Path::new(BIN),
        &authz_config(admin, listener, &served),
        admin,
    );
    let wrong_world = format!(
        "{}: does not implement world `authz`: missing export `authorize`",
        served.display()
    );
    for (replacement, expected) in [
        (
            garbage.as_path(),
            not_wasm.replace(&*garbage.to_string_lossy(), &served.to_string_lossy()),
        ),
        (Path::new(WRONG_WORLD), wrong_world),
    ] {
        let aside = dir.path().join("next.wasm");
        std::fs::copy(replacement, &aside).unwrap();
        std::fs::rename(&aside, &served).unwrap();
        eventually_blocking("the reload is rejected", Duration::from_secs(5), || {
            let status = policy_status(admin);
            let error = status["last_load_error"].as_str().unwrap_or_default();
            if error.starts_with(&expected) {
                assert!(!error.contains('\n'), "{error}");
                assert_eq!(status["state"], "active", "the previous version serves");
                Ok(())
            } else {
                Err(format!("last_load_error is {error:?}, not {expected:?}…"))
            }
        });
        let stderr = sluice.stderr();
        assert!(
            stderr
                .lines()
                .any(|line| line.contains("policy load rejected") && line.contains(&expected)),
            "one log line names the problem: {stderr}"
        );
    }
}

/// A fresh folder for a compile cache under the target directory.
fn empty_cache_folder(name: &str) -> PathBuf {
    let folder = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&folder);
    folder
}

fn files_under(folder: &Path) -> usize {
    std::fs::read_dir(folder).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| {
                if e.path().is_dir() {
                    files_under(&e.path())
                } else {
                    1
                }
            })
            .sum()
    })
}

#[test]
fn a_restarted_proxy_loads_its_policies_from_the_compile_cache() {
    let cache = empty_cache_folder("compile-cache-run");
    let loaded_line = |sluice: &SluiceProcess| {
        let mut found = String::new();
        eventually_blocking("the policy is loaded", Duration::from_secs(30), || {
            let stderr = sluice.stderr();
            let line = stderr.lines().find(|line| line.contains("policy loaded"));
            found = line.ok_or("no `policy loaded` line yet")?.to_owned();
            Ok(())
        });
        found
    };
    for (start, from_cache) in [(1, false), (2, true)] {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let listener: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = format!(
            "[runtime]\npolicy_cache = \"{}\"\n{}",
            cache.display(),
            authz_config(admin, listener, Path::new(MISBEHAVING_AUTHZ))
        );
        let sluice = SluiceProcess::start(Path::new(BIN), &config, admin);
        let line = loaded_line(&sluice);
        assert!(
            line.contains(&format!("from_compile_cache={from_cache}")),
            "start {start}: {line}"
        );
        assert!(
            files_under(&cache) > 0,
            "start {start}: nothing in {cache:?}"
        );
    }
}

#[test]
fn policy_check_reads_machine_code_from_the_compile_cache_the_second_time() {
    let cache_home = empty_cache_folder("compile-cache-check");
    let check = || {
        let out = Command::new(BIN)
            .args(["policy", "check", MISBEHAVING_AUTHZ])
            .env("XDG_CACHE_HOME", &cache_home)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    };
    let first = check();
    assert!(!first.contains("compile cache"), "{first}");
    assert!(files_under(&cache_home.join("sluice/policies")) > 0);
    let second = check();
    assert!(
        second.contains("(machine code from the compile cache)"),
        "{second}"
    );
}
