//! Sluice's configuration: the TOML file format, its defaults, and its validation.
//!
//! Contract:
//! - [`load_file`] / [`parse_str`] return a fully validated [`Config`] or *every* problem found,
//!   each as a [`Diagnostic`] with `file:line:col`, a message and (when we can tell) a hint.
//!   Nothing is bound, resolved against the network (except upstream host names) or started here.
//! - Unknown keys and sections are errors, never silently ignored.
//! - `[[policy]] file` is a [`PolicySource`]: a path (relative to the config file) or
//!   `builtin:NAME`, whose name must be one of [`BUILTIN_POLICIES`] — the one table of the
//!   policies the `sluice` binary embeds (its build script reads the same file).
//! - Every tunable has a default, defined once in [`defaults`] and documented in
//!   `docs/configuration.md`.
//! - The returned [`Config`] is plain data (no spans, no serde types) so the data plane can
//!   compare two configurations to decide what a reload changes.

mod builtin_policies;
mod construct;
pub mod defaults;
mod diag;
mod discovery;
mod load;
mod model;
mod overrides;
mod policy;
mod raw;
mod tls;

use std::path::Path;

pub use builtin_policies::BUILTIN_POLICIES;
pub use construct::{
    GrpcServiceProblem, HealthCheckProblem, PathProblem, check_grpc_service, check_path,
};
pub use diag::{Diagnostic, Diagnostics, Source};
pub use discovery::{
    DISCOVERY_ETCD_PREFIX, DISCOVERY_FALLBACK_POLL_INTERVAL, DISCOVERY_POLL_INTERVAL,
    DISCOVERY_REQUEST_TIMEOUT, DiscoveredRoutePolicy, DiscoveryConfig, DiscoverySource,
    ROUTING_DEBOUNCE, ROUTING_TCP_BIND, RoutingConfig, StaticInstance,
};
pub use model::*;
pub use overrides::{OverrideLineError, RouteKey, RouteOverride, parse_overrides};
pub use policy::{
    FailureMode, POLICY_MAX_MEMORY_BYTES, POLICY_TIMEOUT, PolicyConfig, PolicyLimits, PolicySource,
    PolicyWorld,
};
pub use tls::*;

/// Reads and validates a configuration file. A file that is not UTF-8 is one diagnostic at the
/// first byte that is not.
pub fn load_file(path: &Path) -> Result<Config, Diagnostics> {
    let bytes = std::fs::read(path).map_err(|e| Diagnostics::io(path, &e))?;
    parse_bytes(path, &bytes, load::Lookups::Real)
}

/// Validates configuration text; `path` is only used in diagnostics.
pub fn parse_str(path: impl AsRef<Path>, text: &str) -> Result<Config, Diagnostics> {
    load::parse(&Source::new(path.as_ref(), text), load::Lookups::Real)
}

fn parse_bytes(path: &Path, bytes: &[u8], lookups: load::Lookups) -> Result<Config, Diagnostics> {
    match std::str::from_utf8(bytes) {
        Ok(text) => load::parse(&Source::new(path, text), lookups),
        Err(e) => Err(Diagnostics::not_utf8(path, bytes, &e)),
    }
}

/// Entry points for the fuzz targets (`fuzz/fuzz_targets/config.rs`); not a stable API.
///
/// Public only because cargo-fuzz builds the targets as a separate crate. They run the very code
/// of [`load_file`] minus its I/O: a fuzzer must not wait on DNS for every upstream host name it
/// invents, nor open files it names.
#[doc(hidden)]
pub mod fuzzing {
    use std::path::Path;

    use crate::{Config, Diagnostics, load};

    /// [`crate::load_file`] on `bytes` as the file's content, offline: host names never resolve
    /// (each is the "cannot resolve" error) and TLS file paths are not opened (taken as
    /// readable).
    pub fn parse_bytes(path: &Path, bytes: &[u8]) -> Result<Config, Diagnostics> {
        crate::parse_bytes(path, bytes, load::Lookups::Offline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_utf8_is_one_diagnostic_at_the_bad_byte() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("latin1.toml");
        // "é" in Latin-1 (0xe9) on line 2, after the 11 characters of `name = "caf`: column 12.
        std::fs::write(&path, b"[admin]\nname = \"caf\xe9\"\n").expect("write");
        let diags = load_file(&path).expect_err("not UTF-8");
        assert_eq!(diags.0.len(), 1, "{diags}");
        let d = &diags.0[0];
        assert_eq!((d.line, d.col), (2, 12), "{d}");
        assert!(
            d.message.contains("not UTF-8") && d.message.contains("0xe9"),
            "{d}"
        );
        // A multi-byte character before the bad byte counts as one column.
        let diags = fuzzing::parse_bytes(Path::new("x.toml"), b"# \xc3\xa9\n\xc3\xa9\xff")
            .expect_err("not UTF-8");
        assert_eq!((diags.0[0].line, diags.0[0].col), (2, 2));
    }

    #[test]
    fn offline_parsing_resolves_no_name_and_opens_no_file() {
        let text = "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:8080\"\n\
                    [[service]]\nname = \"app\"\ninstances = [\"localhost:9000\"]\n\
                    [[route]]\npath = \"/\"\nservice = \"app\"\n";
        let diags =
            fuzzing::parse_bytes(Path::new("x.toml"), text.as_bytes()).expect_err("offline");
        assert!(
            diags.0[0]
                .message
                .contains("cannot resolve instance host `localhost`"),
            "{diags}"
        );
        let with_ip = text.replace("localhost", "127.0.0.1");
        let offline = fuzzing::parse_bytes(Path::new("x.toml"), with_ip.as_bytes());
        assert_eq!(offline, parse_str("x.toml", &with_ip));
    }
}
