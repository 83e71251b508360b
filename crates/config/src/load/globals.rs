//! The single-table sections: `[admin]`, `[runtime]`, `[log]`, `[access_log]`.

use toml::Spanned;

use super::{Cx, default_admin_bind};
use crate::defaults as d;
use crate::model::*;
use crate::raw::*;

impl Cx<'_> {
    pub(super) fn admin(&mut self, raw: RawAdmin) -> AdminConfig {
        let bind = match &raw.bind {
            Some(b) => self.socket_addr(b).unwrap_or_else(default_admin_bind),
            None => default_admin_bind(),
        };
        let admin = AdminConfig {
            bind,
            tokens_file: raw.tokens_file.as_ref().map(|f| self.readable_file(f)),
            token_env: raw.token_env.as_ref().and_then(|v| self.env_name(v)),
            read_token_env: raw.read_token_env.as_ref().and_then(|v| self.env_name(v)),
            insecure: raw.insecure.as_ref().is_some_and(|v| *v.get_ref()),
            tls: raw.tls.as_ref().and_then(|t| self.admin_tls(t)),
        };
        if let Some(b) = &raw.bind
            && !bind.ip().is_loopback()
            && !admin.authenticates()
            && !admin.insecure
        {
            self.error_hint(
                Some(b.span()),
                format!("the admin API on {bind} would let anyone who reaches it reload the proxy"),
                "set tokens_file or token_env (bearer tokens) or [admin.tls] client_ca (client certificates), bind a loopback address, or set insecure = true to serve it open",
            );
        }
        admin
    }

    /// `[admin.tls]`: `cert` and `key` required; `client_scope` defaults to `read`.
    fn admin_tls(&mut self, raw: &Spanned<RawAdminTls>) -> Option<AdminTlsConfig> {
        let t = raw.get_ref();
        let (Some(cert), Some(key)) = (&t.cert, &t.key) else {
            self.error_hint(
                Some(raw.span()),
                "[admin.tls] needs `cert` and `key`",
                "the admin listener's certificate: cert = \"admin.pem\", key = \"admin.key\"",
            );
            return None;
        };
        Some(AdminTlsConfig {
            cert: self.readable_file(cert),
            key: self.readable_file(key),
            client_ca: t.client_ca.as_ref().map(|v| self.readable_file(v)),
            client_scope: self.choice(
                t.client_scope.as_ref(),
                "client_scope",
                &[("read", AdminScope::Read), ("admin", AdminScope::Admin)],
            ),
        })
    }

    /// The name of an environment variable (`token_env`, `read_token_env`).
    fn env_name(&mut self, v: &Spanned<String>) -> Option<String> {
        let name = v.get_ref();
        if name.is_empty() || name.contains(['=', '\0']) {
            self.error_hint(
                Some(v.span()),
                format!("`{name}` is not an environment variable name"),
                "e.g. token_env = \"SLUICE_ADMIN_TOKEN\"",
            );
            return None;
        }
        Some(name.clone())
    }

    pub(super) fn runtime(&mut self, raw: RawRuntime) -> RuntimeConfig {
        RuntimeConfig {
            worker_threads: self.int_in(
                raw.worker_threads.as_ref(),
                0,
                1024,
                d::WORKER_THREADS as i64,
            ) as usize,
            shutdown_grace: self.duration(raw.shutdown_grace.as_ref(), d::SHUTDOWN_GRACE),
            policy_cache: match raw.policy_cache {
                None => d::policy_cache(),
                Some(folder) if folder.get_ref().is_empty() => None,
                Some(folder) => {
                    let path = std::path::Path::new(folder.get_ref());
                    Some(match self.src.path().parent() {
                        Some(base) if path.is_relative() => base.join(path),
                        _ => path.to_owned(),
                    })
                }
            },
        }
    }

    /// `[overload]`: both watermarks optional.
    pub(super) fn overload(&mut self, raw: RawOverload) -> OverloadConfig {
        OverloadConfig {
            max_connections: raw
                .max_connections
                .as_ref()
                .map(|v| self.int_in(Some(v), 1, 100_000_000, 1) as usize),
            max_memory_mb: raw
                .max_memory_mb
                .as_ref()
                .map(|v| self.int_in(Some(v), 16, 16 << 20, 16) as u64),
        }
    }

    pub(super) fn log(&mut self, raw: RawLog) -> LogConfig {
        let format = self.choice(
            raw.format.as_ref(),
            "log format",
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        );
        LogConfig {
            level: raw
                .level
                .map_or_else(|| d::LOG_LEVEL.to_owned(), Spanned::into_inner),
            format,
        }
    }

    pub(super) fn access_log(&mut self, raw: RawAccessLog) -> AccessLogConfig {
        let target = match raw.path.as_ref().map(|p| p.get_ref().as_str()) {
            None | Some("stdout") => AccessLogTarget::Stdout,
            Some("off") => AccessLogTarget::Off,
            Some("") => {
                self.error_hint(
                    raw.path.as_ref().map(Spanned::span),
                    "access log path is empty",
                    "use \"stdout\", \"off\" or a file path",
                );
                AccessLogTarget::Off
            }
            Some(p) => AccessLogTarget::File(p.into()),
        };
        let format = self.choice(
            raw.format.as_ref(),
            "access log format",
            &[
                ("json", AccessLogFormat::Json),
                ("combined", AccessLogFormat::Combined),
            ],
        );
        AccessLogConfig {
            target,
            format,
            buffer_lines: self.int_in(
                raw.buffer_lines.as_ref(),
                16,
                1 << 24,
                d::ACCESS_LOG_BUFFER_LINES as i64,
            ) as usize,
        }
    }
}
