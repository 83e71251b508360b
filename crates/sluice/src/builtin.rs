//! The shipped policies compiled into the binary (by `build.rs`), loadable as
//! `file = "builtin:NAME"` and by `sluice policy check builtin:NAME`. The names are
//! [`sluice_config::BUILTIN_POLICIES`], which the configuration loader checks against.

use std::sync::{Arc, OnceLock};

use sluice_policy_host::BuiltinModules;

/// `(name, component)` of every built-in policy, in name order.
const EMBEDDED: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/builtin_policies.rs"));

/// The embedded policies as the policy host takes them (built once, shared).
pub(crate) fn modules() -> Arc<BuiltinModules> {
    static MODULES: OnceLock<Arc<BuiltinModules>> = OnceLock::new();
    let modules = MODULES.get_or_init(|| {
        let all = EMBEDDED
            .iter()
            .fold(BuiltinModules::new(), |all, (name, bytes)| {
                all.with(name, *bytes)
            });
        Arc::new(all)
    });
    Arc::clone(modules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_the_config_accepts_is_embedded_as_a_component() {
        let embedded: Vec<&str> = EMBEDDED.iter().map(|(name, _)| *name).collect();
        assert_eq!(embedded, sluice_config::BUILTIN_POLICIES);
        for (name, bytes) in EMBEDDED {
            // The component-model preamble: magic, then version 0x0d and layer 1.
            assert_eq!(
                bytes.get(..8),
                Some(&b"\0asm\x0d\0\x01\0"[..]),
                "builtin:{name}"
            );
        }
    }
}
