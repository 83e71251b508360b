//! `urlprefix`: a routing policy that turns Fabio-style service tags into routes (seed 004).
//!
//! Contract:
//! - Every tag starting with the configured prefix (default `urlprefix-`) on an instance that is
//!   not `critical` declares a route to that instance: `urlprefix-[host]/path` (HTTP) or
//!   `urlprefix-:PORT proto=tcp` (TCP), followed by options `strip=`, `prepend=`,
//!   `proto=http|https|tcp`, `tlsskipverify=true|false`, `weight=`, `redirect=CODE,URL`,
//!   `allow=ip:CIDR,…` / `deny=ip:CIDR,…` and `host=`.
//! - Instances declaring the same route (host, path, port) become its targets. Weights follow
//!   Fabio: `weight=W` gives the declaring service a fixed share W of the route, split evenly
//!   among its instances; unweighted targets share what is left equally; fixed shares adding up
//!   to 1 or more are normalised and leave the others a zero share.
//! - A tag that cannot be parsed, uses an unknown option, or contradicts the options of the
//!   route another tag already defined yields a `route-error` naming the instance, the tag and
//!   the reason. It never blocks the other routes.

use std::collections::BTreeMap;

use serde::Deserialize;
use sluice_policy_sdk::cidr::Cidr;
use sluice_policy_sdk::tags::{self, Tag};
use sluice_policy_sdk::{
    AccessAction, AccessRule, HealthStatus, Instance, Protocol, Redirect, Route, RouteEntry,
    RouteError, RouteTarget, RoutingPolicy, TlsOptions,
};

/// `[[policy]] config` of this policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Tags starting with this declare routes.
    pub tag_prefix: String,
    /// Leave out instances whose catalog health is `critical` (as Fabio does).
    pub skip_critical: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tag_prefix: "urlprefix-".into(),
            skip_critical: true,
        }
    }
}

/// The configured policy.
#[derive(Debug, Clone)]
pub struct UrlPrefix {
    config: Config,
}

/// Options listed in error messages, in the order documented.
const SUPPORTED_OPTIONS: &str =
    "strip, prepend, proto, tlsskipverify, weight, redirect, allow, deny, host";

/// Where a route matches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RouteKey {
    host: Option<String>,
    path: String,
    listen_port: Option<u16>,
}

/// What one tag says about its route, besides where it matches.
#[derive(Debug, Clone, PartialEq)]
struct RouteOptions {
    protocol: Protocol,
    strip: Option<String>,
    prepend: Option<String>,
    tls_skip_verify: bool,
    upstream_host: Option<String>,
    redirect: Option<Redirect>,
    access: Vec<AccessRule>,
}

#[derive(Debug)]
struct ParsedTag {
    key: RouteKey,
    options: RouteOptions,
    weight: Option<f64>,
}

struct Member<'a> {
    instance: &'a Instance,
    weight: Option<f64>,
}

struct RouteBuilder<'a> {
    options: RouteOptions,
    defined_by: (&'a str, &'a str),
    service: &'a str,
    members: Vec<Member<'a>>,
}

impl RoutingPolicy for UrlPrefix {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config =
            serde_json::from_str(config).map_err(|e| format!("invalid urlprefix config: {e}"))?;
        if config.tag_prefix.is_empty() || config.tag_prefix.contains(char::is_whitespace) {
            return Err("tag_prefix must be non-empty and contain no spaces".into());
        }
        Ok(UrlPrefix { config })
    }

    fn build_routes(&self, catalog: &[Instance]) -> Result<Vec<RouteEntry>, String> {
        let mut routes: BTreeMap<RouteKey, RouteBuilder<'_>> = BTreeMap::new();
        let mut errors = Vec::new();
        for instance in catalog {
            if self.config.skip_critical && instance.health == HealthStatus::Critical {
                continue;
            }
            for tag in &instance.tags {
                let parsed = match tags::parse(tag, &self.config.tag_prefix) {
                    None => continue,
                    Some(Err(e)) => Err(e.to_string()),
                    Some(Ok(tag)) => parse_route_tag(&tag),
                };
                let result =
                    parsed.and_then(|parsed| add_member(&mut routes, instance, tag, parsed));
                if let Err(message) = result {
                    errors.push(RouteEntry::Error(RouteError {
                        instance_id: instance.id.clone(),
                        input: tag.clone(),
                        message,
                    }));
                }
            }
        }
        let mut entries: Vec<RouteEntry> = routes
            .into_iter()
            .map(|(key, builder)| RouteEntry::Route(finish(key, builder)))
            .collect();
        entries.extend(errors);
        Ok(entries)
    }
}

fn add_member<'a>(
    routes: &mut BTreeMap<RouteKey, RouteBuilder<'a>>,
    instance: &'a Instance,
    tag: &'a str,
    parsed: ParsedTag,
) -> Result<(), String> {
    let builder = routes.entry(parsed.key).or_insert_with(|| RouteBuilder {
        options: parsed.options.clone(),
        defined_by: (&instance.id, tag),
        service: &instance.service,
        members: Vec::new(),
    });
    if builder.options != parsed.options {
        let (id, defining_tag) = builder.defined_by;
        return Err(format!(
            "options contradict the route defined by instance `{id}` with tag `{defining_tag}`"
        ));
    }
    if builder.members.iter().any(|m| m.instance.id == instance.id) {
        return Ok(()); // the same instance tagged twice: one target
    }
    if let Some(weight) = parsed.weight
        && let Some(other) = builder.members.iter().find(|m| {
            m.instance.service == instance.service && m.weight.is_some_and(|w| w != weight)
        })
    {
        return Err(format!(
            "weight={weight} contradicts weight={} declared by instance `{}` of the same service",
            other.weight.unwrap_or_default(),
            other.instance.id
        ));
    }
    builder.members.push(Member {
        instance,
        weight: parsed.weight,
    });
    Ok(())
}

/// Turns the collected members into targets with Fabio's weighting.
fn finish(key: RouteKey, builder: RouteBuilder<'_>) -> Route {
    // Fixed shares per service, and how many of that service's members declared it.
    let mut fixed: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
    let mut free = 0usize;
    for member in &builder.members {
        match member.weight {
            Some(weight) => {
                fixed
                    .entry(member.instance.service.as_str())
                    .or_insert((weight, 0))
                    .1 += 1
            }
            None => free += 1,
        }
    }
    let fixed_sum: f64 = fixed.values().map(|(weight, _)| weight).sum();
    // Fixed shares fill the route when nothing else is there or when they claim all of it.
    let (fixed_scale, free_share) = if free == 0 || fixed_sum >= 1.0 {
        (1.0 / fixed_sum, 0.0)
    } else {
        (1.0, (1.0 - fixed_sum) / free as f64)
    };
    let targets = builder
        .members
        .iter()
        .map(|member| {
            let weight = match member.weight {
                Some(_) => {
                    let (share, count) = fixed[member.instance.service.as_str()];
                    share * fixed_scale / count as f64
                }
                None => free_share,
            };
            RouteTarget {
                instance_id: member.instance.id.clone(),
                service: member.instance.service.clone(),
                address: member.instance.address.clone(),
                port: member.instance.port,
                weight,
            }
        })
        .collect();
    let options = builder.options;
    Route {
        host: key.host,
        path_prefix: key.path,
        listen_port: key.listen_port,
        service: builder.service.to_owned(),
        targets,
        strip: options.strip,
        prepend: options.prepend,
        protocol: options.protocol,
        tls: TlsOptions {
            skip_verify: options.tls_skip_verify,
        },
        upstream_host: options.upstream_host,
        redirect: options.redirect,
        access: options.access,
    }
}

fn parse_route_tag(tag: &Tag<'_>) -> Result<ParsedTag, String> {
    let mut options = RouteOptions {
        protocol: Protocol::Http,
        strip: None,
        prepend: None,
        tls_skip_verify: false,
        upstream_host: None,
        redirect: None,
        access: Vec::new(),
    };
    let mut weight = None;
    let mut proto_given = false;
    for &(key, value) in &tag.options {
        match key {
            "strip" => options.strip = Some(path_option("strip", value)?),
            "prepend" => options.prepend = Some(path_option("prepend", value)?),
            "proto" => {
                proto_given = true;
                options.protocol = match value {
                    "http" => Protocol::Http,
                    "https" => Protocol::Https,
                    "tcp" => Protocol::Tcp,
                    other => return Err(format!("proto=`{other}` is not one of http, https, tcp")),
                }
            }
            "tlsskipverify" => {
                options.tls_skip_verify = match value {
                    "true" | "" => true,
                    "false" => false,
                    other => return Err(format!("tlsskipverify=`{other}` is not true or false")),
                }
            }
            "weight" => weight = Some(weight_option(value)?),
            "redirect" => options.redirect = Some(redirect_option(value)?),
            "allow" => options
                .access
                .extend(access_option(AccessAction::Allow, value)?),
            "deny" => options
                .access
                .extend(access_option(AccessAction::Deny, value)?),
            "host" => {
                if value.is_empty() {
                    return Err("host= needs a name (or `dst`)".into());
                }
                options.upstream_host = Some(value.to_owned());
            }
            other => {
                return Err(format!(
                    "unknown option `{other}` (supported: {SUPPORTED_OPTIONS})"
                ));
            }
        }
    }
    let actions: Vec<AccessAction> = options.access.iter().map(|rule| rule.action).collect();
    if actions.contains(&AccessAction::Allow) && actions.contains(&AccessAction::Deny) {
        return Err("allow= and deny= cannot be combined on one route".into());
    }

    let key = if let Some(port) = tag.head.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| format!("`{}` is not a valid `:PORT`", tag.head))?;
        if !proto_given || options.protocol != Protocol::Tcp {
            return Err(format!("`:{port}` routes need proto=tcp"));
        }
        RouteKey {
            host: None,
            path: String::new(),
            listen_port: Some(port),
        }
    } else {
        let Some(slash) = tag.head.find('/') else {
            return Err(format!(
                "`{}` is neither `[host]/path` nor `:PORT`",
                tag.head
            ));
        };
        if options.protocol == Protocol::Tcp {
            return Err("proto=tcp needs a `:PORT` route, not a path".into());
        }
        let host = &tag.head[..slash];
        RouteKey {
            host: (!host.is_empty()).then(|| host.to_ascii_lowercase()),
            path: tag.head[slash..].to_owned(),
            listen_port: None,
        }
    };
    Ok(ParsedTag {
        key,
        options,
        weight,
    })
}

fn path_option(name: &str, value: &str) -> Result<String, String> {
    if value.starts_with('/') {
        Ok(value.to_owned())
    } else {
        Err(format!("{name}=`{value}` must start with `/`"))
    }
}

fn weight_option(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(weight) if weight.is_finite() && weight > 0.0 && weight <= 1.0 => Ok(weight),
        _ => Err(format!("weight=`{value}` is not a number in (0, 1]")),
    }
}

fn redirect_option(value: &str) -> Result<Redirect, String> {
    let (code, url) = value
        .split_once(',')
        .ok_or_else(|| format!("redirect=`{value}` is not `CODE,URL`"))?;
    let code: u16 = code
        .parse()
        .map_err(|_| format!("redirect code `{code}` is not a number"))?;
    if ![301, 302, 303, 307, 308].contains(&code) {
        return Err(format!(
            "redirect code {code} is not one of 301, 302, 303, 307, 308"
        ));
    }
    if url.is_empty() {
        return Err("redirect= needs a URL after the code".into());
    }
    Ok(Redirect {
        code,
        url: url.to_owned(),
    })
}

fn access_option(action: AccessAction, value: &str) -> Result<Vec<AccessRule>, String> {
    value
        .split(',')
        .map(|item| {
            let cidr = item
                .strip_prefix("ip:")
                .ok_or_else(|| format!("access rule `{item}` must be `ip:CIDR`"))?;
            let range = Cidr::parse(cidr).map_err(|e| e.to_string())?;
            Ok(AccessRule {
                action,
                cidr: range.to_string(),
            })
        })
        .collect()
}

sluice_policy_sdk::export_routing!(crate::UrlPrefix);

#[cfg(test)]
mod tests;
