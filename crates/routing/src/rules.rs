//! A route's own options (`redirect=`, `allow=`/`deny=`, `host=`, `proto=https`) in the file's
//! route model, checked with the file's rules.

use std::net::IpAddr;
use std::path::PathBuf;

use sluice_config::{Config, ServiceTlsConfig};
use sluice_policy_host::types;

/// A route's own rules, in the file's model (what `[[route]]` keys would give).
#[derive(Debug, Default)]
pub(crate) struct Rules {
    pub(crate) redirect: Option<sluice_config::RedirectConfig>,
    pub(crate) access: Option<sluice_config::AccessRules>,
    pub(crate) upstream_host: Option<sluice_config::UpstreamHost>,
}

/// Where the system's CA bundle usually is (Debian/Ubuntu, Fedora/RHEL, Alpine/macOS-style).
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The policy's `redirect=`, `allow=`/`deny=` and `host=` as the file's route model, and the
/// TLS of a `proto=https` route; why the route cannot be served, if it cannot. The policy's
/// values are checked again here with the file's rules: any routing policy may produce them.
pub(crate) fn route_rules(
    route: &types::Route,
    base: &Config,
) -> Result<(Rules, Option<ServiceTlsConfig>), String> {
    let mut rules = Rules::default();
    if let Some(redirect) = &route.redirect {
        if !sluice_config::RedirectConfig::valid_code(i64::from(redirect.code)) {
            return Err(format!(
                "redirect code {} is not one of 301, 302, 303, 307, 308",
                redirect.code
            ));
        }
        if let Some(problem) = sluice_config::RedirectConfig::url_problem(&redirect.url) {
            return Err(format!("redirect URL `{}`: {problem}", redirect.url));
        }
        rules.redirect = Some(sluice_config::RedirectConfig {
            code: redirect.code,
            url: redirect.url.clone(),
        });
    }
    if let Some(first) = route.access.first() {
        let action = match first.action {
            types::AccessAction::Allow => sluice_config::AccessAction::Allow,
            types::AccessAction::Deny => sluice_config::AccessAction::Deny,
        };
        // Serving the route with some of its rules dropped could open it to everyone.
        if route.access.iter().any(|r| r.action != first.action) {
            return Err("allow= and deny= cannot be combined on one route".into());
        }
        let networks = route
            .access
            .iter()
            .map(|r| {
                sluice_config::AccessRules::parse_network(&r.cidr)
                    .ok_or_else(|| format!("`{}` is not an address or CIDR", r.cidr))
            })
            .collect::<Result<Vec<_>, _>>()?;
        rules.access = Some(sluice_config::AccessRules { action, networks });
    }
    if let Some(host) = &route.upstream_host {
        rules.upstream_host = Some(
            sluice_config::UpstreamHost::parse(host)
                .ok_or_else(|| format!("host=`{host}` is not a host name (or `dst`)"))?,
        );
    }
    if route.protocol == types::Protocol::Tcp {
        if rules.redirect.is_some() || rules.upstream_host.is_some() {
            return Err("redirect= and host= have no meaning on a TCP route".into());
        }
        // A TCP listener has a source allow-list but no deny list; serving the route without
        // its rule would open it.
        if rules
            .access
            .as_ref()
            .is_some_and(|a| a.action == sluice_config::AccessAction::Deny)
        {
            return Err("deny= is not supported on TCP routes (use allow=)".into());
        }
    }
    let tls = match route.protocol {
        types::Protocol::Https => Some(https_settings(route, base)?),
        _ => None,
    };
    Ok((rules, tls))
}

/// `proto=https`: the `[service.tls]` of the file's `[[service]]` of that name when it has one
/// (its CA, client certificate, server name), else the system CA bundle; `tlsskipverify=true`
/// turns verification off. The certificate is checked against the instance's address: its
/// registered host name when every target registered the same one, else each instance's IP.
fn https_settings(route: &types::Route, base: &Config) -> Result<ServiceTlsConfig, String> {
    let mut tls = base
        .service(&route.service)
        .and_then(|s| s.tls.clone())
        .unwrap_or_default();
    if route.tls.skip_verify {
        tls.insecure_skip_verify = true;
    }
    if tls.ca.is_none() && !tls.insecure_skip_verify {
        tls.ca = SYSTEM_CA_BUNDLES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file());
        if tls.ca.is_none() {
            return Err(format!(
                "proto=https needs CA certificates: none of {} exists; give [[service]] name = \"{}\" a [service.tls] ca, or add tlsskipverify=true",
                SYSTEM_CA_BUNDLES.join(", "),
                route.service
            ));
        }
    }
    if tls.server_name.is_none() {
        let mut names = route.targets.iter().map(|t| t.address.as_str());
        if let Some(first) = names.next()
            && first.parse::<IpAddr>().is_err()
            && names.all(|n| n == first)
        {
            tls.server_name = Some(first.to_owned());
        }
    }
    Ok(tls)
}
