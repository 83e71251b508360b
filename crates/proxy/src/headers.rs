//! Header rewriting between client and instance: hop-by-hop removal, `X-Forwarded-*`,
//! request ids.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `x-request-id`: taken from the client when sane, generated otherwise, always forwarded.
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one hop and never cross a proxy (RFC 9110 §7.6.1, plus the
/// non-standard `keep-alive` and `proxy-connection`). `Expect` is last: it is removed from
/// requests only (Sluice answers `100-continue` itself when it reads the body).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::EXPECT,
];
const EXPECT_BIT: u16 = 1 << 8;

/// Whether a request asks to switch protocols (WebSocket): `Connection: upgrade` plus `Upgrade`.
pub(crate) fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers, including those the `Connection` header names, and for requests
/// `Expect`. With `keep_upgrade`, `Connection: upgrade` and `Upgrade` survive (they must reach
/// the other side of a protocol switch).
///
/// This runs twice per request, so it first looks for hop-by-hop names in one pass over the
/// keys (standard names compare as enum tags, nothing is hashed) and only removes what is there.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap, is_request: bool, keep_upgrade: bool) {
    let mut present = 0u16;
    let mut has_upgrade = false;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        } else if name == header::UPGRADE {
            has_upgrade = true;
        }
    }
    // Bit 0 is `Connection`: the tokens it lists are hop-by-hop too. The usual ones (`close`,
    // `keep-alive`, `upgrade`) need no work; anything else is collected and removed.
    if present & 1 != 0 && connection_names_other_headers(headers) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .filter(|n| *n != header::UPGRADE)
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    if !is_request {
        present &= !EXPECT_BIT;
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if has_upgrade {
        headers.remove(header::UPGRADE);
    }
}

fn connection_names_other_headers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .any(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case(b"close")
                && !t.eq_ignore_ascii_case(b"keep-alive")
                && !t.eq_ignore_ascii_case(b"upgrade")
        })
}

/// The client's address as a header value; made once per connection.
pub(crate) fn client_ip_value(client: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&client.to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// What an instance receives besides the client's own fields that pass [`Self::keeps`]:
/// `X-Forwarded-For` (the client appended to any list already there), `-Proto`, `-Host`,
/// `x-request-id`, `Host` when the client sent none (HTTP/2's `:authority`), and
/// `Connection: upgrade` for a protocol switch. The upstream head is written from the client's
/// head plus these, so the client's header map is never rewritten on the way.
#[derive(Debug)]
pub(crate) struct UpstreamFields {
    pub(crate) forwarded_for: HeaderValue,
    pub(crate) forwarded_proto: HeaderValue,
    pub(crate) forwarded_host: Option<HeaderValue>,
    pub(crate) host: Option<HeaderValue>,
    pub(crate) request_id: HeaderValue,
    pub(crate) upgrade: bool,
    /// Fields the client's `Connection` header names besides the usual tokens (rarely any).
    connection_named: Vec<HeaderName>,
}

impl UpstreamFields {
    pub(crate) fn new(
        client: &HeaderMap,
        client_ip: &HeaderValue,
        proto: &'static str,
        host: Option<HeaderValue>,
        request_id: HeaderValue,
        upgrade: bool,
    ) -> Self {
        let forwarded_for = client
            .get(&X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok())
            .filter(|prev| !prev.trim().is_empty())
            .and_then(|prev| {
                let ip = client_ip.to_str().unwrap_or_default();
                HeaderValue::from_str(&format!("{prev}, {ip}")).ok()
            })
            .unwrap_or_else(|| client_ip.clone());
        let connection_named = if connection_names_other_headers(client) {
            client
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
                .filter(|n| *n != header::UPGRADE)
                .collect()
        } else {
            Vec::new()
        };
        Self {
            forwarded_for,
            forwarded_proto: HeaderValue::from_static(proto),
            host: host
                .as_ref()
                .filter(|_| !client.contains_key(header::HOST))
                .cloned(),
            forwarded_host: host,
            request_id,
            upgrade,
            connection_named,
        }
    }

    /// Whether a client field goes to the instance: not hop-by-hop (nor named by
    /// `Connection`), not one of the fields replaced here. `Upgrade` passes for a protocol
    /// switch only.
    pub(crate) fn keeps(&self, name: &HeaderName) -> bool {
        if HOP_BY_HOP.contains(name) {
            return false;
        }
        if name == header::UPGRADE {
            return self.upgrade;
        }
        if name == X_FORWARDED_FOR || name == X_FORWARDED_PROTO || name == X_REQUEST_ID {
            return false;
        }
        if name == X_FORWARDED_HOST && self.forwarded_host.is_some() {
            return false;
        }
        !self.connection_named.contains(name)
    }

    /// The fields added, in the order they are written.
    pub(crate) fn added(&self) -> impl Iterator<Item = (&str, &HeaderValue)> {
        static UPGRADE: HeaderValue = HeaderValue::from_static("upgrade");
        let upgrade: Option<&HeaderValue> = self.upgrade.then_some(&UPGRADE);
        self.host
            .as_ref()
            .map(|v| ("host", v))
            .into_iter()
            .chain(std::iter::once(("x-forwarded-for", &self.forwarded_for)))
            .chain(std::iter::once((
                "x-forwarded-proto",
                &self.forwarded_proto,
            )))
            .chain(
                self.forwarded_host
                    .as_ref()
                    .map(|v| ("x-forwarded-host", v)),
            )
            .chain(std::iter::once(("x-request-id", &self.request_id)))
            .chain(upgrade.map(|v| ("connection", v)))
    }

    /// The whole upstream header map (for tests: the wire form is written by `h1`).
    #[cfg(test)]
    pub(crate) fn apply(&self, client: &HeaderMap) -> HeaderMap {
        let mut out = HeaderMap::new();
        for (name, value) in client {
            if self.keeps(name) {
                out.append(name.clone(), value.clone());
            }
        }
        for (name, value) in self.added() {
            out.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.clone(),
            );
        }
        out
    }
}

/// The request's id: the client's `x-request-id` when it is short printable ASCII, else a new
/// random 128-bit id in hex.
pub(crate) fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    new_request_id()
}

fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut out = [0u8; 32];
    for b in out.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    // 32 lower-case hex digits are always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// The value of cookie `name` in the request's `Cookie` headers, without allocating.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn upstream(h: &HeaderMap, upgrade: bool, host: Option<&'static str>) -> HeaderMap {
        let ip = client_ip_value("127.0.0.1".parse().unwrap());
        UpstreamFields::new(
            h,
            &ip,
            "http",
            host.map(HeaderValue::from_static),
            HeaderValue::from_static("id-1"),
            upgrade,
        )
        .apply(h)
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        h.keys().map(|k| k.as_str()).collect()
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("expect", "100-continue"),
            ("transfer-encoding", "chunked"),
            ("accept", "*/*"),
        ]);
        assert_eq!(
            names(&upstream(&h, false, None)),
            [
                "accept",
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-request-id"
            ]
        );
        // Responses keep `Expect`-free rules: only hop-by-hop fields go.
        let mut response = h.clone();
        remove_hop_by_hop(&mut response, false, false);
        assert_eq!(names(&response), ["expect", "accept"]);
    }

    #[test]
    fn usual_connection_tokens_and_upgrade_without_keep() {
        let h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "h2c"),
            ("accept", "*/*"),
        ]);
        let up = upstream(&h, false, None);
        assert!(!up.contains_key("upgrade") && !up.contains_key("connection"));
        assert_eq!(up["accept"], "*/*");
    }

    #[test]
    fn upgrade_survives_when_kept() {
        let h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("host", "x"),
        ]);
        assert!(is_upgrade_request(&h));
        let up = upstream(&h, true, Some("x"));
        assert_eq!(up["upgrade"], "websocket");
        assert_eq!(up["connection"], "upgrade");
        assert_eq!(
            up.get_all("host").iter().count(),
            1,
            "the client's Host is kept"
        );
    }

    #[test]
    fn forwarded_fields_replace_the_clients() {
        let h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("x-request-id", "client-id"),
        ]);
        let up = upstream(&h, false, Some("ex.com"));
        assert_eq!(up["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(up["x-forwarded-proto"], "http");
        assert_eq!(up["x-forwarded-host"], "ex.com");
        assert_eq!(up["x-request-id"], "id-1");
        assert_eq!(up["host"], "ex.com", "Host added when the client sent none");
        for name in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-request-id",
            "host",
        ] {
            assert_eq!(up.get_all(name).iter().count(), 1, "{name}");
        }
        let fresh = upstream(&HeaderMap::new(), false, None);
        assert_eq!(fresh["x-forwarded-for"], "127.0.0.1");
        assert!(!fresh.contains_key("x-forwarded-host") && !fresh.contains_key("host"));
        // Without a host to report, a client's X-Forwarded-Host passes through.
        let kept = upstream(&map(&[("x-forwarded-host", "a")]), false, None);
        assert_eq!(kept["x-forwarded-host"], "a");
    }

    #[test]
    fn request_ids_are_kept_or_generated() {
        let kept = request_id(&map(&[("x-request-id", "abc-123")]));
        assert_eq!(kept, "abc-123");
        let fresh = request_id(&map(&[("x-request-id", "bad value with spaces")]));
        assert_eq!(fresh.len(), 32);
        assert_ne!(fresh, request_id(&HeaderMap::new()));
    }

    #[test]
    fn cookies_are_found_by_name() {
        let h = map(&[("cookie", "a=1; JSESSIONID=xyz ;b=2"), ("cookie", "c=3")]);
        assert_eq!(cookie(&h, "JSESSIONID"), Some(&b"xyz"[..]));
        assert_eq!(cookie(&h, "c"), Some(&b"3"[..]));
        assert_eq!(cookie(&h, "d"), None);
    }
}
