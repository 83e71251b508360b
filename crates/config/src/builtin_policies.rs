// The table of policies built into `sluice`: one line per shipped policy. Each name is also
// the folder under `wasm-policies/` and the cargo package that `crates/sluice/build.rs`
// compiles and embeds (that build script `include!`s this file, so the names the configuration
// accepts and the modules the binary carries cannot drift apart). Plain `//` comments only:
// an inner doc comment would not survive the `include!`.

/// The policies built into `sluice`, loadable as `file = "builtin:NAME"`, in name order.
pub const BUILTIN_POLICIES: &[&str] = &["ecp-authz", "jwt", "mirror-primary", "urlprefix"];
