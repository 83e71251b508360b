//! `[[service]]`: instances, balancing, retries and passive health (active health in `health.rs`).

use std::collections::HashMap;
use std::net::SocketAddr;

use toml::Spanned;

use super::{Cx, is_token};
use crate::defaults as d;
use crate::model::*;
use crate::raw::*;

impl Cx<'_> {
    pub(super) fn services(&mut self, raw: &[Spanned<RawService>]) -> Vec<ServiceConfig> {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut out = Vec::new();
        for s in raw {
            let s = s.get_ref();
            let name = s.name.get_ref().as_str();
            self.unique_name(&mut seen, &s.name, "service");
            let balancer = self.balancer(s);
            let protocol = self.upstream_protocol(s);
            let instances = self.instances(s.instances.as_deref().unwrap_or_default());
            let t = s.timeouts.as_ref();
            let timeouts = Timeouts {
                connect: self.duration(t.and_then(|t| t.connect.as_ref()), d::CONNECT_TIMEOUT),
                response_header: self.duration(
                    t.and_then(|t| t.response_header.as_ref()),
                    d::RESPONSE_HEADER_TIMEOUT,
                ),
                idle: self.duration(t.and_then(|t| t.idle.as_ref()), d::IDLE_TIMEOUT),
                total: self.duration(t.and_then(|t| t.total.as_ref()), d::TOTAL_TIMEOUT),
                tunnel_idle: self.duration(
                    t.and_then(|t| t.tunnel_idle.as_ref()),
                    d::TUNNEL_IDLE_TIMEOUT,
                ),
            };
            let retries = self.retries(s.retries.as_ref());
            let outlier = self.outlier(s.outlier.as_ref());
            let p = s.pool.as_ref();
            let pool = PoolConfig {
                max_idle_per_instance: self.int_in(
                    p.and_then(|p| p.max_idle_per_instance.as_ref()),
                    0,
                    100_000,
                    d::POOL_MAX_IDLE as i64,
                ) as usize,
                idle_timeout: self.duration(
                    p.and_then(|p| p.idle_timeout.as_ref()),
                    d::POOL_IDLE_TIMEOUT,
                ),
                max_connecting: self.int_in(
                    p.and_then(|p| p.max_connecting.as_ref()),
                    1,
                    65_536,
                    d::POOL_MAX_CONNECTING as i64,
                ) as usize,
                http2_max_connections: self.int_in(
                    p.and_then(|p| p.http2_max_connections.as_ref()),
                    1,
                    1024,
                    d::POOL_HTTP2_MAX_CONNECTIONS as i64,
                ) as usize,
            };
            let serve = self.choice(
                s.serve.as_ref(),
                "serve",
                &[("any", Serve::Any), ("primary", Serve::Primary)],
            );
            let health = s.health.as_ref().and_then(|h| self.health(h));
            let reports_roles = health.as_ref().is_some_and(|h| h.policy.is_some());
            if let (Serve::Primary, false, Some(v)) = (serve, reports_roles, &s.serve) {
                self.error_hint(
                    Some(v.span()),
                    "serve = \"primary\" needs a health check whose policy reports roles",
                    "add [service.health] with policy = \"NAME\" of a health policy such as mirror-primary",
                );
            }
            let on_demotion = self.choice(
                s.on_demotion.as_ref(),
                "on_demotion",
                &[("close", OnDemotion::Close), ("keep", OnDemotion::Keep)],
            );
            out.push(ServiceConfig {
                name: name.to_owned(),
                balancer,
                protocol,
                instances,
                timeouts,
                retries,
                outlier,
                pool,
                serve,
                health,
                on_demotion,
                tls: s.tls.as_ref().and_then(|t| self.service_tls(t, &s.name)),
                concurrency: s.concurrency.as_ref().and_then(|c| self.concurrency(c)),
            });
        }
        out
    }

    /// `[service.concurrency]`: `max_in_flight` is required; `max_queued` defaults to it.
    fn concurrency(&mut self, raw: &Spanned<RawConcurrency>) -> Option<ConcurrencyLimit> {
        let c = raw.get_ref();
        let Some(max) = &c.max_in_flight else {
            self.error_hint(
                Some(raw.span()),
                "[service.concurrency] needs `max_in_flight`",
                "e.g. max_in_flight = 200: at most 200 requests of the service at once",
            );
            return None;
        };
        let max_in_flight = self.int_in(Some(max), 1, 10_000_000, 1) as usize;
        Some(ConcurrencyLimit {
            max_in_flight,
            max_queued: self.int_in(c.max_queued.as_ref(), 0, 10_000_000, max_in_flight as i64)
                as usize,
            queue_timeout: self.duration(c.queue_timeout.as_ref(), d::QUEUE_TIMEOUT),
        })
    }

    pub(super) fn balancer(&mut self, s: &RawService) -> Balancer {
        const CHOICES: &[&str] = &["round_robin", "least_request", "p2c_ewma", "hash"];
        let kind = s
            .balancer
            .as_ref()
            .map_or("round_robin", |b| b.get_ref().as_str());
        let balancer = match kind {
            "round_robin" => Balancer::RoundRobin,
            "least_request" => Balancer::LeastRequest,
            "p2c_ewma" => Balancer::P2cEwma,
            "hash" => Balancer::Hash(
                s.hash_on
                    .as_ref()
                    .map_or(HashKey::ClientIp, |h| self.hash_key(h)),
            ),
            _ => {
                if let Some(b) = &s.balancer {
                    self.bad_choice(b, "balancer", CHOICES);
                }
                Balancer::RoundRobin
            }
        };
        if let (Some(h), false) = (&s.hash_on, matches!(balancer, Balancer::Hash(_))) {
            self.error_hint(
                Some(h.span()),
                "`hash_on` only applies to balancer = \"hash\"",
                "set balancer = \"hash\" or remove `hash_on`",
            );
        }
        balancer
    }

    /// `protocol`, and whether `[service.tls]` agrees with it: `h2` is HTTP/2 over TLS,
    /// `h2c` over cleartext.
    fn upstream_protocol(&mut self, s: &RawService) -> UpstreamProtocol {
        let Some(raw) = &s.protocol else {
            return UpstreamProtocol::Http1;
        };
        let protocol = self.choice(
            Some(raw),
            "protocol",
            &[
                ("http1", UpstreamProtocol::Http1),
                ("h2c", UpstreamProtocol::H2c),
                ("h2", UpstreamProtocol::H2),
            ],
        );
        match (protocol, s.tls.is_some()) {
            (UpstreamProtocol::H2, false) => self.error_hint(
                Some(raw.span()),
                "protocol = \"h2\" is HTTP/2 over TLS, and this service has no [service.tls]",
                "add [service.tls] (with `ca`), or use protocol = \"h2c\" for cleartext HTTP/2",
            ),
            (UpstreamProtocol::H2c, true) => self.error_hint(
                Some(raw.span()),
                "protocol = \"h2c\" is cleartext HTTP/2, but this service has [service.tls]",
                "use protocol = \"h2\" for HTTP/2 over TLS, or remove [service.tls]",
            ),
            _ => {}
        }
        protocol
    }

    pub(super) fn hash_key(&mut self, h: &Spanned<String>) -> HashKey {
        let v = h.get_ref().as_str();
        let key = match v.split_once(':') {
            None if v == "client_ip" => Some(HashKey::ClientIp),
            Some(("header", name)) if is_token(name) => {
                Some(HashKey::Header(name.to_ascii_lowercase()))
            }
            Some(("cookie", name)) if is_token(name) => Some(HashKey::Cookie(name.to_owned())),
            _ => None,
        };
        key.unwrap_or_else(|| {
            self.error_hint(
                Some(h.span()),
                format!("invalid hash_on `{v}`"),
                "use \"client_ip\", \"header:NAME\" or \"cookie:NAME\"",
            );
            HashKey::ClientIp
        })
    }

    pub(super) fn instances(&mut self, raw: &[Spanned<RawInstance>]) -> Vec<InstanceConfig> {
        let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
        let mut out = Vec::new();
        for i in raw {
            let span = i.span();
            let inst = i.get_ref();
            let address = if inst.address.span() == (0..0) {
                Spanned::new(span.clone(), inst.address.get_ref().clone())
            } else {
                inst.address.clone()
            };
            let Some(addr) = self.upstream_addr(&address) else {
                continue;
            };
            if let Some(line) = seen.insert(addr, self.src.line_col(address.span().start).0) {
                self.error_hint(
                    Some(address.span()),
                    format!("instance {addr} is listed twice"),
                    format!("first listed on line {line}; raise its weight instead"),
                );
            }
            let weight = self.int_in(inst.weight.as_ref(), 1, 10_000, 1) as u32;
            out.push(InstanceConfig {
                address: addr,
                weight,
                check_address: inst
                    .check_address
                    .as_ref()
                    .and_then(|a| self.check_address(a)),
                check_port: inst
                    .check_port
                    .as_ref()
                    .map(|p| self.int_in(Some(p), 1, 65_535, 1) as u16),
            });
        }
        out
    }

    /// A check `address` (`[service.health]`) or an instance's `check_address`: an IP.
    pub(super) fn check_address(&mut self, a: &Spanned<String>) -> Option<std::net::IpAddr> {
        match a.get_ref().parse::<std::net::IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.error_hint(
                    Some(a.span()),
                    format!("invalid check address `{}`", a.get_ref()),
                    "use an IP address; omit it to probe the instance's own address",
                );
                None
            }
        }
    }

    pub(super) fn retries(&mut self, r: Option<&RawRetries>) -> RetryPolicy {
        let on_status = match r.and_then(|r| r.on_status.as_ref()) {
            None => d::RETRY_ON_STATUS.to_vec(),
            Some(list) => list
                .iter()
                .filter_map(|s| {
                    let v = *s.get_ref();
                    if (500..=599).contains(&v) {
                        Some(v as u16)
                    } else {
                        self.error_hint(
                            Some(s.span()),
                            format!("cannot retry on status {v}"),
                            "only 5xx statuses are retried",
                        );
                        None
                    }
                })
                .collect(),
        };
        let budget_ratio = match r.and_then(|r| r.budget_ratio.as_ref()) {
            None => d::RETRY_BUDGET_RATIO,
            Some(v) if (0.0..=1.0).contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                self.error_hint(
                    Some(v.span()),
                    format!("budget_ratio {} is out of range", v.get_ref()),
                    "use a fraction between 0.0 and 1.0, e.g. 0.2 for 20%",
                );
                d::RETRY_BUDGET_RATIO
            }
        };
        RetryPolicy {
            attempts: self.int_in(
                r.and_then(|r| r.attempts.as_ref()),
                0,
                10,
                i64::from(d::RETRY_ATTEMPTS),
            ) as u32,
            on_status,
            budget_ratio,
            budget_min_per_sec: self.int_in(
                r.and_then(|r| r.budget_min_per_sec.as_ref()),
                0,
                1_000_000,
                i64::from(d::RETRY_BUDGET_MIN_PER_SEC),
            ) as u32,
            buffer_bytes: self.int_in(
                r.and_then(|r| r.buffer_bytes.as_ref()),
                0,
                16 << 20,
                d::RETRY_BUFFER_BYTES as i64,
            ) as usize,
        }
    }

    pub(super) fn outlier(&mut self, o: Option<&RawOutlier>) -> OutlierConfig {
        let base = self.duration(
            o.and_then(|o| o.base_ejection.as_ref()),
            d::OUTLIER_BASE_EJECTION,
        );
        let max_raw = o.and_then(|o| o.max_ejection.as_ref());
        let max = self.duration(max_raw, d::OUTLIER_MAX_EJECTION);
        if max < base {
            self.error_hint(
                max_raw.map(Spanned::span),
                "max_ejection is shorter than base_ejection",
                "ejections start at base_ejection and double up to max_ejection",
            );
        }
        OutlierConfig {
            consecutive_failures: self.int_in(
                o.and_then(|o| o.consecutive_failures.as_ref()),
                0,
                1000,
                i64::from(d::OUTLIER_CONSECUTIVE_FAILURES),
            ) as u32,
            base_ejection: base,
            max_ejection: max.max(base),
            max_ejected_percent: self.int_in(
                o.and_then(|o| o.max_ejected_percent.as_ref()),
                0,
                100,
                i64::from(d::OUTLIER_MAX_EJECTED_PERCENT),
            ) as u8,
        }
    }
}
