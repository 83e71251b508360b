//! Keeps the registry in the state the supervisor wants: this instance's definition present
//! (file `<dir>/<id>.json`, or etcd key `<prefix><name>/<id>` on a lease kept alive), moved
//! atomically when the role changes its name, absent after deregistration. Failures are
//! retried; the last wanted state is what gets applied.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sluice_kv::registry::{self, ServiceDefinition};
use sluice_kv::{EtcdClient, EtcdOptions, KvError};
use tokio::sync::{mpsc, oneshot};

use crate::config::{RegistryConfig, RegistryKindConfig};
use crate::reaper::Reaper;
use crate::write::{WriteSpec, write_atomically};

/// Retry pacing for a registry that refused a write.
const RETRY_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug)]
enum Command {
    Set(Option<Box<ServiceDefinition>>),
    Deregister(oneshot::Sender<()>),
}

/// Why the registrar cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RegistrarStartError {
    /// A file registry without its directory.
    #[error("a file registry needs `dir`")]
    NoDir,
    /// The etcd client cannot be made (an invalid endpoint).
    #[error(transparent)]
    EtcdClient(#[from] KvError),
}

/// Handle to the registrar task.
#[derive(Debug, Clone)]
pub struct Registrar {
    commands: mpsc::UnboundedSender<Command>,
}

#[derive(Debug)]
enum Backend {
    File {
        dir: PathBuf,
    },
    Etcd {
        client: Arc<EtcdClient>,
        prefix: String,
        ttl: Duration,
    },
}

impl Registrar {
    /// Starts the registrar task for `config` (paths already resolved by the caller).
    pub fn start(
        config: &RegistryConfig,
        dir: Option<PathBuf>,
        reaper: Reaper,
    ) -> Result<Self, RegistrarStartError> {
        let backend = match config.kind {
            RegistryKindConfig::File => Backend::File {
                dir: dir.ok_or(RegistrarStartError::NoDir)?,
            },
            RegistryKindConfig::Etcd => Backend::Etcd {
                client: Arc::new(EtcdClient::new(&config.endpoints, EtcdOptions::default())?),
                prefix: config.prefix.clone(),
                ttl: config.ttl.0,
            },
        };
        let (commands, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(backend, receiver, reaper));
        Ok(Self { commands })
    }

    /// Registers `definition` (replacing any previous one), or deregisters with `None`.
    pub fn set(&self, definition: Option<ServiceDefinition>) {
        let _ = self.commands.send(Command::Set(definition.map(Box::new)));
    }

    /// Deregisters and waits until the registry confirmed it, at most `timeout`.
    pub async fn deregister(&self, timeout: Duration) -> bool {
        let (done, wait) = oneshot::channel();
        if self.commands.send(Command::Deregister(done)).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(timeout, wait).await, Ok(Ok(())))
    }
}

#[derive(Debug, Default)]
struct EtcdState {
    lease: Option<i64>,
    key: Option<String>,
}

async fn run(backend: Backend, mut commands: mpsc::UnboundedReceiver<Command>, reaper: Reaper) {
    let mut wanted: Option<ServiceDefinition> = None;
    let mut applied: Option<ServiceDefinition> = None;
    let mut in_sync = true;
    let mut etcd = EtcdState::default();
    let mut file_written: Option<PathBuf> = None;
    let heartbeat = match &backend {
        Backend::Etcd { ttl, .. } => (*ttl / 3).max(Duration::from_millis(300)),
        Backend::File { .. } => RETRY_INTERVAL,
    };
    let mut ticker = tokio::time::interval(heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut acknowledge = None;
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Set(definition)) => {
                    wanted = definition.map(|d| *d);
                    in_sync = wanted == applied;
                }
                Some(Command::Deregister(done)) => {
                    wanted = None;
                    in_sync = false;
                    acknowledge = Some(done);
                }
                None => return,
            },
            _ = ticker.tick() => {
                // etcd: keep the lease alive; re-register if it was lost.
                if let (Backend::Etcd { client, .. }, Some(lease)) = (&backend, etcd.lease) {
                    match client.lease_keepalive(lease).await {
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            tracing::warn!(lease, "registration lease expired; registering again");
                            etcd = EtcdState::default();
                            applied = None;
                            in_sync = wanted.is_none();
                        }
                        Err(error) => tracing::warn!(%error, "registration heartbeat failed; retrying"),
                    }
                }
            }
        }
        if !in_sync {
            let result = match &backend {
                Backend::File { dir } => {
                    apply_file(dir, wanted.as_ref(), &mut file_written, &reaper).await
                }
                Backend::Etcd {
                    client,
                    prefix,
                    ttl,
                } => apply_etcd(client, prefix, *ttl, wanted.as_ref(), &mut etcd).await,
            };
            match result {
                Ok(()) => {
                    match &wanted {
                        Some(definition) => {
                            tracing::info!(service = %definition.name, id = definition.instance_id(), "registered")
                        }
                        None if applied.is_some() => tracing::info!("deregistered"),
                        None => {}
                    }
                    applied = wanted.clone();
                    in_sync = true;
                }
                Err(error) => tracing::warn!(%error, "registry update failed; will retry"),
            }
        }
        if let Some(done) = acknowledge
            && in_sync
        {
            let _ = done.send(());
        }
    }
}

async fn apply_file(
    dir: &std::path::Path,
    wanted: Option<&ServiceDefinition>,
    written: &mut Option<PathBuf>,
    reaper: &Reaper,
) -> Result<(), String> {
    match wanted {
        Some(definition) => {
            let path = dir.join(registry::file_name(definition.instance_id()));
            let spec = WriteSpec {
                destination: path.clone(),
                mode: Some(0o644),
                uid: None,
                gid: None,
                check_cmd: None,
                check_timeout: Duration::from_secs(1),
            };
            write_atomically(&spec, definition.to_file_json().as_bytes(), reaper)
                .await
                .map_err(|e| e.to_string())?;
            if let Some(old) = written.take()
                && old != path
            {
                let _ = std::fs::remove_file(old);
            }
            *written = Some(path);
            Ok(())
        }
        None => {
            if let Some(path) = written.take() {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        let message = format!("{}: {e}", path.display());
                        *written = Some(path);
                        return Err(message);
                    }
                }
            }
            Ok(())
        }
    }
}

async fn apply_etcd(
    client: &EtcdClient,
    prefix: &str,
    ttl: Duration,
    wanted: Option<&ServiceDefinition>,
    state: &mut EtcdState,
) -> Result<(), String> {
    match wanted {
        Some(definition) => {
            let lease = match state.lease {
                Some(lease) => lease,
                None => {
                    let lease = client.lease_grant(ttl).await.map_err(|e| e.to_string())?;
                    state.lease = Some(lease.id);
                    lease.id
                }
            };
            let key = registry::etcd_key(prefix, &definition.name, definition.instance_id());
            let old = state.key.clone().unwrap_or_else(|| key.clone());
            client
                .replace(&old, &key, &definition.to_etcd_value(), Some(lease))
                .await
                .map_err(|e| e.to_string())?;
            state.key = Some(key);
            Ok(())
        }
        None => {
            if let Some(lease) = state.lease {
                // Revoking deletes every key on the lease: one call, nothing left behind.
                client
                    .lease_revoke(lease)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            *state = EtcdState::default();
            Ok(())
        }
    }
}
