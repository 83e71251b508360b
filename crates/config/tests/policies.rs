//! `[[policy]] file`: paths relative to the config file, `builtin:NAME` kept as a name and
//! checked against the policies the binary carries.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::Path;

use sluice_config::{BUILTIN_POLICIES, PolicySource, parse_str};

fn policy_config(file: &str) -> String {
    format!(
        r#"[[policy]]
name = "p"
file = "{file}"
world = "routing"
"#
    )
}

#[test]
fn a_builtin_name_stays_a_name_and_a_path_follows_the_config_file() {
    let cfg = parse_str("/etc/sluice/s.toml", &policy_config("builtin:urlprefix")).unwrap();
    assert_eq!(
        cfg.policies[0].file,
        PolicySource::Builtin("urlprefix".into())
    );
    assert_eq!(cfg.policies[0].file.to_string(), "builtin:urlprefix");
    assert_eq!(cfg.policies[0].file.path(), None);

    let cfg = parse_str("/etc/sluice/s.toml", &policy_config("p/x.wasm")).unwrap();
    let expected = Path::new("/etc/sluice/p/x.wasm");
    assert_eq!(cfg.policies[0].file, PolicySource::File(expected.into()));
    assert_eq!(cfg.policies[0].file.path(), Some(expected));
}

#[test]
fn every_shipped_policy_is_accepted_as_a_builtin() {
    assert!(BUILTIN_POLICIES.contains(&"mirror-primary"));
    assert!(BUILTIN_POLICIES.contains(&"ecp-authz"));
    for name in BUILTIN_POLICIES {
        let cfg = parse_str("s.toml", &policy_config(&format!("builtin:{name}"))).unwrap();
        assert_eq!(cfg.policies[0].file, PolicySource::Builtin((*name).into()));
    }
}

#[test]
fn an_unknown_builtin_is_an_error_at_its_value_listing_the_known_names() {
    for (file, hint_start) in [
        (
            "builtin:mirror-primray",
            "did you mean \"builtin:mirror-primary\"?",
        ),
        ("builtin:nope", "built-in policies:"),
        ("builtin:", "built-in policies:"),
    ] {
        let errs = parse_str("s.toml", &policy_config(file)).unwrap_err();
        assert_eq!(errs.0.len(), 1, "{errs:?}");
        let d = &errs.0[0];
        assert_eq!((d.line, d.col), (3, 8), "{d}");
        let name = file.trim_start_matches("builtin:");
        assert_eq!(d.message, format!("unknown built-in policy `{name}`"));
        let hint = d.hint.as_deref().unwrap();
        assert!(hint.starts_with(hint_start), "{hint}");
        let known = format!("built-in policies: {}", BUILTIN_POLICIES.join(", "));
        assert!(hint.ends_with(&known), "{hint}");
    }
}
