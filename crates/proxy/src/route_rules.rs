//! A route's own rules, applied around forwarding: client-address access rules (`allow` /
//! `deny`), rate limits (`rate_limit`, in `rate_limit.rs`), redirects Sluice answers itself
//! (`redirect`), and the `Host` header sent to instances (`upstream_host`).
//!
//! Everything is prepared when the route table is built (networks parsed, header values and
//! the redirect URL's pieces made, metric handles registered), so a request pays a scan of the
//! route's networks and nothing else: no parsing, no allocation — except the `Location` of a
//! redirect that copies the request path into it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use metrics::{Counter, counter};
use sluice_codec::request::RequestHead;
use sluice_config::{AccessRules, RouteConfig, UpstreamHost};

use crate::error::{ProxyError, ProxyErrorKind};
use crate::metrics::{ROUTE_DENIED_TOTAL, ROUTE_REDIRECTS_TOTAL};
use crate::rate_limit::{KeySource, RateLimiter};

/// The prepared rules of one route.
#[derive(Debug, Default)]
pub(crate) struct RouteRules {
    access: Option<(AccessRules, Counter)>,
    rate_limit: Option<Arc<RateLimiter>>,
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
    /// The client's key is over the route's rate limit (429, the JSON error body): it may
    /// try again after the duration.
    Limited(ProxyError, Duration),
    /// The route redirects: status and `Location`, empty body.
    Redirect(Response<Bytes>),
}

impl RouteRules {
    /// Prepares `rc`'s rules; labels its metrics with `listener` and the route's name. A
    /// `running` limiter with the same settings is kept, its buckets with it.
    pub(crate) fn new(rc: &RouteConfig, running: Option<&Arc<RateLimiter>>) -> Self {
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
        let rate_limit = rc.rate_limit.as_ref().map(|config| match running {
            Some(kept) if kept.config() == config => Arc::clone(kept),
            _ => Arc::new(RateLimiter::new(config.clone(), &rc.listener, &rc.name)),
        });
        Self {
            access,
            rate_limit,
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
        self.access.is_some() || self.rate_limit.is_some() || self.redirect.is_some()
    }

    /// The route's rate limiter, if it has one.
    pub(crate) fn rate_limiter(&self) -> Option<&Arc<RateLimiter>> {
        self.rate_limit.as_ref()
    }

    /// Whether the route answers every request with a redirect (unless access rules refuse it).
    pub(crate) fn redirects(&self) -> bool {
        self.redirect.is_some()
    }

    /// Sluice's own answer for the request `source` describes, if it gives one: a refused
    /// client address first, then a key over the rate limit, then a redirect. `path` stands
    /// for `$path`.
    pub(crate) fn answer(&self, source: &KeySource<'_>, path: &str) -> Option<LocalAnswer> {
        let client = source.client;
        if let Some((rules, denied)) = &self.access
            && !rules.admits(client)
        {
            denied.increment(1);
            return Some(LocalAnswer::Denied(ProxyError::new(
                ProxyErrorKind::AccessDenied,
                format!("the route does not admit client address {client}"),
            )));
        }
        if let Some(limiter) = &self.rate_limit
            && let Err(limited) = limiter.check(source)
        {
            return Some(limited_answer(limiter, limited.retry_after));
        }
        self.redirect(path, source.head.query())
    }

    /// The redirect's answer, when the route redirects.
    fn redirect(&self, path: &str, query: Option<&str>) -> Option<LocalAnswer> {
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

/// The `429` for a key over `limiter`'s limit, which may send again after `wait`.
fn limited_answer(limiter: &RateLimiter, wait: Duration) -> LocalAnswer {
    let c = limiter.config();
    let detail = format!(
        "over the route's rate limit of {} request{} per {} (burst {}) by {}; retry in {} ms",
        c.rate,
        if c.rate == 1 { "" } else { "s" },
        period_text(c.per),
        c.burst,
        c.key,
        wait.as_millis().max(1),
    );
    LocalAnswer::Limited(ProxyError::new(ProxyErrorKind::RateLimited, detail), wait)
}

/// `1s`, `1m`, `250ms`: a period as the configuration writes it.
fn period_text(d: Duration) -> String {
    match (d.subsec_nanos(), d.as_secs()) {
        (0, s) if s % 3600 == 0 => format!("{}h", s / 3600),
        (0, s) if s % 60 == 0 => format!("{}m", s / 60),
        (0, s) => format!("{s}s"),
        _ => format!("{}ms", d.as_millis()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_codec::request::parse_h1;
    use std::net::IpAddr;

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

    /// A parsed `GET target` with `fields` (each line ending in CRLF).
    fn head(target: &str, fields: &str) -> RequestHead {
        let text = format!("GET {target} HTTP/1.1\r\nHost: x\r\n{fields}\r\n");
        let mut buf = bytes::BytesMut::from(text.as_bytes());
        match parse_h1(&mut buf) {
            Ok(Some(head)) => head,
            other => panic!("{text:?} does not parse: {other:?}"),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0; 4]))
    }

    fn answer(rules: &RouteRules, client: &str, head: &RequestHead) -> Option<LocalAnswer> {
        let source = KeySource {
            client: ip(client),
            head,
            identity: None,
        };
        rules.answer(&source, head.path())
    }

    fn location(rules: &RouteRules, target: &str) -> (u16, String) {
        match answer(rules, "127.0.0.1", &head(target, "")) {
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
        let with_path = RouteRules::new(
            &route("redirect = { code = 308, url = \"https://new.example.com$path\" }"),
            None,
        );
        assert_eq!(
            location(&with_path, "/old/a?x=1"),
            (308, "https://new.example.com/old/a?x=1".into())
        );
        let fixed = RouteRules::new(
            &route("redirect = { code = 301, url = \"https://new.example.com/\" }"),
            None,
        );
        assert_eq!(
            location(&fixed, "/old/a?x=1"),
            (301, "https://new.example.com/".into())
        );
        let twice = RouteRules::new(
            &route("redirect = { code = 302, url = \"/n$path?from=$path\" }"),
            None,
        );
        assert_eq!(location(&twice, "/p?q=1"), (302, "/n/p?from=/p".into()));
    }

    #[test]
    fn access_rules_admit_and_refuse() {
        let allow = RouteRules::new(
            &route("service = \"s\"\nallow = [\"10.0.0.0/8\", \"::1\"]\n[[service]]\nname = \"s\""),
            None,
        );
        let refused = |rules: &RouteRules, client: &str| {
            matches!(
                answer(rules, client, &head("/", "")),
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
        let deny = RouteRules::new(
            &route("service = \"s\"\ndeny = [\"127.0.0.1\"]\n[[service]]\nname = \"s\""),
            None,
        );
        assert!(refused(&deny, "127.0.0.1"));
        assert!(!refused(&deny, "127.0.0.2"));
    }

    fn limited(rules: &RouteRules, client: &str, head: &RequestHead) -> bool {
        matches!(
            answer(rules, client, head),
            Some(LocalAnswer::Limited(_, _))
        )
    }

    fn admitted(rules: &RouteRules, client: &str, head: &RequestHead, n: usize) -> usize {
        (0..n).filter(|_| !limited(rules, client, head)).count()
    }

    #[test]
    fn a_rate_limit_admits_the_burst_then_refuses_each_key_on_its_own() {
        let rules = RouteRules::new(
            &route(
                "service = \"s\"\nrate_limit = { rate = 1, per = \"1h\", burst = 3 }\n\
                 [[service]]\nname = \"s\"",
            ),
            None,
        );
        let plain = head("/", "");
        assert_eq!(admitted(&rules, "192.0.2.1", &plain, 10), 3);
        assert_eq!(admitted(&rules, "192.0.2.2", &plain, 10), 3);
        assert_eq!(
            admitted(&rules, "::ffff:192.0.2.1", &plain, 1),
            0,
            "a v4-mapped address is the same client"
        );
        assert_eq!(admitted(&rules, "2001:db8:1:2::1", &plain, 10), 3);
        assert_eq!(
            admitted(&rules, "2001:db8:1:2::ffff", &plain, 1),
            0,
            "an IPv6 client is counted by its /64"
        );
        assert_eq!(admitted(&rules, "2001:db8:1:3::1", &plain, 10), 3);
        match answer(&rules, "192.0.2.1", &plain) {
            Some(LocalAnswer::Limited(err, wait)) => {
                assert_eq!(err.kind, ProxyErrorKind::RateLimited);
                assert!(
                    err.detail.contains("1 request per 1h (burst 3) by client"),
                    "{}",
                    err.detail
                );
                assert!(wait > Duration::from_secs(3500), "{wait:?}");
            }
            _ => panic!("the fourth request is not limited"),
        }
    }

    #[test]
    fn a_header_key_counts_by_value_and_falls_back_to_the_client() {
        let rules = RouteRules::new(
            &route(
                "service = \"s\"\nrate_limit = { rate = 2, per = \"1h\", key = \"header:X-Api-Key\" }\n\
                 [[service]]\nname = \"s\"",
            ),
            None,
        );
        let a = head("/", "x-api-key: a\r\n");
        let b = head("/", "X-API-KEY: b\r\n");
        assert_eq!(admitted(&rules, "192.0.2.1", &a, 5), 2);
        assert_eq!(
            admitted(&rules, "192.0.2.1", &b, 5),
            2,
            "another key, same client"
        );
        assert_eq!(
            admitted(&rules, "192.0.2.9", &a, 5),
            0,
            "the same key, another client"
        );
        let none = head("/", "");
        assert_eq!(
            admitted(&rules, "192.0.2.1", &none, 5),
            2,
            "no header: by client"
        );
        assert_eq!(admitted(&rules, "192.0.2.1", &none, 5), 0);
    }

    #[test]
    fn past_max_keys_new_keys_share_one_bucket_and_held_keys_keep_theirs() {
        let rules = RouteRules::new(
            &route(
                "service = \"s\"\nrate_limit = { rate = 1, per = \"1h\", burst = 2, max_keys = 2 }\n\
                 [[service]]\nname = \"s\"",
            ),
            None,
        );
        let plain = head("/", "");
        assert_eq!(admitted(&rules, "192.0.2.1", &plain, 1), 1);
        assert_eq!(admitted(&rules, "192.0.2.2", &plain, 1), 1);
        let newcomers = (3..20)
            .filter(|i| !limited(&rules, &format!("192.0.2.{i}"), &plain))
            .count();
        assert_eq!(newcomers, 2, "new keys share one bucket of burst 2");
        assert_eq!(
            admitted(&rules, "192.0.2.1", &plain, 5),
            1,
            "a held key keeps its own"
        );
    }

    #[test]
    fn a_reload_keeps_the_buckets_of_an_unchanged_limit_only() {
        let config = route(
            "service = \"s\"\nrate_limit = { rate = 1, per = \"1h\", burst = 1 }\n\
             [[service]]\nname = \"s\"",
        );
        let before = RouteRules::new(&config, None);
        let plain = head("/", "");
        assert_eq!(admitted(&before, "192.0.2.1", &plain, 3), 1);
        let kept = RouteRules::new(&config, before.rate_limiter());
        assert_eq!(
            admitted(&kept, "192.0.2.1", &plain, 3),
            0,
            "the bucket is kept"
        );
        let changed = route(
            "service = \"s\"\nrate_limit = { rate = 2, per = \"1h\", burst = 1 }\n\
             [[service]]\nname = \"s\"",
        );
        let fresh = RouteRules::new(&changed, kept.rate_limiter());
        assert_eq!(
            admitted(&fresh, "192.0.2.1", &plain, 3),
            1,
            "new settings start afresh"
        );
    }
}
