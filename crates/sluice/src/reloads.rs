//! The reload history behind `GET /api/reloads`: the last [`KEPT`] configuration reloads, what
//! started each one and how it ended, so an operator can see why the running configuration is
//! not the file on disk without searching the log.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

/// How many reloads are remembered; older ones are dropped first.
pub(crate) const KEPT: usize = 20;

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Trigger {
    /// SIGHUP.
    Signal,
    /// `POST /api/reload`.
    Api,
    /// A TLS certificate, key or CA file changed on disk (tls_watch.rs).
    CertificateChange,
}

/// How a reload ended: `ok`, `invalid` (refused, nothing changed) or `failed`.
pub(crate) type Outcome = &'static str;

/// One reload, as `GET /api/reloads` shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ReloadRecord {
    /// When it finished, RFC 3339 in UTC.
    pub(crate) time: String,
    pub(crate) trigger: Trigger,
    pub(crate) result: Outcome,
    /// Why it was refused or failed (every diagnostic of an invalid file).
    pub(crate) error: Option<String>,
}

/// The last reloads, oldest first.
#[derive(Debug, Default)]
pub(crate) struct ReloadHistory {
    records: Mutex<VecDeque<ReloadRecord>>,
}

impl ReloadHistory {
    /// Remembers a reload that just finished, dropping the oldest past [`KEPT`].
    pub(crate) fn record(&self, trigger: Trigger, result: Outcome, error: Option<String>) {
        let record = ReloadRecord {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            trigger,
            result,
            error,
        };
        if let Ok(mut records) = self.records.lock() {
            if records.len() == KEPT {
                records.pop_front();
            }
            records.push_back(record);
        }
    }

    /// Every remembered reload, newest first (what an operator looks for).
    pub(crate) fn newest_first(&self) -> Vec<ReloadRecord> {
        self.records
            .lock()
            .map(|r| r.iter().rev().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_twenty_newest_first() {
        let history = ReloadHistory::default();
        for i in 0..(KEPT + 5) {
            history.record(Trigger::Api, "invalid", Some(format!("error {i}")));
        }
        history.record(Trigger::Signal, "ok", None);
        let records = history.newest_first();
        assert_eq!(records.len(), KEPT);
        assert_eq!(records[0].trigger, Trigger::Signal);
        assert_eq!(records[0].error, None);
        assert_eq!(records[1].error.as_deref(), Some("error 24"));
        assert_eq!(records[KEPT - 1].error.as_deref(), Some("error 6"));
        assert!(records[0].time.ends_with('Z'), "{}", records[0].time);
    }
}
