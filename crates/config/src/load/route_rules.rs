//! Validation of a route's own answers and rules: `redirect`, `allow` / `deny` and
//! `upstream_host`.

use toml::Spanned;

use super::Cx;
use crate::model::{AccessAction, AccessRules, RedirectConfig, UpstreamHost};
use crate::raw::{RawRedirect, RawRoute};

impl Cx<'_> {
    /// `redirect`, `allow`/`deny` and `upstream_host` of one route.
    pub(super) fn route_rules(
        &mut self,
        r: &RawRoute,
    ) -> (
        Option<RedirectConfig>,
        Option<AccessRules>,
        Option<UpstreamHost>,
    ) {
        let redirect = r.redirect.as_ref().and_then(|v| self.redirect(v));
        let access = match (&r.allow, &r.deny) {
            (Some(_), Some(deny)) => {
                self.error_hint(
                    Some(deny.span()),
                    "a route takes `allow` or `deny`, not both",
                    "with `allow`, every address not listed is already denied",
                );
                None
            }
            (Some(list), None) => Some(self.access(AccessAction::Allow, list)),
            (None, Some(list)) => Some(self.access(AccessAction::Deny, list)),
            (None, None) => None,
        };
        let upstream_host = r.upstream_host.as_ref().and_then(|h| {
            if r.redirect.is_some() {
                self.error_hint(
                    Some(h.span()),
                    "`upstream_host` has no effect on a redirect route",
                    "a redirect is answered by Sluice; nothing is sent upstream",
                );
            }
            self.upstream_host(h)
        });
        (redirect, access, upstream_host)
    }

    fn redirect(&mut self, v: &Spanned<RawRedirect>) -> Option<RedirectConfig> {
        let raw = v.get_ref();
        let code = *raw.code.get_ref();
        let code_ok = RedirectConfig::valid_code(code);
        if !code_ok {
            self.error_hint(
                Some(raw.code.span()),
                format!("redirect code {code} is not a redirect status"),
                "use 301, 302, 303, 307 or 308",
            );
        }
        let url = raw.url.get_ref();
        let problem = RedirectConfig::url_problem(url);
        if let Some(problem) = problem {
            self.error_hint(
                Some(raw.url.span()),
                format!("invalid redirect url `{url}`: {problem}"),
                "write an absolute URL (\"https://example.com/new$path\") or a path (\"/new\"); `$path` is replaced by the request path",
            );
        }
        (code_ok && problem.is_none()).then(|| RedirectConfig {
            code: code as u16,
            url: url.clone(),
        })
    }

    fn access(
        &mut self,
        action: AccessAction,
        list: &Spanned<Vec<Spanned<String>>>,
    ) -> AccessRules {
        if list.get_ref().is_empty() {
            self.error_hint(
                Some(list.span()),
                "an empty access list",
                "list networks such as \"10.0.0.0/8\", or remove the key",
            );
        }
        let networks = list
            .get_ref()
            .iter()
            .filter_map(|c| self.network(c))
            .collect();
        AccessRules { action, networks }
    }

    /// An address or CIDR (`10.0.0.0/8`, `192.0.2.7`, `2001:db8::/32`); a bare address is a
    /// single-host network.
    pub(super) fn network(&mut self, c: &Spanned<String>) -> Option<ipnet::IpNet> {
        match AccessRules::parse_network(c.get_ref()) {
            Some(n) => Some(n),
            None => {
                self.error_hint(
                    Some(c.span()),
                    format!("invalid network `{}`", c.get_ref()),
                    "write an address or CIDR, e.g. \"10.0.0.0/8\" or \"192.0.2.7\"",
                );
                None
            }
        }
    }

    /// `upgrades = ["websocket", ...]`: protocol names (tokens), never `h2c` — an `h2c` switch
    /// would carry every later request on the connection past the routes and their rules.
    pub(super) fn upgrades(&mut self, list: &Spanned<Vec<Spanned<String>>>) -> Vec<String> {
        let mut out = Vec::with_capacity(list.get_ref().len());
        for p in list.get_ref() {
            let name = p.get_ref().to_ascii_lowercase();
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if name == "h2c" {
                self.error_hint(
                    Some(p.span()),
                    "`h2c` cannot be an upgrade through Sluice",
                    "Sluice serves HTTP/2 itself: clients speak it with prior knowledge or ALPN h2, and requests on it are routed one by one",
                );
            } else if !token {
                self.error_hint(
                    Some(p.span()),
                    format!("invalid upgrade protocol `{}`", p.get_ref()),
                    "write the protocol name as clients send it in `Upgrade`, without a version, e.g. \"websocket\"",
                );
            } else {
                out.push(name);
            }
        }
        out
    }

    fn upstream_host(&mut self, h: &Spanned<String>) -> Option<UpstreamHost> {
        let parsed = UpstreamHost::parse(h.get_ref());
        if parsed.is_none() {
            self.error_hint(
                Some(h.span()),
                format!("invalid upstream_host `{}`", h.get_ref()),
                "write \"dst\" (each instance's IP:PORT) or a host name with an optional port, e.g. \"api.internal\"",
            );
        }
        parsed
    }
}
