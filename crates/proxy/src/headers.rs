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

/// Sets `X-Forwarded-For` (appending the client to any list already there), `-Proto` and
/// `-Host`.
pub(crate) fn add_forwarded(
    headers: &mut HeaderMap,
    client_ip: &HeaderValue,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    let appended = headers
        .get(&X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
        .filter(|prev| !prev.trim().is_empty())
        .and_then(|prev| {
            let ip = client_ip.to_str().unwrap_or_default();
            HeaderValue::from_str(&format!("{prev}, {ip}")).ok()
        });
    headers.insert(
        X_FORWARDED_FOR,
        appended.unwrap_or_else(|| client_ip.clone()),
    );
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host.clone());
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

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
        ]);
        remove_hop_by_hop(&mut h, true, false);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["accept"]);
    }

    #[test]
    fn usual_connection_tokens_and_upgrade_without_keep() {
        let mut h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "h2c"),
            ("accept", "*/*"),
        ]);
        remove_hop_by_hop(&mut h, true, false);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["accept"]);
    }

    #[test]
    fn upgrade_survives_when_kept() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("host", "x"),
        ]);
        assert!(is_upgrade_request(&h));
        remove_hop_by_hop(&mut h, true, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = map(&[("x-forwarded-for", "10.0.0.1")]);
        let ip = client_ip_value("127.0.0.1".parse().unwrap());
        add_forwarded(
            &mut h,
            &ip,
            "http",
            Some(&HeaderValue::from_static("ex.com")),
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        let mut fresh = HeaderMap::new();
        add_forwarded(&mut fresh, &ip, "https", None);
        assert_eq!(fresh["x-forwarded-for"], "127.0.0.1");
        assert!(!fresh.contains_key("x-forwarded-host"));
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "ex.com");
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
