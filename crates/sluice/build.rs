//! Embeds every shipped policy (`wasm-policies/*`, listed in
//! `crates/config/src/builtin_policies.rs`) in the binary, so `file = "builtin:NAME"` and the
//! discovery's routing policy need no policy file and no Wasm toolchain on the machine that
//! runs `sluice`.
//!
//! All of them are compiled to `wasm32-wasip2` by ONE nested cargo (shared dependencies are
//! built once), as `crates/policy-test-artifacts` does for the tests; not a dependency on that
//! crate because it also builds the misbehaving test guests and hands out paths into a build
//! directory, which a shipped binary must not need. The nested cargo uses its own target
//! directory under `OUT_DIR`: the outer build's directory is locked by the outer cargo while
//! this script runs. The script writes `builtin_policies.rs` into `OUT_DIR`: the table of
//! names and `include_bytes!` that `src/builtin.rs` includes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

// `BUILTIN_POLICIES`: the names, each a folder under `wasm-policies/` and its cargo package.
// Shared with the configuration loader, which accepts exactly these names.
include!("../config/src/builtin_policies.rs");

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.join("../..");
    let policy_dirs = BUILTIN_POLICIES
        .iter()
        .map(|n| format!("wasm-policies/{n}"));
    let inputs = ["wit", "crates/policy-sdk", "Cargo.lock"].map(String::from);
    for input in inputs
        .into_iter()
        .chain(policy_dirs)
        .chain(["crates/config/src/builtin_policies.rs".to_owned()])
    {
        println!(
            "cargo::rerun-if-changed={}",
            workspace.join(input).display()
        );
    }
    let rustc = env("RUSTC");
    require_target(&rustc);
    let out_dir = PathBuf::from(env("OUT_DIR"));
    let target_dir = out_dir.join("wasm-target");
    build_policies(&workspace, &target_dir);
    let built = target_dir.join(TARGET).join("release");
    let mut table = String::from("&[\n");
    for name in BUILTIN_POLICIES {
        // Cargo names the artifact after the library: the package name with `_` for `-`.
        let file = format!("{}.wasm", name.replace('-', "_"));
        let embedded = out_dir.join(&file);
        std::fs::copy(built.join(&file), &embedded)
            .unwrap_or_else(|e| panic!("cannot copy {}: {e}", built.join(&file).display()));
        let _ = writeln!(
            table,
            "    ({name:?}, include_bytes!({:?}) as &[u8]),",
            embedded.display().to_string()
        );
    }
    table.push(']');
    std::fs::write(out_dir.join("builtin_policies.rs"), table)
        .unwrap_or_else(|e| panic!("cannot write builtin_policies.rs: {e}"));
}

/// `cargo build --release --target wasm32-wasip2 --lib -p A -p B …` for every built-in policy.
fn build_policies(workspace: &Path, target_dir: &Path) {
    let mut command = Command::new(env("CARGO"));
    command
        .current_dir(workspace)
        .args(["build", "--release", "--target", TARGET, "--lib"])
        .args(BUILTIN_POLICIES.iter().flat_map(|name| ["-p", name]))
        .arg("--target-dir")
        .arg(target_dir)
        // Host flags (`-C target-cpu=native`) and clippy's wrapper must not reach this build;
        // the policies are linted as workspace members already.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CLIPPY_ARGS")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        // Strip DWARF only: the `name` section stays, so traps name the policy's functions.
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo");
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the built-in policies: {e}"));
    assert!(
        status.success(),
        "building the built-in policies failed: {command:?} exited with {status}"
    );
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
         (or `rustup target add {TARGET}`) — the built-in policies compile to it"
    );
}
