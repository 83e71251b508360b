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
        AdminConfig { bind }
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
