//! Embeds the WIT contract (`wit/policy.wit` at the workspace root) into a macro, so that a
//! policy crate generates its world's bindings from the very same text the host was built with
//! — without knowing where the SDK's sources live.

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let wit_path = manifest_dir.join("../../wit/policy.wit");
    println!("cargo::rerun-if-changed={}", wit_path.display());
    let wit = std::fs::read_to_string(&wit_path)
        .unwrap_or_else(|e| panic!("cannot read the WIT contract {}: {e}", wit_path.display()));

    // Only the `request` world imports `http`: wit-bindgen refuses a remapping it does not use.
    let shared = "\"sluice:policy/types@0.3.0\": ::sluice_policy_sdk::types,\n\
         \"sluice:policy/host@0.3.0\": ::sluice_policy_sdk::__bindings::sluice::policy::host,";
    let http =
        "\"sluice:policy/http@0.3.0\": ::sluice_policy_sdk::__bindings::sluice::policy::http,";
    let generate = |world: &str, with: &str| {
        format!(
            "::sluice_policy_sdk::__wit_bindgen::generate!({{\n\
             inline: {wit:?},\n\
             world: {world},\n\
             runtime_path: \"::sluice_policy_sdk::__wit_bindgen::rt\",\n\
             with: {{\n{with}\n}},\n\
             }});"
        )
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "/// Generates the bindings of one policy world in the calling module (used by the \
         `export_*!` macros).\n\
         #[doc(hidden)]\n\
         #[macro_export]\n\
         macro_rules! __generate_world {{\n\
         (\"request\") => {{\n{}\n}};\n\
         ($world:literal) => {{\n{}\n}};\n\
         }}",
        generate("\"request\"", &format!("{shared}\n{http}")),
        generate("$world", shared),
    );
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    std::fs::write(out_dir.join("generate_world.rs"), out).expect("OUT_DIR is writable");
}
