//! Collects what guests log through `host::log` while a closure runs on this thread, for
//! `sluice policy check` and `sluice policy test` to show.
//!
//! The host forwards guest log lines to `tracing` (target `sluice::policy`); `configure` and the
//! calls these commands make run on the calling thread, so a thread-scoped subscriber sees
//! exactly their lines without the host knowing it is being watched.

use std::fmt;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

/// The `tracing` target of guest log lines (see `engine.rs`).
const GUEST_TARGET: &str = "sluice::policy";

/// One line a guest logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestLogLine {
    /// `TRACE` … `ERROR`.
    pub level: Level,
    /// The message, as the host kept it (cut at 1 KiB).
    pub message: String,
}

impl fmt::Display for GuestLogLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<5} {}", self.level, self.message)
    }
}

/// Runs `work`, returning its result and the guest log lines emitted on this thread meanwhile.
pub(crate) fn capture<R>(work: impl FnOnce() -> R) -> (R, Vec<GuestLogLine>) {
    let collector = Collector::default();
    let lines = Arc::clone(&collector.lines);
    let result = tracing::subscriber::with_default(collector, work);
    let lines = std::mem::take(&mut *lines.lock().unwrap_or_else(|p| p.into_inner()));
    (result, lines)
}

#[derive(Default)]
struct Collector {
    lines: Arc<Mutex<Vec<GuestLogLine>>>,
}

impl Subscriber for Collector {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if metadata.target() == GUEST_TARGET {
            Interest::always()
        } else {
            Interest::sometimes()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target() == GUEST_TARGET
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut message = MessageField(String::new());
        event.record(&mut message);
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(GuestLogLine {
                level: *event.metadata().level(),
                message: message.0,
            });
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

struct MessageField(String);

impl Visit for MessageField {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            value.clone_into(&mut self.0);
        }
    }
}
