use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong reading or watching a KV source.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    BadEndpoint { endpoint: String, reason: String },

    #[error("cannot reach {endpoint}: {source}")]
    Unreachable {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{endpoint}: no answer within {timeout:?} ({operation})")]
    Timeout {
        endpoint: String,
        operation: String,
        timeout: Duration,
    },

    #[error("{endpoint}: malformed HTTP response: {detail}")]
    Protocol { endpoint: String, detail: String },

    #[error("etcd at {endpoint} refused {operation}: HTTP {status}: {message}")]
    Etcd {
        endpoint: String,
        operation: String,
        status: u16,
        message: String,
    },

    #[error("etcd compacted revision {requested}; oldest available is {compact_revision}")]
    Compacted {
        requested: i64,
        compact_revision: i64,
    },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}:{line}:{column}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },

    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
}

impl KvError {
    /// Whether retrying the same call later can succeed (network trouble, a server that is
    /// restarting) as opposed to a request that will always be refused.
    pub fn is_transient(&self) -> bool {
        match self {
            KvError::Unreachable { .. } | KvError::Timeout { .. } | KvError::Protocol { .. } => {
                true
            }
            // 5xx from the gateway: leader election, "etcdserver: request timed out"...
            KvError::Etcd { status, .. } => *status >= 500,
            KvError::Io { .. } => true,
            _ => false,
        }
    }
}
