//! `[[listener]]`: HTTP and TCP listeners and their SNI routing (TLS in `tls.rs`).

use std::collections::HashMap;
use std::net::SocketAddr;

use toml::Spanned;

use super::{Cx, default_admin_bind};
use crate::defaults as d;
use crate::model::*;
use crate::raw::*;

impl Cx<'_> {
    pub(super) fn listeners(
        &mut self,
        raw: &[Spanned<RawListener>],
        admin: &AdminConfig,
    ) -> Vec<ListenerConfig> {
        let mut seen_names: HashMap<&str, usize> = HashMap::new();
        let mut seen_binds: HashMap<SocketAddr, usize> = HashMap::new();
        let mut out = Vec::new();
        for l in raw {
            let l = l.get_ref();
            let name = l.name.get_ref().as_str();
            self.unique_name(&mut seen_names, &l.name, "listener");
            let bind = self.socket_addr(&l.bind);
            if let Some(bind) = bind {
                if bind == admin.bind {
                    self.error_hint(
                        Some(l.bind.span()),
                        format!("listener `{name}` binds {bind}, which the admin listener uses"),
                        "change [admin] bind or this listener's bind",
                    );
                }
                // Port 0 asks the OS for a fresh port each time, so it never collides.
                let first = (bind.port() != 0)
                    .then(|| seen_binds.insert(bind, self.src.line_col(l.bind.span().start).0))
                    .flatten();
                if let Some(line) = first {
                    self.error_hint(
                        Some(l.bind.span()),
                        format!("address {bind} is bound by two listeners"),
                        format!("the other one is on line {line}"),
                    );
                }
            }
            let protocol = self.choice(
                l.protocol.as_ref(),
                "listener protocol",
                &[
                    ("http", ListenerProtocol::Http),
                    ("tcp", ListenerProtocol::Tcp),
                ],
            );
            let tcp = self.tcp_listener(l, protocol);
            let tls = l.tls.as_ref().and_then(|t| self.listener_tls(t, &l.name));
            let authz = l.authz.as_ref().map(|a| self.listener_authz(a));
            out.push(ListenerConfig {
                name: name.to_owned(),
                bind: bind.unwrap_or_else(default_admin_bind),
                protocol,
                max_connections: self.int_in(
                    l.max_connections.as_ref(),
                    1,
                    10_000_000,
                    d::MAX_CONNECTIONS as i64,
                ) as usize,
                header_read_timeout: self
                    .duration(l.header_read_timeout.as_ref(), d::HEADER_READ_TIMEOUT),
                max_header_bytes: self.int_in(
                    l.max_header_bytes.as_ref(),
                    8192,
                    1 << 20,
                    d::MAX_HEADER_BYTES as i64,
                ) as usize,
                keepalive_timeout: self
                    .duration(l.keepalive_timeout.as_ref(), d::KEEPALIVE_TIMEOUT),
                request_body_timeout: self
                    .duration(l.request_body_timeout.as_ref(), d::REQUEST_BODY_TIMEOUT),
                send_timeout: self.duration(l.send_timeout.as_ref(), d::SEND_TIMEOUT),
                http2: l.http2.unwrap_or(true),
                accept_proxy_protocol: l.accept_proxy_protocol.unwrap_or(false),
                max_concurrent_streams: self.int_in(
                    l.max_concurrent_streams.as_ref(),
                    1,
                    65_535,
                    i64::from(d::MAX_CONCURRENT_STREAMS),
                ) as u32,
                http2_max_stalled_streams: self.int_in(
                    l.http2_max_stalled_streams.as_ref(),
                    1,
                    65_535,
                    i64::from(d::HTTP2_MAX_STALLED_STREAMS),
                ) as u32,
                tcp,
                tls,
                authz,
            });
        }
        out
    }

    /// The TCP part of a listener: required for `protocol = "tcp"`, refused for HTTP.
    pub(super) fn tcp_listener(
        &mut self,
        l: &RawListener,
        protocol: ListenerProtocol,
    ) -> Option<TcpListenerConfig> {
        if protocol != ListenerProtocol::Tcp {
            for (key, span) in [
                ("service", l.service.as_ref().map(Spanned::span)),
                (
                    "proxy_protocol",
                    l.proxy_protocol.as_ref().map(Spanned::span),
                ),
                ("idle_timeout", l.idle_timeout.as_ref().map(Spanned::span)),
                (
                    "sni",
                    l.sni
                        .as_ref()
                        .map(|v| v.first().map_or(l.name.span(), Spanned::span)),
                ),
                ("sni_timeout", l.sni_timeout.as_ref().map(Spanned::span)),
                ("sni_max_bytes", l.sni_max_bytes.as_ref().map(Spanned::span)),
            ] {
                if span.is_some() {
                    self.error_hint(
                        span,
                        format!("`{key}` only applies to a TCP listener"),
                        "add protocol = \"tcp\", or route HTTP with [[route]] entries",
                    );
                }
            }
            return None;
        }
        let sni = self.sni(l);
        if l.service.is_none() && sni.is_none() {
            self.error_hint(
                Some(l.name.span()),
                format!("TCP listener `{}` has no `service`", l.name.get_ref()),
                "a TCP listener sends every connection to one service: add service = \"NAME\"",
            );
            return None;
        }
        if let Some(service) = &l.service {
            self.tcp_service_refs.push(service.clone());
        }
        let proxy_protocol = self.choice(
            l.proxy_protocol.as_ref(),
            "proxy_protocol",
            &[
                ("off", ProxyProtocol::Off),
                ("v1", ProxyProtocol::V1),
                ("v2", ProxyProtocol::V2),
            ],
        );
        Some(TcpListenerConfig {
            service: l.service.as_ref().map(|s| s.get_ref().clone()),
            sni,
            proxy_protocol,
            idle_timeout: self.duration(l.idle_timeout.as_ref(), d::TCP_IDLE_TIMEOUT),
        })
    }

    /// `[[listener.sni]]` of a TCP listener: TLS passthrough, so no `[listener.tls]` (that
    /// would terminate TLS) and no `[listener.authz]` (there is no verified identity to check).
    pub(super) fn sni(&mut self, l: &RawListener) -> Option<SniConfig> {
        let Some(entries) = &l.sni else {
            for (key, span) in [
                ("sni_timeout", l.sni_timeout.as_ref().map(Spanned::span)),
                ("sni_max_bytes", l.sni_max_bytes.as_ref().map(Spanned::span)),
            ] {
                if span.is_some() {
                    self.error_hint(
                        span,
                        format!("`{key}` only applies to a listener with [[listener.sni]] entries"),
                        "add [[listener.sni]] host = \"...\", service = \"...\" or remove it",
                    );
                }
            }
            return None;
        };
        if l.tls.is_some() {
            self.error_hint(
                Some(l.name.span()),
                format!(
                    "listener `{}` has both [listener.tls] and [[listener.sni]]",
                    l.name.get_ref()
                ),
                "[[listener.sni]] passes TLS through untouched; [listener.tls] terminates it: choose one",
            );
        }
        if l.authz.is_some() {
            self.error_hint(
                Some(l.name.span()),
                format!(
                    "listener `{}` has [listener.authz] with [[listener.sni]]",
                    l.name.get_ref()
                ),
                "a passthrough listener never sees a client certificate; authorize at the backend, or terminate TLS with [listener.tls]",
            );
        }
        let mut seen: HashMap<HostMatch, usize> = HashMap::new();
        let mut routes = Vec::new();
        for e in entries {
            let e = e.get_ref();
            let host = self.host_match(&e.host);
            if host == HostMatch::Any {
                self.error_hint(
                    Some(e.host.span()),
                    "an SNI entry needs a server name",
                    "use `name.example.com` or `*.example.com`; the listener's `service` takes connections without a match",
                );
                continue;
            }
            let line = self.src.line_col(e.host.span().start).0;
            if let Some(first) = seen.insert(host.clone(), line) {
                self.error_hint(
                    Some(e.host.span()),
                    format!("duplicate SNI entry for `{host}`"),
                    format!("the first one is on line {first}"),
                );
            }
            self.tcp_service_refs.push(e.service.clone());
            routes.push(SniRoute {
                host,
                service: e.service.get_ref().clone(),
            });
        }
        Some(SniConfig {
            routes,
            timeout: self.duration(l.sni_timeout.as_ref(), d::SNI_TIMEOUT),
            max_bytes: self.int_in(
                l.sni_max_bytes.as_ref(),
                512,
                1 << 20,
                d::SNI_MAX_BYTES as i64,
            ) as usize,
        })
    }
}
