//! Embeds the shipped `urlprefix` routing policy (`wasm-policies/urlprefix`) in the binary, so
//! discovery routes Fabio-style tags with no policy file on disk.
//!
//! Compiled here to `wasm32-wasip2` with a nested cargo, as `crates/policy-test-artifacts` does
//! for the tests; not a dependency on that crate because it also builds the misbehaving test
//! guests and hands out paths into a build directory, which a shipped binary must not need. The
//! nested cargo uses its own target directory under `OUT_DIR`: the outer build's directory is
//! locked by the outer cargo while this script runs.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.join("../..");
    for input in [
        "wit",
        "crates/policy-sdk",
        "wasm-policies/urlprefix",
        "Cargo.lock",
    ] {
        println!(
            "cargo::rerun-if-changed={}",
            workspace.join(input).display()
        );
    }
    let rustc = env("RUSTC");
    require_target(&rustc);
    let out_dir = PathBuf::from(env("OUT_DIR"));
    let target_dir = out_dir.join("wasm-target");
    let mut command = Command::new(env("CARGO"));
    command
        .current_dir(&workspace)
        .args([
            "build",
            "--release",
            "--target",
            TARGET,
            "--lib",
            "-p",
            "urlprefix",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        // Host flags (`-C target-cpu=native`) and clippy's wrapper must not reach this build;
        // the policy is linted as a workspace member already.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CLIPPY_ARGS")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false");
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the urlprefix policy: {e}"));
    assert!(
        status.success(),
        "building the urlprefix policy failed: {command:?} exited with {status}"
    );
    let built = target_dir.join(TARGET).join("release/urlprefix.wasm");
    std::fs::copy(&built, out_dir.join("urlprefix.wasm"))
        .unwrap_or_else(|e| panic!("cannot copy {}: {e}", built.display()));
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
         (or `rustup target add {TARGET}`) — the embedded urlprefix policy compiles to it"
    );
}
