//! Compiles the shipped policies (`wasm-policies/*`) and the test-only guests (`guests/`) to
//! `wasm32-wasip2` components, so a plain `cargo test` tests the host against the real modules.
//!
//! The nested cargo uses its own target directory under `OUT_DIR`: sharing the outer build's
//! directory would wait forever on the lock the outer cargo holds while running this script.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

/// (constant name, package, file under `release/`).
const ARTIFACTS: &[(&str, &str, &str)] = &[
    ("MIRROR_PRIMARY", "mirror-primary", "mirror_primary.wasm"),
    ("URLPREFIX", "urlprefix", "urlprefix.wasm"),
    ("ECP_AUTHZ", "ecp-authz", "ecp_authz.wasm"),
    ("JWT", "jwt", "jwt.wasm"),
    (
        "MISBEHAVING_AUTHZ",
        "sluice-policy-test-guests",
        "examples/misbehaving_authz.wasm",
    ),
    (
        "MISBEHAVING_HEALTH",
        "sluice-policy-test-guests",
        "examples/misbehaving_health.wasm",
    ),
    (
        "MISBEHAVING_ROUTING",
        "sluice-policy-test-guests",
        "examples/misbehaving_routing.wasm",
    ),
    (
        "HEADER_GATE",
        "sluice-policy-test-guests",
        "examples/header_gate.wasm",
    ),
    (
        "NOOP_REQUEST",
        "sluice-policy-test-guests",
        "examples/noop_request.wasm",
    ),
    (
        "KEY_CHECK",
        "sluice-policy-test-guests",
        "examples/key_check.wasm",
    ),
    (
        "REQUEST_READER",
        "sluice-policy-test-guests",
        "examples/request_reader.wasm",
    ),
    (
        "REUSING_REQUEST",
        "sluice-policy-test-guests",
        "examples/reusing_request.wasm",
    ),
    (
        "WRONG_WORLD",
        "sluice-policy-test-guests",
        "examples/wrong_world.wasm",
    ),
];

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.join("../..");
    // The root manifest too: the policies' dependencies and their features are declared there.
    for input in [
        "wit",
        "crates/policy-sdk",
        "wasm-policies",
        "Cargo.lock",
        "Cargo.toml",
    ] {
        println!(
            "cargo::rerun-if-changed={}",
            workspace.join(input).display()
        );
    }
    println!(
        "cargo::rerun-if-changed={}",
        manifest_dir.join("guests").display()
    );

    let rustc = env("RUSTC");
    require_target(&rustc);

    let target_dir = PathBuf::from(env("OUT_DIR")).join("wasm-target");
    let mut packages: Vec<&str> = ARTIFACTS.iter().map(|(_, package, _)| *package).collect();
    packages.dedup();
    let mut command = Command::new(env("CARGO"));
    command
        .current_dir(&workspace)
        .args([
            "build",
            "--release",
            "--target",
            TARGET,
            "--lib",
            "--examples",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        // Flags meant for the host build (e.g. `-C target-cpu=native`) must not reach the
        // WebAssembly build.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        // Under `cargo clippy` the outer build runs rustc through clippy-driver; the policies
        // are linted as workspace members already, so build them plainly here.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CLIPPY_ARGS")
        // Debug info only makes the components bigger and slower to compile in tests.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        // Strip DWARF only: the `name` section stays, so traps name the guest's functions.
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo");
    for package in &packages {
        command.args(["-p", package]);
    }
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the Wasm policies: {e}"));
    assert!(
        status.success(),
        "building the Wasm policies failed: {command:?} exited with {status}"
    );

    let release = target_dir.join(TARGET).join("release");
    let mut out = String::new();
    for (name, package, file) in ARTIFACTS {
        let path = release.join(file);
        assert!(
            path.is_file(),
            "{package} did not produce {}",
            path.display()
        );
        let _ = writeln!(out, "/// `{file}`, built from package `{package}`.");
        let _ = writeln!(
            out,
            "pub const {name}: &str = {:?};",
            path.display().to_string()
        );
    }
    std::fs::write(PathBuf::from(env("OUT_DIR")).join("artifacts.rs"), out)
        .expect("OUT_DIR is writable");
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo sets {name} for build scripts"))
}

/// Fails with instructions when the toolchain cannot compile for `wasm32-wasip2`.
fn require_target(rustc: &str) {
    let output = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {rustc}: {e}"));
    let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let target_lib = Path::new(&sysroot).join("lib/rustlib").join(TARGET);
    assert!(
        target_lib.is_dir(),
        "the Rust target `{TARGET}` is not installed in {sysroot}: run `scripts/setup.sh` \
         (or `rustup target add {TARGET}`) — the policies and test guests compile to it"
    );
}
