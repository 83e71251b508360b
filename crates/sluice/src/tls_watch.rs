//! Reloads the configuration when a TLS certificate, key or CA file changes on disk.
//!
//! Polled (size + modification time every [`INTERVAL`]) rather than inotify, for the same
//! reason as the sidecar's file sources: certificates usually live on bind mounts or Kubernetes
//! secret volumes that are swapped through symlinks, where inotify misses events. A change runs
//! the ordinary reload, so a half-written or mismatched pair is refused and the old
//! certificates keep serving until the files are consistent again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sluice_config::Config;

use crate::app::App;

/// How often the files are checked.
pub(crate) const INTERVAL: Duration = Duration::from_secs(2);

type Signature = Vec<(PathBuf, Option<(SystemTime, u64)>)>;

/// Every TLS file the configuration names.
fn tls_files(cfg: &Config) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for l in &cfg.listeners {
        if let Some(t) = &l.tls {
            for c in &t.certificates {
                files.push(c.cert.clone());
                files.push(c.key.clone());
            }
            files.extend(t.client_ca.clone());
        }
    }
    for s in &cfg.services {
        if let Some(t) = &s.tls {
            files.extend(t.ca.clone());
            if let Some(c) = &t.client {
                files.push(c.cert.clone());
                files.push(c.key.clone());
            }
        }
    }
    files.sort();
    files.dedup();
    files
}

fn signature(files: Vec<PathBuf>) -> Signature {
    files
        .into_iter()
        .map(|p| {
            // `metadata` follows symlinks: a swapped `..data` link shows as a change.
            let seen = std::fs::metadata(&p)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
            (p, seen)
        })
        .collect()
}

/// Watches until the task is aborted.
pub(crate) fn spawn(app: Arc<App>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = signature(tls_files(&app.proxy.config()));
        let mut tick = tokio::time::interval(INTERVAL);
        loop {
            tick.tick().await;
            let now = signature(tls_files(&app.proxy.config()));
            let same_files =
                now.len() == last.len() && now.iter().zip(&last).all(|((a, _), (b, _))| a == b);
            if same_files && now != last {
                tracing::info!("a TLS certificate, key or CA file changed: reloading");
                let _ = app.reload(crate::reloads::Trigger::CertificateChange).await;
            }
            last = now;
        }
    })
}
