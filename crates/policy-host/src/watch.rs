//! Reloads policies when their files change on disk.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::host::PolicyHost;

/// Why the watcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The OS watcher refused.
    #[error("cannot watch {path}: {source}")]
    Notify {
        /// The folder.
        path: PathBuf,
        /// The watcher's error.
        source: notify::Error,
    },
    /// The reload thread could not start.
    #[error("cannot start the policy watcher thread: {0}")]
    Thread(std::io::Error),
}

/// Watches the folders of the policies' files; a change to one of them (written in place or
/// renamed over it, as editors and `cp` do) triggers [`PolicyHost::reload`] once things have
/// been quiet for `debounce`. Dropping it stops watching. It watches the files configured when
/// it started: after [`PolicyHost::apply_config`] changes the set of files, start a new one.
pub struct PolicyWatcher {
    _watcher: notify::RecommendedWatcher,
    folders: Vec<PathBuf>,
}

impl std::fmt::Debug for PolicyWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyWatcher")
            .field("folders", &self.folders)
            .finish()
    }
}

impl PolicyWatcher {
    /// Starts watching `host`'s policy files.
    pub fn start(host: &Arc<PolicyHost>, debounce: Duration) -> Result<PolicyWatcher, WatchError> {
        let files: BTreeSet<PathBuf> = host.files().iter().map(|f| absolute(f)).collect();
        let folders: BTreeSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        let (events, receiver) = mpsc::channel::<notify::Result<notify::Event>>();
        let mut watcher = notify::recommended_watcher(move |event| {
            // The receiving thread only stops when this sender is dropped with the watcher.
            let _ = events.send(event);
        })
        .map_err(|source| WatchError::Notify {
            path: PathBuf::new(),
            source,
        })?;
        for folder in &folders {
            watcher
                .watch(folder, RecursiveMode::NonRecursive)
                .map_err(|source| WatchError::Notify {
                    path: folder.clone(),
                    source,
                })?;
        }
        let host: Weak<PolicyHost> = Arc::downgrade(host);
        std::thread::Builder::new()
            .name("sluice-policy-watch".into())
            .spawn(move || watch_loop(&receiver, &files, &host, debounce))
            .map_err(WatchError::Thread)?;
        Ok(PolicyWatcher {
            _watcher: watcher,
            folders: folders.into_iter().collect(),
        })
    }
}

fn watch_loop(
    receiver: &mpsc::Receiver<notify::Result<notify::Event>>,
    files: &BTreeSet<PathBuf>,
    host: &Weak<PolicyHost>,
    debounce: Duration,
) {
    let concerns_us = |event: &notify::Result<notify::Event>| match event {
        Ok(event) => {
            !event.kind.is_access() && event.paths.iter().any(|p| files.contains(&absolute(p)))
        }
        Err(_) => false,
    };
    while let Ok(event) = receiver.recv() {
        if !concerns_us(&event) {
            continue;
        }
        // Wait for the writer to finish: reload once nothing happened for `debounce`.
        loop {
            match receiver.recv_timeout(debounce) {
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        let Some(host) = host.upgrade() else { return };
        let report = host.reload();
        for (name, error) in report.rejected() {
            tracing::warn!(policy = name, "reload after file change rejected: {error}");
        }
    }
}

/// The path with its folder resolved (symlinks, `..`), so events and config paths compare.
fn absolute(path: &Path) -> PathBuf {
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let folder = folder
        .canonicalize()
        .unwrap_or_else(|_| folder.to_path_buf());
    match path.file_name() {
        Some(name) => folder.join(name),
        None => folder,
    }
}
