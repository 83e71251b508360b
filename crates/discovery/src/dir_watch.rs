//! Event-driven re-reads of a `file` source's directory: inotify (through `notify`) wakes the
//! source's poll as soon as something in the directory changed, once the writes have settled.
//!
//! The poll itself stays (`sluice_kv`'s file watch, at the slow `safety_poll` interval) because
//! inotify is not a complete answer: it sees nothing on NFS and on some bind mounts or FUSE
//! filesystems, its queue can overflow (notify then reports a rescan, which wakes the poll
//! too, but events may already be lost), and a directory that is removed and recreated — or a
//! symlink that is swapped — leaves the watch on the old inode. The last case is repaired here:
//! every `safety_poll` the directory's identity is checked and the watch re-armed when it
//! moved. While no watch can be armed at all (directory missing, inotify limits reached), this
//! task wakes the poll every `poll_interval`, so the source behaves as a plain polling one.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Quiet time after the last event before the directory is re-read: a file written in place
/// arrives as several modify events; re-reading after the first could see half of it.
pub const EVENT_DEBOUNCE: Duration = Duration::from_millis(20);
/// Longest wait under a continuous stream of events, so a busy directory is still re-read.
pub const EVENT_MAX_DELAY: Duration = Duration::from_millis(250);

/// Timings of one directory watch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DirWatchTimings {
    /// How often the poll runs while no inotify watch is armed.
    pub(crate) poll_interval: Duration,
    /// How often the armed watch checks that the directory is still the one it watches.
    pub(crate) safety_poll: Duration,
}

/// A running directory watch; dropping it stops it.
#[derive(Debug)]
pub(crate) struct DirWatch {
    task: JoinHandle<()>,
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The inotify watch of a directory and what it was armed on.
struct Armed {
    _watcher: notify::RecommendedWatcher,
    identity: (u64, u64),
}

/// Starts watching `dir` on the current runtime; `wake` is notified after each settled burst of
/// changes. Never fails: a directory that cannot be watched yet is retried (and polled).
pub(crate) fn start(
    source: &str,
    dir: PathBuf,
    timings: DirWatchTimings,
    wake: Arc<Notify>,
) -> DirWatch {
    let source = source.to_owned();
    let task = tokio::spawn(async move {
        // Set from notify's own thread; one stored permit is all "something changed" needs.
        let raw = Arc::new(Notify::new());
        let mut armed = arm(&source, &dir, &raw, true);
        loop {
            let tick = if armed.is_some() {
                timings.safety_poll
            } else {
                timings.poll_interval
            };
            tokio::select! {
                () = raw.notified() => {
                    settle(&raw).await;
                    wake.notify_one();
                }
                () = tokio::time::sleep(tick) => {
                    let moved = armed.as_ref().is_some_and(|a| identity(&dir) != Some(a.identity));
                    if armed.is_none() || moved {
                        if moved {
                            tracing::info!(source = %source, dir = %dir.display(), "registry directory replaced: watching the new one");
                        }
                        armed = arm(&source, &dir, &raw, armed.is_some());
                        wake.notify_one();
                    }
                }
            }
        }
    });
    DirWatch { task }
}

/// Waits until no event came for [`EVENT_DEBOUNCE`], or [`EVENT_MAX_DELAY`] passed.
async fn settle(raw: &Notify) {
    let deadline = tokio::time::Instant::now() + EVENT_MAX_DELAY;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return;
        }
        if tokio::time::timeout(EVENT_DEBOUNCE.min(left), raw.notified())
            .await
            .is_err()
        {
            return;
        }
    }
}

fn identity(dir: &Path) -> Option<(u64, u64)> {
    // Follows symlinks, as inotify does when adding the watch.
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

/// Arms an inotify watch on `dir`; `None` (logged when `report`) when it cannot be.
fn arm(source: &str, dir: &Path, raw: &Arc<Notify>, report: bool) -> Option<Armed> {
    let identity = identity(dir)?;
    let events = Arc::clone(raw);
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reads (ours included: the poll opens the directory and changed files) are not
        // changes; acting on them would re-read in a loop. Errors and rescans (queue
        // overflow) may hide changes, so they wake the poll.
        if !matches!(&event, Ok(e) if e.kind.is_access()) {
            events.notify_one();
        }
    })
    .and_then(|mut watcher| {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        Ok(watcher)
    });
    match watcher {
        Ok(watcher) => {
            tracing::debug!(source = %source, dir = %dir.display(), "registry directory watched (inotify)");
            Some(Armed {
                _watcher: watcher,
                identity,
            })
        }
        Err(error) => {
            if report {
                tracing::warn!(source = %source, dir = %dir.display(), %error, "registry directory cannot be watched with inotify; polling it instead");
            }
            None
        }
    }
}
