//! The file as serde sees it: every field optional or spanned, so validation can point at it.
//!
//! Unknown keys are not rejected by serde here (that would stop at the first one); the loader
//! collects every ignored key with `serde_ignored` and reports each with its position.

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use toml::Spanned;

pub(crate) type S<T> = Spanned<T>;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawAdmin {
    pub(crate) bind: Option<S<String>>,
    pub(crate) tokens_file: Option<S<String>>,
    pub(crate) token_env: Option<S<String>>,
    pub(crate) read_token_env: Option<S<String>>,
    pub(crate) insecure: Option<S<bool>>,
    pub(crate) tls: Option<S<RawAdminTls>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawAdminTls {
    pub(crate) cert: Option<S<String>>,
    pub(crate) key: Option<S<String>>,
    pub(crate) client_ca: Option<S<String>>,
    pub(crate) client_scope: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawRuntime {
    pub(crate) worker_threads: Option<S<i64>>,
    pub(crate) shutdown_grace: Option<S<String>>,
    pub(crate) policy_cache: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawOverload {
    pub(crate) max_connections: Option<S<i64>>,
    pub(crate) max_memory_mb: Option<S<i64>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawLog {
    pub(crate) level: Option<S<String>>,
    pub(crate) format: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawAccessLog {
    pub(crate) path: Option<S<String>>,
    pub(crate) format: Option<S<String>>,
    pub(crate) buffer_lines: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawListener {
    pub(crate) name: S<String>,
    pub(crate) bind: S<String>,
    pub(crate) protocol: Option<S<String>>,
    pub(crate) max_connections: Option<S<i64>>,
    pub(crate) header_read_timeout: Option<S<String>>,
    pub(crate) max_header_bytes: Option<S<i64>>,
    pub(crate) keepalive_timeout: Option<S<String>>,
    pub(crate) request_body_timeout: Option<S<String>>,
    pub(crate) send_timeout: Option<S<String>>,
    pub(crate) http2: Option<bool>,
    pub(crate) max_concurrent_streams: Option<S<i64>>,
    pub(crate) http2_max_stalled_streams: Option<S<i64>>,
    pub(crate) service: Option<S<String>>,
    pub(crate) proxy_protocol: Option<S<String>>,
    pub(crate) accept_proxy_protocol: Option<bool>,
    pub(crate) idle_timeout: Option<S<String>>,
    pub(crate) tls: Option<RawListenerTls>,
    pub(crate) authz: Option<RawListenerAuthz>,
    pub(crate) sni: Option<Vec<S<RawSniRoute>>>,
    pub(crate) sni_timeout: Option<S<String>>,
    pub(crate) sni_max_bytes: Option<S<i64>>,
}

/// `[[listener.sni]]`: TLS passthrough routing by server name on a TCP listener.
#[derive(Debug, Deserialize)]
pub(crate) struct RawSniRoute {
    pub(crate) host: S<String>,
    pub(crate) service: S<String>,
}

/// `[[kv]]`: a KV source the policies' `kv-get` reads.
#[derive(Debug, Deserialize)]
pub(crate) struct RawKv {
    pub(crate) source: S<String>,
    pub(crate) path: Option<S<String>>,
    pub(crate) endpoints: Option<Vec<S<String>>>,
    pub(crate) prefix: Option<S<String>>,
    pub(crate) request_timeout: Option<S<String>>,
    pub(crate) poll: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawRoute {
    pub(crate) name: Option<S<String>>,
    pub(crate) listener: Option<S<String>>,
    pub(crate) host: Option<S<String>>,
    pub(crate) path: Option<S<String>>,
    pub(crate) strip: Option<S<String>>,
    pub(crate) prepend: Option<S<String>>,
    /// Required unless `redirect` is given.
    pub(crate) service: Option<S<String>>,
    pub(crate) redirect: Option<S<RawRedirect>>,
    pub(crate) allow: Option<S<Vec<S<String>>>>,
    pub(crate) deny: Option<S<Vec<S<String>>>>,
    pub(crate) upstream_host: Option<S<String>>,
    pub(crate) upgrades: Option<S<Vec<S<String>>>>,
    pub(crate) rate_limit: Option<S<RawRateLimit>>,
    /// A `world = "request"` policy asked about every request on the route.
    pub(crate) policy: Option<S<String>>,
    /// Services that policy may send a request to instead of `service`.
    pub(crate) policy_services: Option<S<Vec<S<String>>>>,
}

/// `rate_limit = { rate = 100, per = "1s", burst = 200, key = "client" }` on a route.
#[derive(Debug, Deserialize)]
pub(crate) struct RawRateLimit {
    pub(crate) rate: Option<S<i64>>,
    pub(crate) per: Option<S<String>>,
    pub(crate) burst: Option<S<i64>>,
    pub(crate) key: Option<S<String>>,
    pub(crate) max_keys: Option<S<i64>>,
}

/// `redirect = { code = 301, url = "..." }` on a route.
#[derive(Debug, Deserialize)]
pub(crate) struct RawRedirect {
    pub(crate) code: S<i64>,
    pub(crate) url: S<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawService {
    pub(crate) name: S<String>,
    pub(crate) balancer: Option<S<String>>,
    pub(crate) protocol: Option<S<String>>,
    pub(crate) hash_on: Option<S<String>>,
    pub(crate) instances: Option<Vec<S<RawInstance>>>,
    pub(crate) timeouts: Option<RawTimeouts>,
    pub(crate) retries: Option<RawRetries>,
    pub(crate) outlier: Option<RawOutlier>,
    pub(crate) pool: Option<RawPool>,
    pub(crate) serve: Option<S<String>>,
    pub(crate) health: Option<S<RawHealth>>,
    pub(crate) on_demotion: Option<S<String>>,
    pub(crate) tls: Option<RawServiceTls>,
    pub(crate) concurrency: Option<S<RawConcurrency>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawHealth {
    pub(crate) kind: Option<S<String>>,
    pub(crate) interval: Option<S<String>>,
    pub(crate) timeout: Option<S<String>>,
    pub(crate) rise: Option<S<i64>>,
    pub(crate) fall: Option<S<i64>>,
    pub(crate) jitter: Option<S<String>>,
    pub(crate) address: Option<S<String>>,
    pub(crate) port: Option<S<i64>>,
    pub(crate) policy: Option<S<String>>,
    pub(crate) body_bytes: Option<S<i64>>,
    pub(crate) method: Option<S<String>>,
    pub(crate) path: Option<S<String>>,
    pub(crate) host: Option<S<String>>,
    pub(crate) expect_status: Option<Vec<S<toml::Value>>>,
    pub(crate) expect_body: Option<S<String>>,
    pub(crate) send: Option<S<String>>,
    pub(crate) expect: Option<S<String>>,
    pub(crate) args: Option<Vec<S<String>>>,
    pub(crate) grpc_service: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawTimeouts {
    pub(crate) connect: Option<S<String>>,
    pub(crate) response_header: Option<S<String>>,
    pub(crate) idle: Option<S<String>>,
    pub(crate) total: Option<S<String>>,
    pub(crate) tunnel_idle: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawRetries {
    pub(crate) attempts: Option<S<i64>>,
    pub(crate) on_status: Option<Vec<S<i64>>>,
    pub(crate) budget_ratio: Option<S<f64>>,
    pub(crate) budget_min_per_sec: Option<S<i64>>,
    pub(crate) buffer_bytes: Option<S<i64>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawOutlier {
    pub(crate) consecutive_failures: Option<S<i64>>,
    pub(crate) base_ejection: Option<S<String>>,
    pub(crate) max_ejection: Option<S<String>>,
    pub(crate) max_ejected_percent: Option<S<i64>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawConcurrency {
    pub(crate) max_in_flight: Option<S<i64>>,
    pub(crate) max_queued: Option<S<i64>>,
    pub(crate) queue_timeout: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawPool {
    pub(crate) max_idle_per_instance: Option<S<i64>>,
    pub(crate) idle_timeout: Option<S<String>>,
    pub(crate) max_connecting: Option<S<i64>>,
    pub(crate) http2_max_connections: Option<S<i64>>,
}

/// An instance is written either as `"127.0.0.1:9001"` or `{ address = "...", weight = 2 }`
/// (the table may also name where its check probes: `check_address`, `check_port`).
#[derive(Debug)]
pub(crate) struct RawInstance {
    pub(crate) address: S<String>,
    pub(crate) weight: Option<S<i64>>,
    pub(crate) check_address: Option<S<String>>,
    pub(crate) check_port: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawInstanceTable {
    pub(crate) address: S<String>,
    pub(crate) weight: Option<S<i64>>,
    pub(crate) check_address: Option<S<String>>,
    pub(crate) check_port: Option<S<i64>>,
}

impl<'de> Deserialize<'de> for RawInstance {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InstanceVisitor;

        impl<'de> Visitor<'de> for InstanceVisitor {
            type Value = RawInstance;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(r#"an address string like "127.0.0.1:9001" or a table { address = "...", weight = N }"#)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawInstance, E> {
                // The span of a bare string is the enclosing `Spanned`'s; the loader copies it.
                Ok(RawInstance {
                    address: Spanned::new(0..0, v.to_owned()),
                    weight: None,
                    check_address: None,
                    check_port: None,
                })
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawInstance, A::Error> {
                let table =
                    RawInstanceTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawInstance {
                    address: table.address,
                    weight: table.weight,
                    check_address: table.check_address,
                    check_port: table.check_port,
                })
            }
        }

        deserializer.deserialize_any(InstanceVisitor)
    }
}

/// The field names serde knows for a derived struct, for "did you mean" hints.
pub(crate) fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldsProbe(&mut fields));
    fields
}

struct FieldsProbe<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for FieldsProbe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("field probe"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("field probe"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawCertPair {
    pub(crate) cert: Option<S<String>>,
    pub(crate) key: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawIdentityHeaders {
    pub(crate) cn: Option<S<String>>,
    pub(crate) san: Option<S<String>>,
    pub(crate) fingerprint: Option<S<String>>,
    pub(crate) issuer: Option<S<String>>,
    pub(crate) not_after: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawListenerTls {
    pub(crate) cert: Option<S<String>>,
    pub(crate) key: Option<S<String>>,
    pub(crate) certificates: Option<Vec<S<RawCertPair>>>,
    pub(crate) client_ca: Option<S<String>>,
    pub(crate) client_auth: Option<S<String>>,
    pub(crate) min_version: Option<S<String>>,
    pub(crate) handshake_timeout: Option<S<String>>,
    pub(crate) identity_headers: Option<RawIdentityHeaders>,
    pub(crate) acme: Option<S<RawAcme>>,
}

/// `[listener.tls.acme]`: certificates from an ACME CA.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawAcme {
    pub(crate) directory: Option<S<String>>,
    pub(crate) domains: Option<Vec<S<String>>>,
    pub(crate) contact: Option<Vec<S<String>>>,
    pub(crate) storage: Option<S<String>>,
    pub(crate) ca_root: Option<S<String>>,
    pub(crate) renew_before: Option<S<String>>,
    pub(crate) retry_every: Option<S<String>>,
    pub(crate) challenge: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawListenerAuthz {
    pub(crate) allow_cn: Option<Vec<S<String>>>,
    pub(crate) allow_san: Option<Vec<S<String>>>,
    pub(crate) allow_fingerprint: Option<Vec<S<String>>>,
    pub(crate) allow_cidr: Option<Vec<S<String>>>,
    pub(crate) policy: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawServiceTls {
    pub(crate) ca: Option<S<String>>,
    pub(crate) cert: Option<S<String>>,
    pub(crate) key: Option<S<String>>,
    pub(crate) server_name: Option<S<String>>,
    pub(crate) insecure_skip_verify: Option<bool>,
}
