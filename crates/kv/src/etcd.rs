//! An etcd v3 client over etcd's JSON gateway (`/v3/kv/range`, `/v3/watch`, `/v3/lease/*`),
//! which etcd 3.4+ serves on its client port next to gRPC.
//!
//! Why the gateway and not gRPC (`etcd-client`): the gRPC client brings tonic, hyper, tower and
//! prost — megabytes of binary and a longer start for a process that is every container's
//! entrypoint. The sidecar needs a handful of unary calls and one streaming watch, which the
//! gateway serves as newline-delimited JSON over chunked HTTP/1.1. The price: base64 keys and
//! values, int64 fields as strings, one TCP connection per unary call (cheap against an etcd
//! that is local or in the same cluster), no TLS in the built-in client.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::{self, HttpEndpoint, HttpStream};
use crate::{KvEntry, KvError};

/// Default time allowed for one unary call (connect + request + response).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Client settings; every field has a default.
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdOptions {
    /// Per-call deadline for unary calls and for the head of a watch response.
    pub request_timeout: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// A cluster given by one or more client URLs; calls go to the last endpoint that answered and
/// fail over to the others in order.
#[derive(Debug)]
pub struct EtcdClient {
    endpoints: Vec<HttpEndpoint>,
    preferred: AtomicUsize,
    options: EtcdOptions,
}

/// A lease granted by etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    pub ttl: Duration,
}

/// The result of a range read: the entries and the store revision it was read at.
#[derive(Debug, Clone)]
pub struct RangeResult {
    pub entries: Vec<KvEntry>,
    pub revision: i64,
}

/// One message of a watch stream.
#[derive(Debug, Clone, Default)]
pub struct WatchBatch {
    /// Store revision when the message was sent.
    pub revision: i64,
    pub events: Vec<WatchChange>,
    /// Set when the requested start revision was compacted away; the watch is cancelled.
    pub compact_revision: Option<i64>,
    pub canceled: bool,
    pub cancel_reason: Option<String>,
}

/// A single change inside a [`WatchBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchChange {
    Put(KvEntry),
    Delete { key: String, revision: i64 },
}

impl WatchChange {
    pub fn revision(&self) -> i64 {
        match self {
            WatchChange::Put(entry) => entry.revision,
            WatchChange::Delete { revision, .. } => *revision,
        }
    }
}

/// An open `/v3/watch` stream.
#[derive(Debug)]
pub struct EtcdWatchStream {
    endpoint: String,
    stream: HttpStream,
}

/// `[key, range_end)` covering every key that starts with `prefix` (all keys for `""`).
pub fn prefix_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        return (vec![0], vec![0]);
    }
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return (prefix.as_bytes().to_vec(), end);
        }
    }
    // A prefix of only 0xff bytes: everything from it to the end of the keyspace.
    (prefix.as_bytes().to_vec(), vec![0])
}

impl EtcdClient {
    /// A client for the given client URLs (`http://host:port`).
    pub fn new(endpoints: &[String], options: EtcdOptions) -> Result<Self, KvError> {
        if endpoints.is_empty() {
            return Err(KvError::BadEndpoint {
                endpoint: String::new(),
                reason: "at least one etcd endpoint is needed".into(),
            });
        }
        let endpoints = endpoints
            .iter()
            .map(|e| HttpEndpoint::parse(e))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            endpoints,
            preferred: AtomicUsize::new(0),
            options,
        })
    }

    /// The endpoints as configured, for messages.
    pub fn describe(&self) -> String {
        self.endpoints
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn order(&self) -> impl Iterator<Item = usize> + '_ {
        let first = self.preferred.load(Ordering::Relaxed) % self.endpoints.len();
        (0..self.endpoints.len()).map(move |i| (first + i) % self.endpoints.len())
    }

    /// One unary JSON call with failover across endpoints on transient errors.
    async fn call(&self, path: &str, body: &Value) -> Result<Value, KvError> {
        let payload = body.to_string().into_bytes();
        let mut last_error = None;
        for index in self.order() {
            let endpoint = &self.endpoints[index];
            match http::request(
                endpoint,
                "POST",
                path,
                Some(&payload),
                self.options.request_timeout,
            )
            .await
            {
                Ok(response) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return decode_response(endpoint, path, response.status, &response.body);
                }
                Err(error) if error.is_transient() => last_error = Some(error),
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or_else(|| KvError::BadEndpoint {
            endpoint: String::new(),
            reason: "no endpoints".into(),
        }))
    }

    /// Reads `[key, range_end)`, or the single `key` when `range_end` is `None`.
    pub async fn range(
        &self,
        key: &[u8],
        range_end: Option<&[u8]>,
    ) -> Result<RangeResult, KvError> {
        let mut body = json!({ "key": BASE64.encode(key) });
        if let Some(end) = range_end {
            body["range_end"] = Value::String(BASE64.encode(end));
        }
        let answer = self.call("/v3/kv/range", &body).await?;
        let parsed: RangeResponse = from_value("/v3/kv/range", answer)?;
        let entries = parsed
            .kvs
            .into_iter()
            .map(RawKv::into_entry)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RangeResult {
            entries,
            revision: parsed.header.revision.0,
        })
    }

    pub async fn get(&self, key: &str) -> Result<Option<KvEntry>, KvError> {
        Ok(self.range(key.as_bytes(), None).await?.entries.pop())
    }

    /// Every key under `prefix`, sorted by key, and the revision they were read at.
    pub async fn list(&self, prefix: &str) -> Result<RangeResult, KvError> {
        let (key, end) = prefix_range(prefix);
        self.range(&key, Some(&end)).await
    }

    /// Writes `key`, attached to `lease` when given; returns the new store revision.
    pub async fn put(&self, key: &str, value: &[u8], lease: Option<i64>) -> Result<i64, KvError> {
        let mut body = json!({ "key": BASE64.encode(key), "value": BASE64.encode(value) });
        if let Some(lease) = lease {
            body["lease"] = Value::String(lease.to_string());
        }
        let answer = self.call("/v3/kv/put", &body).await?;
        Ok(from_value::<HeaderOnly>("/v3/kv/put", answer)?
            .header
            .revision
            .0)
    }

    /// Deletes `key`; returns how many keys were deleted (0 or 1).
    pub async fn delete(&self, key: &str) -> Result<i64, KvError> {
        let body = json!({ "key": BASE64.encode(key) });
        let answer = self.call("/v3/kv/deleterange", &body).await?;
        Ok(from_value::<DeleteResponse>("/v3/kv/deleterange", answer)?
            .deleted
            .0)
    }

    /// In one transaction: deletes `old_key` (if different) and writes `new_key`. Used to move a
    /// registration to another service name without a moment where it is in both or neither.
    pub async fn replace(
        &self,
        old_key: &str,
        new_key: &str,
        value: &[u8],
        lease: Option<i64>,
    ) -> Result<i64, KvError> {
        let mut put = json!({ "key": BASE64.encode(new_key), "value": BASE64.encode(value) });
        if let Some(lease) = lease {
            put["lease"] = Value::String(lease.to_string());
        }
        let mut success = Vec::new();
        if old_key != new_key {
            success.push(json!({ "request_delete_range": { "key": BASE64.encode(old_key) } }));
        }
        success.push(json!({ "request_put": put }));
        let answer = self
            .call("/v3/kv/txn", &json!({ "success": success }))
            .await?;
        Ok(from_value::<HeaderOnly>("/v3/kv/txn", answer)?
            .header
            .revision
            .0)
    }

    /// Grants a lease; etcd rounds the TTL to whole seconds (minimum 1).
    pub async fn lease_grant(&self, ttl: Duration) -> Result<Lease, KvError> {
        let seconds = ttl.as_secs().max(1);
        let answer = self
            .call("/v3/lease/grant", &json!({ "TTL": seconds.to_string() }))
            .await?;
        let parsed: LeaseGrantResponse = from_value("/v3/lease/grant", answer)?;
        if let Some(error) = parsed.error.filter(|e| !e.is_empty()) {
            return Err(KvError::Etcd {
                endpoint: self.describe(),
                operation: "/v3/lease/grant".into(),
                status: 200,
                message: error,
            });
        }
        Ok(Lease {
            id: parsed.id.0,
            ttl: Duration::from_secs(parsed.ttl.0.max(0) as u64),
        })
    }

    /// Refreshes a lease. `Ok(None)` when etcd no longer knows it (it expired): the caller must
    /// grant a new one and write its keys again.
    pub async fn lease_keepalive(&self, id: i64) -> Result<Option<Duration>, KvError> {
        let answer = self
            .call("/v3/lease/keepalive", &json!({ "ID": id.to_string() }))
            .await?;
        let parsed: KeepAliveEnvelope = from_value("/v3/lease/keepalive", answer)?;
        let ttl = parsed.result.map(|r| r.ttl.0).unwrap_or(0);
        Ok((ttl > 0).then(|| Duration::from_secs(ttl as u64)))
    }

    /// Revokes a lease, deleting every key attached to it. A lease that is already gone is fine.
    pub async fn lease_revoke(&self, id: i64) -> Result<(), KvError> {
        match self
            .call("/v3/lease/revoke", &json!({ "ID": id.to_string() }))
            .await
        {
            Ok(_) => Ok(()),
            Err(KvError::Etcd { message, .. }) if message.contains("lease not found") => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Opens a watch on every key under `prefix`, starting at `start_revision` (0 = now).
    pub async fn watch(
        &self,
        prefix: &str,
        start_revision: i64,
    ) -> Result<EtcdWatchStream, KvError> {
        let (key, end) = prefix_range(prefix);
        let mut create = json!({ "key": BASE64.encode(&key), "range_end": BASE64.encode(&end) });
        if start_revision > 0 {
            create["start_revision"] = Value::String(start_revision.to_string());
        }
        let payload = json!({ "create_request": create }).to_string().into_bytes();
        let mut last_error = None;
        for index in self.order() {
            let endpoint = &self.endpoints[index];
            match http::stream(
                endpoint,
                "POST",
                "/v3/watch",
                Some(&payload),
                self.options.request_timeout,
            )
            .await
            {
                Ok(mut stream) => {
                    if stream.status() != 200 {
                        let body = stream.read_to_end().await.unwrap_or_default();
                        return Err(
                            decode_response(endpoint, "/v3/watch", stream.status(), &body)
                                .err()
                                .unwrap_or_else(|| KvError::Protocol {
                                    endpoint: endpoint.to_string(),
                                    detail: format!("watch answered HTTP {}", stream.status()),
                                }),
                        );
                    }
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(EtcdWatchStream {
                        endpoint: endpoint.to_string(),
                        stream,
                    });
                }
                Err(error) if error.is_transient() => last_error = Some(error),
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or_else(|| KvError::BadEndpoint {
            endpoint: String::new(),
            reason: "no endpoints".into(),
        }))
    }

    /// A cheap read that proves the cluster answers (used to detect a silently dead watch).
    pub async fn ping(&self) -> Result<i64, KvError> {
        let answer = self
            .call(
                "/v3/kv/range",
                &json!({ "key": BASE64.encode([0u8]), "count_only": true }),
            )
            .await?;
        Ok(from_value::<HeaderOnly>("/v3/kv/range", answer)?
            .header
            .revision
            .0)
    }
}

impl EtcdWatchStream {
    /// The next message; `Ok(None)` when the server closed the stream.
    pub async fn next(&mut self) -> Result<Option<WatchBatch>, KvError> {
        loop {
            let Some(line) = self.stream.next_line().await? else {
                return Ok(None);
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let envelope: WatchEnvelope =
                serde_json::from_slice(&line).map_err(|e| KvError::Protocol {
                    endpoint: self.endpoint.clone(),
                    detail: format!("watch message is not JSON: {e}"),
                })?;
            if let Some(error) = envelope.error {
                return Err(KvError::Etcd {
                    endpoint: self.endpoint.clone(),
                    operation: "/v3/watch".into(),
                    status: 200,
                    message: error.message,
                });
            }
            let Some(result) = envelope.result else {
                continue;
            };
            let mut batch = WatchBatch {
                revision: result.header.revision.0,
                compact_revision: (result.compact_revision.0 > 0)
                    .then_some(result.compact_revision.0),
                canceled: result.canceled,
                cancel_reason: result.cancel_reason.filter(|r| !r.is_empty()),
                events: Vec::with_capacity(result.events.len()),
            };
            for event in result.events {
                let revision = event.kv.mod_revision.0;
                if event.kind.as_deref() == Some("DELETE") {
                    let key = decode_text(&event.kv.key)?;
                    batch.events.push(WatchChange::Delete { key, revision });
                } else {
                    batch.events.push(WatchChange::Put(event.kv.into_entry()?));
                }
            }
            return Ok(Some(batch));
        }
    }
}

fn decode_response(
    endpoint: &HttpEndpoint,
    operation: &str,
    status: u16,
    body: &[u8],
) -> Result<Value, KvError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| KvError::Protocol {
        endpoint: endpoint.to_string(),
        detail: format!("{operation} answered HTTP {status} with a body that is not JSON: {e}"),
    })?;
    if status != 200 {
        let message = value
            .get("message")
            .or_else(|| value.get("error"))
            .and_then(Value::as_str)
            .unwrap_or("no message")
            .to_owned();
        return Err(KvError::Etcd {
            endpoint: endpoint.to_string(),
            operation: operation.to_owned(),
            status,
            message,
        });
    }
    Ok(value)
}

fn from_value<T: for<'de> Deserialize<'de>>(operation: &str, value: Value) -> Result<T, KvError> {
    serde_json::from_value(value).map_err(|e| KvError::Protocol {
        endpoint: String::from("etcd"),
        detail: format!("unexpected {operation} answer: {e}"),
    })
}

fn decode_bytes(text: &str) -> Result<Vec<u8>, KvError> {
    BASE64.decode(text).map_err(|e| KvError::Protocol {
        endpoint: String::from("etcd"),
        detail: format!("invalid base64 {text:?}: {e}"),
    })
}

fn decode_text(text: &str) -> Result<String, KvError> {
    Ok(String::from_utf8_lossy(&decode_bytes(text)?).into_owned())
}

/// The gateway encodes int64 as JSON strings; accept numbers too, and absent as 0.
#[derive(Debug, Default, Clone, Copy)]
struct I64(i64);

impl<'de> Deserialize<'de> for I64 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::String(text) => text.parse().map(I64).map_err(serde::de::Error::custom),
            Value::Number(number) => number
                .as_i64()
                .map(I64)
                .ok_or_else(|| serde::de::Error::custom("integer out of range")),
            Value::Null => Ok(I64(0)),
            other => Err(serde::de::Error::custom(format!(
                "expected an integer, got {other}"
            ))),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct Header {
    #[serde(default)]
    revision: I64,
}

#[derive(Debug, Deserialize)]
struct HeaderOnly {
    #[serde(default)]
    header: Header,
}

#[derive(Debug, Deserialize)]
struct DeleteResponse {
    #[serde(default)]
    deleted: I64,
}

#[derive(Debug, Deserialize)]
struct RawKv {
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    mod_revision: I64,
}

impl RawKv {
    fn into_entry(self) -> Result<KvEntry, KvError> {
        Ok(KvEntry {
            key: decode_text(&self.key)?,
            value: decode_bytes(&self.value)?,
            revision: self.mod_revision.0,
        })
    }
}

#[derive(Debug, Deserialize)]
struct RangeResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    kvs: Vec<RawKv>,
}

#[derive(Debug, Deserialize)]
struct LeaseGrantResponse {
    #[serde(rename = "ID", default)]
    id: I64,
    #[serde(rename = "TTL", default)]
    ttl: I64,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct KeepAliveResult {
    #[serde(rename = "TTL", default)]
    ttl: I64,
}

#[derive(Debug, Deserialize)]
struct KeepAliveEnvelope {
    result: Option<KeepAliveResult>,
}

#[derive(Debug, Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: Option<String>,
    kv: RawKv,
}

#[derive(Debug, Deserialize)]
struct WatchResult {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    events: Vec<RawEvent>,
    #[serde(default)]
    compact_revision: I64,
    #[serde(default)]
    canceled: bool,
    #[serde(default)]
    cancel_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WatchError {
    #[serde(default)]
    message: String,
}

#[derive(Debug, Deserialize)]
struct WatchEnvelope {
    result: Option<WatchResult>,
    error: Option<WatchError>,
}

/// Shared handle type used by sources.
pub type SharedEtcdClient = Arc<EtcdClient>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges_cover_exactly_the_prefix() {
        assert_eq!(prefix_range("a/b"), (b"a/b".to_vec(), b"a/c".to_vec()));
        assert_eq!(prefix_range(""), (vec![0], vec![0]));
        assert_eq!(prefix_range("a"), (b"a".to_vec(), b"b".to_vec()));
        assert_eq!(
            prefix_range("a\u{7f}"),
            (b"a\x7f".to_vec(), vec![b'a', 0x80])
        );
    }
}
