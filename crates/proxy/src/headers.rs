//! What an instance receives besides the client's own fields: `X-Forwarded-*`, the request
//! id, `Host` when Sluice sets it, and the TLS identity fields; and which of the client's
//! fields stay behind (hop-by-hop, replaced, or stripped).

use std::net::IpAddr;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};

use sluice_codec::fields::put_field;
use sluice_codec::fields::{Field, Kind};
use sluice_codec::request::RequestHead;

use crate::trace::TraceContext;

/// `x-request-id`: taken from the client when sane, generated otherwise, always forwarded.
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The client's address as a header value; made once per connection.
pub(crate) fn client_ip_value(client: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&client.to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The proxy's part of the upstream request head, decided once per request. The head is
/// written from the client's fields that pass [`Self::keeps`] followed by [`Self::write`].
#[derive(Debug)]
pub(crate) struct UpstreamFields<'a> {
    client_ip: &'a HeaderValue,
    /// The client's `X-Forwarded-For`, when it had a non-empty one: the client's address is
    /// appended to it.
    forwarded_for: Option<&'a [u8]>,
    forwarded_proto: &'static str,
    /// The host the client asked for (`X-Forwarded-Host`).
    forwarded_host: Option<&'a [u8]>,
    request_id: &'a RequestId,
    /// The request's trace: a started one replaces the client's trace fields.
    trace: &'a TraceContext,
    /// A protocol switch is asked for: `Upgrade` passes and `Connection: upgrade` is added.
    upgrade: bool,
    /// The TLS session's identity fields (added) and every configured identity field name
    /// (removed from what the client sent), on TLS listeners.
    identity: Option<&'a crate::tls::ConnTls>,
}

impl<'a> UpstreamFields<'a> {
    /// `upgrade`: the request switches protocols (the route allows the one it asks for).
    pub(crate) fn new(
        head: &'a RequestHead,
        client_ip: &'a HeaderValue,
        (proto, upgrade): (&'static str, bool),
        (request_id, trace): (&'a RequestId, &'a TraceContext),
        identity: Option<&'a crate::tls::ConnTls>,
    ) -> Self {
        Self {
            client_ip,
            forwarded_for: head
                .forwarded_for()
                .filter(|prev| !prev.trim_ascii().is_empty()),
            forwarded_proto: proto,
            forwarded_host: head.host(),
            request_id,
            trace,
            upgrade,
            identity,
        }
    }

    /// Whether a client field goes to the instance: not hop-by-hop (nor named by
    /// `Connection`), not one the proxy replaces, not an identity field. `Upgrade` passes for a
    /// protocol switch only; `Host` unless `host` replaces it.
    pub(crate) fn keeps(&self, head: &RequestHead, field: &Field, name: &[u8], host: bool) -> bool {
        match field.kind {
            Kind::Upgrade => self.upgrade,
            Kind::Expect | Kind::XForwardedFor | Kind::XForwardedProto | Kind::XRequestId => false,
            Kind::XForwardedHost => self.forwarded_host.is_none(),
            Kind::TraceParent | Kind::TraceState => !self.trace.started(),
            Kind::Host => !host,
            Kind::Other => {
                !head.named_by_connection(name)
                    && !self.identity.is_some_and(|tls| tls.strips(name))
            }
            kind => !kind.is_hop_by_hop(),
        }
    }

    /// Appends the proxy's fields: `Host` (when given), `X-Forwarded-For`, `-Proto`, `-Host`,
    /// `x-request-id`, the identity fields and `Connection: upgrade` for a protocol switch.
    pub(crate) fn write(&self, out: &mut BytesMut, host: Option<&[u8]>) {
        if let Some(host) = host {
            put_field(out, b"host", host);
        }
        out.extend_from_slice(b"x-forwarded-for: ");
        if let Some(prev) = self.forwarded_for {
            out.extend_from_slice(prev);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(self.client_ip.as_bytes());
        out.extend_from_slice(b"\r\n");
        put_field(out, b"x-forwarded-proto", self.forwarded_proto.as_bytes());
        if let Some(host) = self.forwarded_host {
            put_field(out, b"x-forwarded-host", host);
        }
        put_field(out, b"x-request-id", self.request_id.as_bytes());
        if let Some(traceparent) = self.trace.new_traceparent() {
            put_field(out, b"traceparent", traceparent);
        }
        if let Some(tls) = self.identity {
            for (name, value) in tls.identity_fields() {
                put_field(out, name.as_str().as_bytes(), value.as_bytes());
            }
        }
        if self.upgrade {
            out.extend_from_slice(b"connection: upgrade\r\n");
        }
    }
}

impl UpstreamFields<'_> {
    /// The proxy's fields for an HTTP/2 instance: as [`Self::write`] writes them, less `Host`
    /// (`:authority` carries it) and `Connection` (HTTP/2 has none). Values new on every
    /// request (`x-request-id`, `traceparent`) are marked sensitive, which the `h2` crate
    /// encodes as HPACK literals never indexed (RFC 7541 §6.2.3): entered in the connection's
    /// table, each would evict fields that do repeat, and lengthen the chain of same-name
    /// entries the encoder compares on every request.
    pub(crate) fn insert_into(&self, map: &mut http::HeaderMap) {
        let mut forwarded_for = BytesMut::new();
        if let Some(prev) = self.forwarded_for {
            forwarded_for.extend_from_slice(prev);
            forwarded_for.extend_from_slice(b", ");
        }
        forwarded_for.extend_from_slice(self.client_ip.as_bytes());
        let mut put = |name: &'static str, value: &[u8], per_request: bool| {
            if let Ok(mut v) = HeaderValue::from_bytes(value) {
                v.set_sensitive(per_request);
                map.insert(HeaderName::from_static(name), v);
            }
        };
        put("x-forwarded-for", &forwarded_for, false);
        put("x-forwarded-proto", self.forwarded_proto.as_bytes(), false);
        if let Some(host) = self.forwarded_host {
            put("x-forwarded-host", host, false);
        }
        put("x-request-id", self.request_id.as_bytes(), true);
        if let Some(traceparent) = self.trace.new_traceparent() {
            put("traceparent", traceparent, true);
        }
        if let Some(tls) = self.identity {
            for (name, value) in tls.identity_fields() {
                map.insert(name.clone(), value.clone());
            }
        }
    }
}

/// The request's id: the client's `x-request-id` when it is 1–128 printable ASCII characters
/// (its bytes, shared with the request head), else a new random 128-bit id in hex (held inline:
/// no allocation). It goes to the instance, back to the client and into the access log.
#[derive(Debug, Clone)]
pub(crate) enum RequestId {
    Client(Bytes),
    New([u8; 32]),
}

impl RequestId {
    /// The id for the request `head`.
    pub(crate) fn of(head: &RequestHead) -> Self {
        match head.request_id_bytes() {
            Some(b) if !b.is_empty() && b.len() <= 128 && b.iter().all(u8::is_ascii_graphic) => {
                RequestId::Client(b)
            }
            _ => RequestId::new(),
        }
    }

    fn new() -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for half in out.chunks_exact_mut(16) {
            let mut n = fastrand::u64(..);
            for b in half.iter_mut() {
                *b = HEX[(n & 0xf) as usize];
                n >>= 4;
            }
        }
        RequestId::New(out)
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            RequestId::Client(b) => b,
            RequestId::New(b) => b,
        }
    }

    /// As text (it is printable ASCII either way).
    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn head(text: &str) -> RequestHead {
        let mut read = BytesMut::from(text.as_bytes());
        sluice_codec::request::parse_h1(&mut read).unwrap().unwrap()
    }

    /// The upstream fields for `text`, as `name: value` lines, with upgrades allowed as a
    /// route allowing every protocol would decide.
    fn upstream(text: &str, host: Option<&[u8]>) -> Vec<String> {
        upstream_switching(text, host, None)
    }

    /// The upstream fields for `text`; `upgrade` overrides whether the switch is allowed.
    fn upstream_switching(text: &str, host: Option<&[u8]>, upgrade: Option<bool>) -> Vec<String> {
        let h = head(text);
        let ip = client_ip_value("127.0.0.1".parse().unwrap());
        let id = RequestId::Client(Bytes::from_static(b"id-1"));
        let upgrade = upgrade.unwrap_or(h.is_upgrade());
        let trace = TraceContext::of(&h);
        let fields = UpstreamFields::new(&h, &ip, ("http", upgrade), (&id, &trace), None);
        let mut out = BytesMut::new();
        let buf = h.buffer();
        let kept = h
            .field_list()
            .iter()
            .filter(|f| fields.keeps(&h, f, f.name.get(buf), host.is_some()));
        sluice_codec::fields::write_lines(&mut out, buf, kept);
        fields.write(&mut out, host);
        let lines: Vec<String> = String::from_utf8(out.to_vec())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        // Without a client trace a new one is added after x-request-id (trace.rs tests its
        // form); the tests below are about the other fields.
        // Exactly one goes out: the client's or the new one.
        let started = trace.new_traceparent().is_some();
        let traceparents = lines.iter().filter(|l| l.starts_with("traceparent: "));
        assert_eq!(traceparents.count(), 1, "{lines:?}");
        lines
            .into_iter()
            .filter(|l| !(started && l.starts_with("traceparent: ")))
            .collect()
    }

    #[test]
    fn per_request_values_are_never_indexed_by_hpack_and_the_others_may_be() {
        let h = head("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        let ip = client_ip_value("127.0.0.1".parse().unwrap());
        let id = RequestId::of(&h);
        let trace = TraceContext::of(&h);
        let fields = UpstreamFields::new(&h, &ip, ("http", false), (&id, &trace), None);
        let mut map = http::HeaderMap::new();
        fields.insert_into(&mut map);
        let sensitive = |name: &str| map.get(name).map(HeaderValue::is_sensitive);
        assert_eq!(sensitive("x-request-id"), Some(true));
        assert_eq!(sensitive("traceparent"), Some(true));
        assert_eq!(sensitive("x-forwarded-for"), Some(false));
        assert_eq!(sensitive("x-forwarded-proto"), Some(false));
    }

    #[test]
    fn a_clients_trace_passes_and_an_invalid_one_is_replaced() {
        let valid = "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let lines = upstream(
            &format!("GET / HTTP/1.1\r\nHost: a\r\n{valid}\r\ntracestate: v=1\r\n\r\n"),
            None,
        );
        assert!(lines.contains(&valid.to_owned()), "{lines:?}");
        assert!(lines.contains(&"tracestate: v=1".to_owned()), "{lines:?}");
        let lines = upstream(
            "GET / HTTP/1.1\r\nHost: a\r\ntraceparent: 00-zz\r\ntracestate: v=1\r\n\r\n",
            None,
        );
        assert!(!lines.iter().any(|l| l.starts_with("trace")), "{lines:?}");
    }

    #[test]
    fn hop_by_hop_and_connection_named_fields_stay_behind() {
        let lines = upstream(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x-secret\r\nKeep-Alive: timeout=5\r\n\
             X-Secret: 1\r\nTE: trailers\r\nUpgrade: websocket\r\nExpect: 100-continue\r\nAccept: */*\r\n\r\n",
            None,
        );
        assert_eq!(
            lines,
            [
                "Host: a",
                "Accept: */*",
                "x-forwarded-for: 127.0.0.1",
                "x-forwarded-proto: http",
                "x-forwarded-host: a",
                "x-request-id: id-1"
            ]
        );
    }

    #[test]
    fn upgrade_passes_for_a_protocol_switch() {
        let lines = upstream(
            "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            None,
        );
        assert!(
            lines.contains(&"Upgrade: websocket".to_owned()),
            "{lines:?}"
        );
        assert_eq!(lines.last().unwrap(), "connection: upgrade");
        assert_eq!(lines.iter().filter(|l| l.starts_with("Host")).count(), 1);
    }

    /// A switch the route does not allow: the request goes on as a plain one, with neither
    /// the client's `Upgrade` nor `HTTP2-Settings` (hop-by-hop even when `Connection` does not
    /// name it).
    #[test]
    fn a_refused_upgrade_leaves_no_trace_upstream() {
        let request =
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n";
        for connection in [
            "Connection: Upgrade, HTTP2-Settings\r\n",
            "Connection: Upgrade\r\n",
        ] {
            let text = format!("{request}{connection}\r\n");
            let lines = upstream_switching(&text, None, Some(false)).join("\n");
            let lines = lines.to_ascii_lowercase();
            assert!(!lines.contains("upgrade"), "{lines}");
            assert!(!lines.contains("http2-settings"), "{lines}");
        }
    }

    #[test]
    fn forwarded_fields_replace_the_clients() {
        let lines = upstream(
            "GET / HTTP/1.1\r\nHost: ex.com\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\n\
             X-Forwarded-Host: spoofed\r\nX-Request-Id: client-id\r\n\r\n",
            Some(b"upstream.internal"),
        );
        assert_eq!(
            lines,
            [
                "host: upstream.internal",
                "x-forwarded-for: 10.0.0.1, 127.0.0.1",
                "x-forwarded-proto: http",
                "x-forwarded-host: ex.com",
                "x-request-id: id-1"
            ]
        );
    }

    #[test]
    fn request_ids_are_kept_or_generated() {
        let id = |field: &str| {
            RequestId::of(&head(&format!("GET / HTTP/1.1\r\nHost: a\r\n{field}\r\n")))
        };
        assert_eq!(id("X-Request-Id: abc-123\r\n").as_str(), "abc-123");
        let fresh = id("X-Request-Id: bad value with spaces\r\n");
        assert_eq!(fresh.as_str().len(), 32);
        assert!(fresh.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(fresh.as_str(), id("").as_str());
        assert_eq!(
            id(&format!("X-Request-Id: {}\r\n", "x".repeat(129)))
                .as_str()
                .len(),
            32
        );
    }
}
