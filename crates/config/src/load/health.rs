//! `[service.health]`: active health checks.

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::Cx;
use crate::defaults as d;
use crate::model::*;
use crate::raw::*;

impl Cx<'_> {
    pub(super) fn health(&mut self, raw: &Spanned<RawHealth>) -> Option<HealthCheckConfig> {
        let h = raw.get_ref();
        let Some(kind_raw) = &h.kind else {
            self.error_hint(
                Some(raw.span()),
                "health check has no `kind`",
                "add kind = \"http\", \"tcp\", \"command\" or \"grpc\"",
            );
            return None;
        };
        let kind = match kind_raw.get_ref().as_str() {
            "http" => self.http_check(h),
            "tcp" => CheckKind::Tcp {
                send: h.send.as_ref().map(|v| v.get_ref().clone()),
                expect: h.expect.as_ref().map(|v| v.get_ref().clone()),
            },
            "command" => self.command_check(raw),
            "grpc" => self.grpc_check(h),
            _ => {
                self.bad_choice(kind_raw, "health check kind", KINDS);
                return None;
            }
        };
        self.misplaced_fields(h, kind_raw.get_ref());
        let interval = self.duration(h.interval.as_ref(), d::HEALTH_INTERVAL);
        let timeout = self.duration(h.timeout.as_ref(), d::HEALTH_TIMEOUT);
        if let Some(t) = h.timeout.as_ref().filter(|_| timeout > interval) {
            self.error_hint(
                Some(t.span()),
                "health check timeout is longer than its interval",
                "probes of one instance never overlap: make timeout ≤ interval",
            );
        }
        let address = h.address.as_ref().and_then(|a| self.check_address(a));
        if let Some(p) = &h.policy {
            self.health_policy_refs.push(p.clone());
        }
        Some(HealthCheckConfig {
            kind,
            interval,
            timeout,
            rise: self.threshold(h.rise.as_ref(), d::HEALTH_RISE),
            fall: self.threshold(h.fall.as_ref(), d::HEALTH_FALL),
            jitter: h.jitter.as_ref().map_or(interval / 10, |j| {
                humantime::parse_duration(j.get_ref()).unwrap_or_else(|e| {
                    self.error_hint(
                        Some(j.span()),
                        format!("invalid duration `{}`: {e}", j.get_ref()),
                        "e.g. \"100ms\"; \"0s\" turns jitter off",
                    );
                    Duration::ZERO
                })
            }),
            address,
            port: h
                .port
                .as_ref()
                .map(|p| self.int_in(Some(p), 1, 65_535, 1) as u16),
            policy: h.policy.as_ref().map(|p| p.get_ref().clone()),
            body_bytes: self.int_in(
                h.body_bytes.as_ref(),
                0,
                1 << 20,
                d::HEALTH_BODY_BYTES as i64,
            ) as usize,
        })
    }

    /// `rise` or `fall`, within [`d::HEALTH_THRESHOLDS`].
    fn threshold(&mut self, raw: Option<&Spanned<i64>>, default: u32) -> u32 {
        let (low, high) = (d::HEALTH_THRESHOLDS.start(), d::HEALTH_THRESHOLDS.end());
        self.int_in(raw, i64::from(*low), i64::from(*high), i64::from(default)) as u32
    }

    /// Reports every key given that belongs to another kind than `kind`.
    fn misplaced_fields(&mut self, h: &RawHealth, kind: &str) {
        for (applies, fields) in kind_only_fields(h) {
            if applies == kind {
                continue;
            }
            for (key, span) in fields {
                if span.is_some() {
                    self.error_hint(
                        span,
                        format!("`{key}` only applies to kind = \"{applies}\""),
                        "remove it, or change the check's kind",
                    );
                }
            }
        }
    }

    /// The `kind = "command"` part of a check.
    fn command_check(&mut self, raw: &Spanned<RawHealth>) -> CheckKind {
        let args: Vec<String> = raw
            .get_ref()
            .args
            .iter()
            .flatten()
            .map(|a| a.get_ref().clone())
            .collect();
        if args.first().is_none_or(String::is_empty) {
            self.error_hint(
                Some(raw.span()),
                "a command check needs `args`",
                "e.g. args = [\"/usr/local/bin/is-primary\", \"{address}\", \"{port}\"]",
            );
        }
        CheckKind::Command { args }
    }

    /// The `kind = "grpc"` part of a check: `grpc_service`, `""` (the whole server) when absent.
    fn grpc_check(&mut self, h: &RawHealth) -> CheckKind {
        let Some(service) = &h.grpc_service else {
            return CheckKind::grpc("");
        };
        if let Err(e) = crate::construct::check_grpc_service(service.get_ref()) {
            self.error_hint(
                Some(service.span()),
                e.to_string(),
                "use the fully qualified name the server registers, e.g. \"package.Service\", \
                 or leave grpc_service out to ask about the whole server",
            );
        }
        CheckKind::grpc(service.get_ref())
    }

    /// The `kind = "http"` part of a check.
    fn http_check(&mut self, h: &RawHealth) -> CheckKind {
        let path = h.path.as_ref().map_or_else(
            || "/".to_owned(),
            |p| {
                self.check_path(p, "path");
                p.get_ref().clone()
            },
        );
        let method = h.method.as_ref().map_or_else(
            || "GET".to_owned(),
            |m| {
                let v = m.get_ref().to_ascii_uppercase();
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_uppercase()) {
                    self.error_hint(
                        Some(m.span()),
                        format!("invalid method `{}`", m.get_ref()),
                        "e.g. \"GET\" or \"HEAD\"",
                    );
                }
                v
            },
        );
        let expect_status = match &h.expect_status {
            None => vec![(200, 399)],
            Some(list) => list.iter().filter_map(|v| self.status_range(v)).collect(),
        };
        CheckKind::Http {
            method,
            path,
            host: h.host.as_ref().map(|v| v.get_ref().clone()),
            expect_status,
            expect_body: h.expect_body.as_ref().map(|v| v.get_ref().clone()),
        }
    }

    /// `200`, `"200"`, `"200-299"` or `"2xx"`.
    pub(super) fn status_range(&mut self, v: &Spanned<toml::Value>) -> Option<(u16, u16)> {
        let parsed = match v.get_ref() {
            toml::Value::Integer(n) => u16::try_from(*n).ok().map(|n| (n, n)),
            toml::Value::String(s) => {
                let s = s.trim();
                if let Some(class) = s.strip_suffix("xx").and_then(|c| c.parse::<u16>().ok()) {
                    Some((class * 100, class * 100 + 99))
                } else if let Some((a, b)) = s.split_once('-') {
                    a.trim().parse().ok().zip(b.trim().parse().ok())
                } else {
                    s.parse().ok().map(|n| (n, n))
                }
            }
            _ => None,
        };
        match parsed {
            Some((a, b)) if (100..=599).contains(&a) && (a..=599).contains(&b) => Some((a, b)),
            _ => {
                self.error_hint(
                    Some(v.span()),
                    format!("invalid expected status `{}`", v.get_ref()),
                    "use 200, \"200-299\" or \"2xx\"",
                );
                None
            }
        }
    }
}

/// The kinds of check, as `kind` names them.
const KINDS: &[&str] = &["http", "tcp", "command", "grpc"];

/// A key given in a check and where: `None` when absent.
type Given = (&'static str, Option<Range<usize>>);

/// The keys that belong to one kind only, by kind: any of them given with another kind is an
/// error (a check that silently ignored `path` would probe something else than meant).
fn kind_only_fields(h: &RawHealth) -> [(&'static str, Vec<Given>); 4] {
    let span = |v: Option<&Spanned<String>>| v.map(Spanned::span);
    [
        (
            "http",
            vec![
                ("method", span(h.method.as_ref())),
                ("path", span(h.path.as_ref())),
                ("host", span(h.host.as_ref())),
                (
                    "expect_status",
                    h.expect_status
                        .as_ref()
                        .and_then(|v| v.first())
                        .map(Spanned::span),
                ),
                ("expect_body", span(h.expect_body.as_ref())),
            ],
        ),
        (
            "tcp",
            vec![
                ("send", span(h.send.as_ref())),
                ("expect", span(h.expect.as_ref())),
            ],
        ),
        (
            "command",
            vec![(
                "args",
                h.args.as_ref().and_then(|v| v.first()).map(Spanned::span),
            )],
        ),
        (
            "grpc",
            vec![("grpc_service", span(h.grpc_service.as_ref()))],
        ),
    ]
}
