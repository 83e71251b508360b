//! The Python example policies (`examples/policies-python/*`), built on demand with their own
//! `build.sh` (componentize-py) and cached under the cargo target directory by a hash of every
//! source that goes into them: a repeated test or bench run reuses the component, an edit of the
//! app, the SDK, the WIT or the pinned toolchain rebuilds it.
//!
//! Built at run time, not by this crate's build script: componentize-py is needed only by the
//! tests that load Python policies, and a missing one must fail those tests with the install hint
//! rather than every build of the workspace.

use std::hash::{DefaultHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
const CACHE: &str = concat!(env!("OUT_DIR"), "/python-policies");

/// The component built from `examples/policies-python/<example>` (e.g. `authz`), building it
/// first if no cached build of the same sources exists. Panics with the build script's error
/// (for a missing componentize-py: "run scripts/setup.sh (or: pip install componentize-py==…)").
pub fn python_example(example: &str) -> PathBuf {
    let workspace = Path::new(WORKSPACE);
    let app_dir = workspace.join("examples/policies-python").join(example);
    assert!(
        app_dir.join("build.sh").is_file(),
        "no Python example {example:?} (looked for {}/build.sh)",
        app_dir.display()
    );
    let sources = [
        app_dir.clone(),
        workspace.join("sdk/python"),
        workspace.join("wit"),
    ];
    let out = Path::new(CACHE).join(format!("{example}-{:016x}.wasm", hash_tree(&sources)));
    if out.is_file() {
        return out;
    }
    build(&app_dir, &out);
    out
}

/// Runs the example's `build.sh` into a temporary name, then renames: tests running at once
/// never see a half-written component (the later rename simply wins).
fn build(app_dir: &Path, out: &Path) {
    std::fs::create_dir_all(CACHE).unwrap_or_else(|e| panic!("cannot create {CACHE}: {e}"));
    let partial = out.with_extension(format!("{}.partial", std::process::id()));
    let result = Command::new("bash")
        .arg(app_dir.join("build.sh"))
        .arg(&partial)
        .output()
        .unwrap_or_else(|e| panic!("cannot run bash: {e}"));
    assert!(
        result.status.success(),
        "building the Python policy {} failed ({}):\n{}{}",
        app_dir.display(),
        result.status,
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    std::fs::rename(&partial, out)
        .unwrap_or_else(|e| panic!("cannot move {} into place: {e}", partial.display()));
}

/// A hash of the relative paths and contents of every file under `roots` (in a stable order),
/// skipping built components and Python's byte-code caches, which are outputs, not sources.
fn hash_tree(roots: &[PathBuf]) -> u64 {
    let mut files = Vec::new();
    for root in roots {
        collect_files(root, &mut files);
    }
    files.sort();
    // DefaultHasher::new() is SipHash with fixed keys: stable from run to run (a new Rust
    // release may change it, which at worst rebuilds once).
    let mut hasher = DefaultHasher::new();
    for file in files {
        let bytes =
            std::fs::read(&file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        hasher.write(file.to_string_lossy().as_bytes());
        hasher.write(&bytes);
    }
    hasher.finish()
}

fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name == "__pycache__" || name.ends_with(".wasm") {
            continue;
        }
        if path.is_dir() {
            collect_files(&path, files);
        } else {
            files.push(path);
        }
    }
}
