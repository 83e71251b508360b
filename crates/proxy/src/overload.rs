//! Process-wide watermarks (`[overload]`): client connections across every listener, and the
//! process's resident memory. Near a watermark Sluice sheds keep-alive; past it, new work is
//! refused at once, so what was already admitted keeps the capacity to finish.
//!
//! | level | when | HTTP/1.x | HTTP/2 | TCP listeners |
//! |---|---|---|---|---|
//! | normal | below 90 % of every watermark | as configured | as configured | as configured |
//! | pressure | 90 % of one | each response closes its connection | GOAWAY: open streams finish, new ones go to a new connection | unchanged |
//! | over | past one | new requests get `503 overloaded` (and the connection closes) | the same, per stream | new connections are closed at once |
//!
//! Requests already being forwarded are never cut. The connection count is one atomic counter
//! moved once per connection; memory is sampled from `/proc/self/status` every
//! [`MEMORY_SAMPLE_EVERY`] by one task; a request reads a few atomics to learn the level.

use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;

use metrics::{Counter, Gauge, counter, gauge};
use sluice_config::OverloadConfig;

use crate::error::{ProxyError, ProxyErrorKind};
use crate::metrics::{OVERLOAD_LEVEL, OVERLOAD_REFUSED_TOTAL, PROCESS_RESIDENT_BYTES};

/// How often the process's resident memory is read while a memory watermark is set.
pub(crate) const MEMORY_SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// The fraction of a watermark at which keep-alive is shed (per mille).
const PRESSURE_PER_MILLE: u64 = 900;

/// How loaded the process is, from the worse of its watermarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    Normal = 0,
    /// Keep-alive is shed.
    Pressure = 1,
    /// New work is refused.
    Over = 2,
}

/// The process's watermarks and what they are compared with.
#[derive(Debug)]
pub(crate) struct Overload {
    /// 0 when unset.
    max_connections: AtomicUsize,
    /// Bytes; 0 when unset.
    max_memory: AtomicU64,
    connections: AtomicUsize,
    /// The latest sample, bytes.
    memory: AtomicU64,
    /// The level last reported in the gauge (to log changes once).
    reported: AtomicU8,
    metrics: OverloadMetrics,
}

#[derive(Debug)]
struct OverloadMetrics {
    level: Gauge,
    resident: Gauge,
    refused_connections: Counter,
    refused_memory: Counter,
}

/// One open client connection, counted until dropped.
#[derive(Debug)]
pub(crate) struct Counted(Arc<Overload>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Relaxed);
    }
}

impl Default for Overload {
    fn default() -> Self {
        let refused =
            |watermark: &'static str| counter!(OVERLOAD_REFUSED_TOTAL, "watermark" => watermark);
        Self {
            max_connections: AtomicUsize::new(0),
            max_memory: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
            memory: AtomicU64::new(0),
            reported: AtomicU8::new(Level::Normal as u8),
            metrics: OverloadMetrics {
                level: gauge!(OVERLOAD_LEVEL),
                resident: gauge!(PROCESS_RESIDENT_BYTES),
                refused_connections: refused("connections"),
                refused_memory: refused("memory"),
            },
        }
    }
}

impl Overload {
    /// Installs the watermarks of a (re)loaded configuration.
    pub(crate) fn configure(&self, config: &OverloadConfig) {
        self.max_connections
            .store(config.max_connections.unwrap_or(0), Relaxed);
        let bytes = config
            .max_memory_mb
            .map_or(0, |mb| mb.saturating_mul(1 << 20));
        self.max_memory.store(bytes, Relaxed);
    }

    /// Counts a client connection that was just accepted.
    pub(crate) fn open(self: &Arc<Self>) -> Counted {
        self.connections.fetch_add(1, Relaxed);
        Counted(Arc::clone(self))
    }

    /// The current level.
    pub(crate) fn level(&self) -> Level {
        let conns = level_of(
            self.connections.load(Relaxed) as u64,
            self.max_connections.load(Relaxed) as u64,
        );
        let memory = level_of(self.memory.load(Relaxed), self.max_memory.load(Relaxed));
        conns.max(memory)
    }

    /// Whether keep-alive is shed (pressure or worse).
    pub(crate) fn sheds_keep_alive(&self) -> bool {
        self.level() >= Level::Pressure
    }

    /// The `503` for new work when the process is past a watermark; counted.
    pub(crate) fn refusal(&self) -> Option<ProxyError> {
        let (conns, max_conns) = (
            self.connections.load(Relaxed),
            self.max_connections.load(Relaxed),
        );
        if level_of(conns as u64, max_conns as u64) == Level::Over {
            self.metrics.refused_connections.increment(1);
            return Some(ProxyError::new(
                ProxyErrorKind::Overloaded,
                format!(
                    "Sluice has {conns} client connections, past its max_connections of {max_conns}"
                ),
            ));
        }
        let (memory, max_memory) = (self.memory.load(Relaxed), self.max_memory.load(Relaxed));
        if level_of(memory, max_memory) == Level::Over {
            self.metrics.refused_memory.increment(1);
            return Some(ProxyError::new(
                ProxyErrorKind::Overloaded,
                format!(
                    "Sluice uses {} MiB of memory, past its max_memory_mb of {}",
                    memory >> 20,
                    max_memory >> 20
                ),
            ));
        }
        None
    }

    /// Whether a new TCP-listener connection is closed at once (past the connection
    /// watermark); counted.
    pub(crate) fn refuses_connection(&self) -> bool {
        let refused = self.level() == Level::Over;
        if refused {
            self.metrics.refused_connections.increment(1);
        }
        refused
    }

    /// Reads the resident memory and reports the level; returns the level.
    fn sample(&self) -> Level {
        if let Some(bytes) = resident_bytes() {
            self.memory.store(bytes, Relaxed);
            self.metrics.resident.set(bytes as f64);
        }
        let level = self.level();
        let before = self.reported.swap(level as u8, Relaxed);
        if before != level as u8 {
            self.metrics.level.set(f64::from(level as u8));
            tracing::warn!(
                level = ?level,
                connections = self.connections.load(Relaxed),
                resident_mib = self.memory.load(Relaxed) >> 20,
                "overload level changed"
            );
        }
        level
    }

    /// Samples memory and reports the level every [`MEMORY_SAMPLE_EVERY`] until the last
    /// `Arc` is gone.
    pub(crate) fn spawn_sampler(self: &Arc<Self>) {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(MEMORY_SAMPLE_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(overload) = weak.upgrade() else {
                    return;
                };
                overload.sample();
            }
        });
    }
}

/// The level of `value` against watermark `max` (0: no watermark): over once past it.
fn level_of(value: u64, max: u64) -> Level {
    if max == 0 {
        Level::Normal
    } else if value > max {
        Level::Over
    } else if value * 1000 >= max * PRESSURE_PER_MILLE {
        Level::Pressure
    } else {
        Level::Normal
    }
}

/// The process's resident set, from `/proc/self/status` (`VmRSS`, in kB).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_the_worse_watermark() {
        assert_eq!(level_of(5, 0), Level::Normal, "no watermark");
        assert_eq!(level_of(89, 100), Level::Normal);
        assert_eq!(level_of(90, 100), Level::Pressure);
        assert_eq!(
            level_of(100, 100),
            Level::Pressure,
            "at the watermark, not past it"
        );
        assert_eq!(level_of(101, 100), Level::Over);
        let o = Arc::new(Overload::default());
        o.configure(&OverloadConfig {
            max_connections: Some(10),
            max_memory_mb: None,
        });
        let held: Vec<Counted> = (0..10).map(|_| o.open()).collect();
        assert_eq!(o.level(), Level::Pressure);
        assert!(o.sheds_keep_alive());
        assert!(o.refusal().is_none());
        let eleventh = o.open();
        assert_eq!(o.level(), Level::Over);
        let err = o.refusal().expect("past the connection watermark");
        assert!(
            err.detail.contains("11 client connections"),
            "{}",
            err.detail
        );
        drop(eleventh);
        drop(held);
        assert_eq!(o.level(), Level::Normal);
    }

    #[test]
    fn memory_is_read_from_proc_and_compared_in_mib() {
        let o = Overload::default();
        let rss = resident_bytes().expect("VmRSS in /proc/self/status");
        assert!(rss > 1 << 20, "{rss}");
        o.configure(&OverloadConfig {
            max_connections: None,
            max_memory_mb: Some(1),
        });
        assert_eq!(
            o.sample(),
            Level::Over,
            "this test process uses more than 1 MiB"
        );
        assert!(o.refusal().unwrap().detail.contains("max_memory_mb of 1"));
        o.configure(&OverloadConfig {
            max_connections: None,
            max_memory_mb: Some(1 << 20),
        });
        assert_eq!(o.sample(), Level::Normal);
    }
}
