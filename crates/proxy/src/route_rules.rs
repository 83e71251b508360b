//! A route's own rules, applied around forwarding: client-address access rules (`allow` /
//! `deny`), redirects Sluice answers itself (`redirect`), and the `Host` header sent to
//! instances (`upstream_host`).
//!
//! Everything is prepared when the route table is built (networks parsed, header values and
//! the redirect URL's pieces made, metric handles registered), so a request pays a scan of the
//! route's networks and nothing else: no parsing, no allocation — except the `Location` of a
//! redirect that copies the request path into it.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use metrics::{Counter, counter};
use sluice_codec::request::RequestHead;
use sluice_config::{AccessRules, RouteConfig, UpstreamHost};

use crate::error::{ProxyError, ProxyErrorKind};
use crate::metrics::{ROUTE_DENIED_TOTAL, ROUTE_REDIRECTS_TOTAL};

/// The prepared rules of one route.
#[derive(Debug, Default)]
pub(crate) struct RouteRules {
    access: Option<(AccessRules, Counter)>,
    redirect: Option<Redirect>,
    host: Option<Host>,
    /// Protocols clients may switch to (`upgrades`, lower case).
    upgrades: Box<[Box<str>]>,
}

#[derive(Debug)]
struct Redirect {
    status: StatusCode,
    /// The URL split at each `$path`: the request path goes between consecutive pieces.
    pieces: Box<[Box<str>]>,
    /// The whole `Location` when the URL has no `$path`.
    fixed: Option<HeaderValue>,
    /// Whether the request's query is appended (`$path` used and the URL has no query).
    keep_query: bool,
    count: Counter,
}

#[derive(Debug)]
enum Host {
    /// Each attempt's instance address.
    Dst,
    Name(HeaderValue),
}

/// What Sluice answers instead of forwarding.
pub(crate) enum LocalAnswer {
    /// The client's address is refused (403, the JSON error body).
    Denied(ProxyError),
    /// The route redirects: status and `Location`, empty body.
    Redirect(Response<Bytes>),
}

impl RouteRules {
    /// Prepares `rc`'s rules; labels its metrics with `listener` and the route's name.
    pub(crate) fn new(rc: &RouteConfig) -> Self {
        let labels = || (rc.listener.clone(), rc.name.clone());
        let access = rc.access.clone().map(|rules| {
            let (listener, route) = labels();
            let denied = counter!(ROUTE_DENIED_TOTAL, "listener" => listener, "route" => route);
            (rules, denied)
        });
        let redirect = rc.redirect.as_ref().map(|r| {
            let (listener, route) = labels();
            let pieces: Box<[Box<str>]> = r.url.split("$path").map(Box::from).collect();
            let fixed = (pieces.len() == 1)
                .then(|| HeaderValue::from_str(&r.url).ok())
                .flatten();
            Redirect {
                // Validated by sluice-config; 302 keeps a redirect a redirect if not.
                status: StatusCode::from_u16(r.code).unwrap_or(StatusCode::FOUND),
                keep_query: pieces.len() > 1 && !r.url.contains('?'),
                pieces,
                fixed,
                count: counter!(ROUTE_REDIRECTS_TOTAL, "listener" => listener, "route" => route),
            }
        });
        let host = match &rc.upstream_host {
            None => None,
            Some(UpstreamHost::Dst) => Some(Host::Dst),
            Some(UpstreamHost::Name(name)) => HeaderValue::from_str(name).ok().map(Host::Name),
        };
        Self {
            access,
            redirect,
            host,
            upgrades: rc.upgrades.iter().map(|u| Box::from(u.as_str())).collect(),
        }
    }

    /// Whether `head` asks for a protocol switch this route allows: an HTTP/1.1 upgrade
    /// request whose `Upgrade` names only protocols in `upgrades`. Anything else goes on as a
    /// plain request, its `Upgrade` removed — a switch Sluice did not vet would tunnel later
    /// requests past the route's rules.
    pub(crate) fn allows_upgrade(&self, head: &RequestHead) -> bool {
        head.is_upgrade()
            && head.upgrade_protocols().next().is_some()
            && head.upgrade_protocols().all(|p| {
                self.upgrades
                    .iter()
                    .any(|u| p.eq_ignore_ascii_case(u.as_bytes()))
            })
    }

    /// Whether the route has rules that may answer a request instead of forwarding it.
    pub(crate) fn may_answer(&self) -> bool {
        self.access.is_some() || self.redirect.is_some()
    }

    /// Whether the route answers every request with a redirect (unless access rules refuse it).
    pub(crate) fn redirects(&self) -> bool {
        self.redirect.is_some()
    }

    /// Sluice's own answer for a request from `client`, if it gives one: a refused client
    /// address first, then a redirect. `path` stands for `$path`.
    pub(crate) fn answer(
        &self,
        client: IpAddr,
        path: &str,
        query: Option<&str>,
    ) -> Option<LocalAnswer> {
        if let Some((rules, denied)) = &self.access
            && !rules.admits(client)
        {
            denied.increment(1);
            return Some(LocalAnswer::Denied(ProxyError::new(
                ProxyErrorKind::AccessDenied,
                format!("the route does not admit client address {client}"),
            )));
        }
        let redirect = self.redirect.as_ref()?;
        redirect.count.increment(1);
        let location = match &redirect.fixed {
            Some(fixed) => fixed.clone(),
            None => {
                let mut url = String::with_capacity(
                    redirect.pieces.iter().map(|p| p.len()).sum::<usize>()
                        + (path.len() + 1) * redirect.pieces.len()
                        + query.map_or(0, str::len),
                );
                for (i, piece) in redirect.pieces.iter().enumerate() {
                    if i > 0 {
                        url.push_str(path);
                    }
                    url.push_str(piece);
                }
                if let (true, Some(query)) = (redirect.keep_query, query) {
                    url.push('?');
                    url.push_str(query);
                }
                // A request path is visible ASCII, so this holds; the bare URL is the fallback.
                HeaderValue::from_str(&url).unwrap_or_else(|_| {
                    HeaderValue::from_str(&redirect.pieces.concat())
                        .unwrap_or(HeaderValue::from_static("/"))
                })
            }
        };
        let mut response = Response::new(Bytes::new());
        *response.status_mut() = redirect.status;
        response.headers_mut().insert(header::LOCATION, location);
        Some(LocalAnswer::Redirect(response))
    }

    /// The fixed upstream `Host` (`upstream_host = "NAME"`); the client's stays otherwise.
    pub(crate) fn fixed_host(&self) -> Option<&HeaderValue> {
        match &self.host {
            Some(Host::Name(name)) => Some(name),
            _ => None,
        }
    }

    /// Whether each attempt sets `Host` to its instance's address (`upstream_host = "dst"`).
    pub(crate) fn host_is_dst(&self) -> bool {
        matches!(self.host, Some(Host::Dst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(extra: &str) -> RouteConfig {
        let cfg = sluice_config::parse_str(
            "t.toml",
            &format!(
                "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:1\"\n\
                 [[route]]\npath = \"/old\"\n{extra}\n"
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        cfg.routes[0].clone()
    }

    fn location(rules: &RouteRules, path: &str, query: Option<&str>) -> (u16, String) {
        match rules.answer(
            "127.0.0.1".parse().unwrap_or(IpAddr::from([0; 4])),
            path,
            query,
        ) {
            Some(LocalAnswer::Redirect(r)) => (
                r.status().as_u16(),
                r.headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned(),
            ),
            _ => panic!("no redirect"),
        }
    }

    #[test]
    fn redirects_replace_every_path_and_keep_the_query_only_with_path() {
        let with_path = RouteRules::new(&route(
            "redirect = { code = 308, url = \"https://new.example.com$path\" }",
        ));
        assert_eq!(
            location(&with_path, "/old/a", Some("x=1")),
            (308, "https://new.example.com/old/a?x=1".into())
        );
        let fixed = RouteRules::new(&route(
            "redirect = { code = 301, url = \"https://new.example.com/\" }",
        ));
        assert_eq!(
            location(&fixed, "/old/a", Some("x=1")),
            (301, "https://new.example.com/".into())
        );
        let twice = RouteRules::new(&route(
            "redirect = { code = 302, url = \"/n$path?from=$path\" }",
        ));
        assert_eq!(
            location(&twice, "/p", Some("q=1")),
            (302, "/n/p?from=/p".into())
        );
    }

    #[test]
    fn access_rules_admit_and_refuse() {
        let allow = RouteRules::new(&route(
            "service = \"s\"\nallow = [\"10.0.0.0/8\", \"::1\"]\n[[service]]\nname = \"s\"",
        ));
        let refused = |rules: &RouteRules, ip: &str| {
            matches!(
                rules.answer(ip.parse().unwrap_or(IpAddr::from([0; 4])), "/", None),
                Some(LocalAnswer::Denied(_))
            )
        };
        assert!(!refused(&allow, "10.1.2.3"));
        assert!(
            !refused(&allow, "::ffff:10.1.2.3"),
            "v4-mapped is compared as v4"
        );
        assert!(!refused(&allow, "::1"));
        assert!(refused(&allow, "127.0.0.1"));
        let deny = RouteRules::new(&route(
            "service = \"s\"\ndeny = [\"127.0.0.1\"]\n[[service]]\nname = \"s\"",
        ));
        assert!(refused(&deny, "127.0.0.1"));
        assert!(!refused(&deny, "127.0.0.2"));
    }
}
