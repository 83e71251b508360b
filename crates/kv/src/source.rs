use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::etcd::EtcdClient;
use crate::file::{self, FileSource};
use crate::{KvEntry, KvError, WatchEvent};

/// Default interval between two polls of a file source.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Default interval at which an idle etcd watch proves the cluster still answers.
pub const DEFAULT_LIVENESS_INTERVAL: Duration = Duration::from_secs(10);

/// Jittered exponential backoff between retries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based): doubling from `initial`, capped at
    /// `max`, then scaled by a random factor in [0.5, 1) so many clients do not retry in step.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        base.mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}

/// Watch settings; every field has a default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WatchOptions {
    /// How often a `file` source is polled.
    pub poll_interval: Duration,
    /// Retry pacing after an error.
    pub backoff: Backoff,
    /// How often an idle etcd watch checks that the cluster still answers; a TCP connection to
    /// a frozen or partitioned server can otherwise stay silent forever.
    pub liveness_interval: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            poll_interval: DEFAULT_POLL_INTERVAL,
            backoff: Backoff::default(),
            liveness_interval: DEFAULT_LIVENESS_INTERVAL,
        }
    }
}

/// The process environment (or any fixed set of variables) as a KV source. Keys are variable
/// names. A process's environment cannot change from outside, so its watch sends one snapshot.
#[derive(Debug, Clone, Default)]
pub struct EnvSource {
    vars: BTreeMap<String, String>,
}

impl EnvSource {
    /// The current process environment; variables that are not UTF-8 are left out.
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        }
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    fn list(&self, prefix: &str) -> Vec<KvEntry> {
        self.vars
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| KvEntry::new(k.clone(), v.clone().into_bytes(), 1))
            .collect()
    }
}

/// An etcd cluster as a KV source.
#[derive(Debug, Clone)]
pub struct EtcdSource {
    pub client: Arc<EtcdClient>,
}

/// One KV source.
#[derive(Debug, Clone)]
pub enum KvSource {
    Env(EnvSource),
    /// A directory, or a `.toml`/`.json` document (see [`FileSource`]).
    File(PathBuf),
    Etcd(EtcdSource),
}

impl KvSource {
    /// What this source is, for messages: `env`, `file /etc/kv`, `etcd http://...`.
    pub fn describe(&self) -> String {
        match self {
            KvSource::Env(_) => "env".into(),
            KvSource::File(path) => format!("file {}", path.display()),
            KvSource::Etcd(source) => format!("etcd {}", source.client.describe()),
        }
    }

    /// The value of `key`, `None` when absent.
    pub async fn get(&self, key: &str) -> Result<Option<KvEntry>, KvError> {
        match self {
            KvSource::Env(env) => Ok(env
                .vars
                .get(key)
                .map(|v| KvEntry::new(key, v.clone().into_bytes(), 1))),
            KvSource::File(path) => {
                let map = FileSource::new(path.clone()).load()?;
                Ok(map.get(key).map(|v| KvEntry::new(key, v.clone(), 1)))
            }
            KvSource::Etcd(source) => source.client.get(key).await,
        }
    }

    /// Every key that starts with `prefix`, sorted by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<KvEntry>, KvError> {
        match self {
            KvSource::Env(env) => Ok(env.list(prefix)),
            KvSource::File(path) => {
                let map = FileSource::new(path.clone()).load()?;
                Ok(file::entries(&map, 1)
                    .into_iter()
                    .filter(|e| e.key.starts_with(prefix))
                    .collect())
            }
            KvSource::Etcd(source) => Ok(source.client.list(prefix).await?.entries),
        }
    }

    /// Starts watching every key under `prefix` on the current tokio runtime. See
    /// [`WatchEvent`] for what arrives; the watch stops when the [`KvWatch`] is dropped.
    pub fn watch(&self, prefix: &str, options: WatchOptions) -> KvWatch {
        self.watch_from(prefix, None, options)
    }

    /// Like [`KvSource::watch`], but for a consumer that already holds the state of `prefix` at
    /// etcd revision `after`: the watch starts with the changes after it instead of a snapshot
    /// (a snapshot still comes if that history was compacted). Other sources ignore `after`.
    pub fn watch_from(&self, prefix: &str, after: Option<i64>, options: WatchOptions) -> KvWatch {
        self.start_watch(prefix, after, options, None)
    }

    /// Like [`KvSource::watch`], but a `file` source also re-reads as soon as `wake` is
    /// notified, instead of only every `poll_interval`. The caller owns the change detection
    /// (e.g. inotify); the poll stays as the safety net for events that detection misses. A
    /// notification that arrives while a read is running is kept (`Notify` stores one
    /// permit), so a change made during a read is not lost. Other sources ignore `wake`.
    pub fn watch_woken(
        &self,
        prefix: &str,
        options: WatchOptions,
        wake: Arc<tokio::sync::Notify>,
    ) -> KvWatch {
        self.start_watch(prefix, None, options, Some(wake))
    }

    fn start_watch(
        &self,
        prefix: &str,
        after: Option<i64>,
        options: WatchOptions,
        wake: Option<Arc<tokio::sync::Notify>>,
    ) -> KvWatch {
        let (sender, receiver) = mpsc::channel(1024);
        let prefix = prefix.to_owned();
        let task = match self.clone() {
            KvSource::Env(env) => tokio::spawn(async move {
                let entries = env.list(&prefix);
                if sender
                    .send(WatchEvent::Snapshot {
                        entries,
                        revision: 1,
                    })
                    .await
                    .is_ok()
                {
                    // Keep the channel open: "no more changes" is not "the watch ended".
                    sender.closed().await;
                }
            }),
            KvSource::File(path) => tokio::spawn(watch_file(path, prefix, options, wake, sender)),
            KvSource::Etcd(source) => {
                tokio::spawn(watch_etcd(source.client, prefix, after, options, sender))
            }
        };
        KvWatch { receiver, task }
    }
}

/// A running watch. Dropping it stops the watch.
#[derive(Debug)]
pub struct KvWatch {
    receiver: mpsc::Receiver<WatchEvent>,
    task: JoinHandle<()>,
}

impl KvWatch {
    /// The next event; `None` only if the watch task ended (it does not on its own).
    pub async fn next(&mut self) -> Option<WatchEvent> {
        self.receiver.recv().await
    }
}

impl Drop for KvWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Tracks whether the consumer has been told the source is unavailable, so an outage is
/// reported once (or again when the reason changes), and its end once.
struct Availability {
    reported: Option<String>,
}

impl Availability {
    async fn down(&mut self, sender: &mpsc::Sender<WatchEvent>, error: KvError) -> bool {
        let text = error.to_string();
        if self.reported.as_deref() == Some(text.as_str()) {
            return true;
        }
        tracing::warn!(%error, "KV source unavailable; keeping the last known values");
        self.reported = Some(text);
        sender
            .send(WatchEvent::Unavailable {
                error: Arc::new(error),
            })
            .await
            .is_ok()
    }

    async fn up(&mut self, sender: &mpsc::Sender<WatchEvent>) -> bool {
        if self.reported.take().is_some() {
            tracing::info!("KV source available again");
            return sender.send(WatchEvent::Restored).await.is_ok();
        }
        true
    }
}

async fn watch_file(
    path: PathBuf,
    prefix: String,
    options: WatchOptions,
    wake: Option<Arc<tokio::sync::Notify>>,
    sender: mpsc::Sender<WatchEvent>,
) {
    let mut source = FileSource::new(path);
    let mut known: Option<BTreeMap<String, Vec<u8>>> = None;
    let mut revision = 0i64;
    let mut availability = Availability { reported: None };
    loop {
        match source.load() {
            Ok(mut map) => {
                map.retain(|k, _| k.starts_with(&prefix));
                if !availability.up(&sender).await {
                    return;
                }
                let events = match &known {
                    None => {
                        revision += 1;
                        vec![WatchEvent::Snapshot {
                            entries: file::entries(&map, revision),
                            revision,
                        }]
                    }
                    Some(old) => diff(old, &map, source.rewritten(), &mut revision),
                };
                for event in events {
                    if sender.send(event).await.is_err() {
                        return;
                    }
                }
                known = Some(map);
            }
            Err(error) => {
                if !availability.down(&sender, error).await {
                    return;
                }
            }
        }
        let woken = async {
            match &wake {
                Some(wake) => wake.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(options.poll_interval) => {}
            () = woken => {}
            _ = sender.closed() => return,
        }
    }
}

/// The events that take a file source from `old` to `new`. A key in `rewritten` (its file
/// written again with the same bytes) is put again too, with a new revision, as etcd does for a
/// key put with the value it had.
fn diff(
    old: &BTreeMap<String, Vec<u8>>,
    new: &BTreeMap<String, Vec<u8>>,
    rewritten: &[String],
    revision: &mut i64,
) -> Vec<WatchEvent> {
    let mut events = Vec::new();
    let put_again = |key: &String| rewritten.contains(key);
    let changed = new
        .iter()
        .any(|(k, v)| old.get(k) != Some(v) || put_again(k))
        || old.keys().any(|k| !new.contains_key(k));
    if !changed {
        return events;
    }
    *revision += 1;
    for (key, value) in new {
        if old.get(key) != Some(value) || put_again(key) {
            events.push(WatchEvent::Put(KvEntry::new(
                key.clone(),
                value.clone(),
                *revision,
            )));
        }
    }
    for key in old.keys().filter(|k| !new.contains_key(*k)) {
        events.push(WatchEvent::Delete {
            key: key.clone(),
            revision: *revision,
        });
    }
    events
}

async fn watch_etcd(
    client: Arc<EtcdClient>,
    prefix: String,
    after: Option<i64>,
    options: WatchOptions,
    sender: mpsc::Sender<WatchEvent>,
) {
    // `None`: the next step is a full read (first start, or after compaction).
    let mut next_revision: Option<i64> = after.map(|revision| revision + 1);
    let mut attempt = 0u32;
    let mut availability = Availability { reported: None };
    loop {
        if sender.is_closed() {
            return;
        }
        let start = match next_revision {
            Some(revision) => revision,
            None => match client.list(&prefix).await {
                Ok(range) => {
                    if !availability.up(&sender).await
                        || sender
                            .send(WatchEvent::Snapshot {
                                entries: range.entries,
                                revision: range.revision,
                            })
                            .await
                            .is_err()
                    {
                        return;
                    }
                    attempt = 0;
                    next_revision = Some(range.revision + 1);
                    range.revision + 1
                }
                Err(error) => {
                    if !availability.down(&sender, error).await {
                        return;
                    }
                    tokio::time::sleep(options.backoff.delay(attempt)).await;
                    attempt = attempt.saturating_add(1);
                    continue;
                }
            },
        };
        let failure = match client.watch(&prefix, start).await {
            Err(error) => error,
            Ok(mut stream) => {
                let mut liveness = tokio::time::interval(options.liveness_interval);
                liveness.tick().await;
                loop {
                    tokio::select! {
                        batch = stream.next() => match batch {
                            Ok(Some(batch)) => {
                                if let Some(compact_revision) = batch.compact_revision {
                                    tracing::warn!(requested = start, compact_revision, "watch revision compacted; reading the prefix again");
                                    next_revision = None;
                                    break KvError::Compacted { requested: start, compact_revision };
                                }
                                if batch.canceled {
                                    break KvError::Protocol {
                                        endpoint: client.describe(),
                                        detail: format!("watch cancelled: {}", batch.cancel_reason.unwrap_or_default()),
                                    };
                                }
                                if !availability.up(&sender).await {
                                    return;
                                }
                                attempt = 0;
                                for change in batch.events {
                                    next_revision = Some(change.revision() + 1);
                                    let event = match change {
                                        crate::etcd::WatchChange::Put(entry) => WatchEvent::Put(entry),
                                        crate::etcd::WatchChange::Delete { key, revision } => WatchEvent::Delete { key, revision },
                                    };
                                    if sender.send(event).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            Ok(None) => break KvError::Protocol {
                                endpoint: client.describe(),
                                detail: "watch stream closed by the server".into(),
                            },
                            Err(error) => break error,
                        },
                        _ = liveness.tick() => {
                            if let Err(error) = client.ping().await {
                                break error;
                            }
                        }
                        _ = sender.closed() => return,
                    }
                }
            }
        };
        if matches!(failure, KvError::Compacted { .. }) {
            continue;
        }
        if !availability.down(&sender, failure).await {
            return;
        }
        tokio::time::sleep(options.backoff.delay(attempt)).await;
        attempt = attempt.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        for attempt in 0..30 {
            let delay = backoff.delay(attempt);
            let base = Duration::from_millis(100)
                .saturating_mul(1 << attempt.min(20))
                .min(Duration::from_secs(2));
            assert!(delay >= base / 2 && delay <= base, "{attempt}: {delay:?}");
        }
    }

    #[test]
    fn diffs_list_puts_and_deletes_once() {
        let old: BTreeMap<_, _> = [
            ("a".to_owned(), b"1".to_vec()),
            ("b".to_owned(), b"2".to_vec()),
        ]
        .into();
        let new: BTreeMap<_, _> = [
            ("a".to_owned(), b"1".to_vec()),
            ("c".to_owned(), b"3".to_vec()),
        ]
        .into();
        let mut revision = 4;
        let events = diff(&old, &new, &[], &mut revision);
        assert_eq!(revision, 5);
        assert!(
            matches!(&events[..], [WatchEvent::Put(e), WatchEvent::Delete { key, .. }] if e.key == "c" && key == "b")
        );
        assert!(diff(&new, &new, &[], &mut revision).is_empty());
        assert_eq!(revision, 5);
        let again = diff(&new, &new, &["a".to_owned()], &mut revision);
        assert!(
            matches!(&again[..], [WatchEvent::Put(e)] if e.key == "a" && e.revision == 6),
            "a file written again with the same bytes is put again: {again:?}"
        );
    }

    #[test]
    fn a_file_written_again_with_the_same_bytes_is_put_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.json"), "{}").expect("write");
        let mut source = FileSource::new(dir.path());
        let first = source.load().expect("load");
        assert!(source.rewritten().is_empty());
        assert!(
            source.load().is_ok() && source.rewritten().is_empty(),
            "untouched"
        );
        // Replaced as registrants do (temporary + rename): a new inode, the same bytes.
        std::fs::write(dir.path().join(".a.json.tmp"), "{}").expect("write");
        std::fs::rename(dir.path().join(".a.json.tmp"), dir.path().join("a.json")).expect("rename");
        let second = source.load().expect("load");
        assert_eq!(first, second);
        assert_eq!(source.rewritten(), ["a.json"]);
    }
}
