//! The service registry format, shared by the writer (`sluice-sidecar`) and the readers
//! (discovery's `file` and `etcd` catalog sources, the sidecar's `services()` template function).
//! `docs/registry-format.md` is the prose version of this module.
//!
//! - **File registry**: a directory; one instance per file `<id>.json` holding Consul's agent
//!   service-definition format, `{"service": {...}}` (also accepted when reading:
//!   `{"services": [{...}, ...]}`). Writers replace the file atomically (temp file + rename) and
//!   remove it to deregister. Readers ignore dot files (writers' temporaries).
//! - **etcd registry**: one key per instance, `<prefix><service>/<id>` (default prefix
//!   [`DEFAULT_ETCD_PREFIX`]), whose value is the bare definition object (the inside of
//!   `"service"`), attached to a lease the registrant keeps alive: a dead registrant disappears
//!   when its lease expires. A change of service name (role switch) is one transaction that
//!   deletes the old key and puts the new one.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::KvEntry;

/// Where instances live in etcd unless configured otherwise.
pub const DEFAULT_ETCD_PREFIX: &str = "/sluice/services/";
/// Default lease TTL for etcd registrations.
pub const DEFAULT_LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// One service instance, in Consul's service-definition field names. Unknown fields (Consul's
/// `connect`, `weights`, `enable_tag_override`, ...) are kept in `extra` and written back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceDefinition {
    #[serde(alias = "Name")]
    pub name: String,
    /// Instance id; Consul defaults it to the name when absent ([`ServiceDefinition::instance_id`]).
    #[serde(
        default,
        alias = "ID",
        alias = "Id",
        skip_serializing_if = "String::is_empty"
    )]
    pub id: String,
    #[serde(default, alias = "Address", skip_serializing_if = "String::is_empty")]
    pub address: String,
    #[serde(default, alias = "Port", skip_serializing_if = "is_zero")]
    pub port: u16,
    #[serde(default, alias = "Tags", skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, alias = "Meta", skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    #[serde(default, alias = "Check", skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckDefinition>,
    #[serde(default, alias = "Checks", skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckDefinition>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

fn is_zero(port: &u16) -> bool {
    *port == 0
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// A health check as Consul writes it: exactly one of `http`, `tcp`, `grpc`, `args` says what
/// to probe.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CheckDefinition {
    #[serde(
        default,
        alias = "ID",
        alias = "CheckID",
        skip_serializing_if = "String::is_empty"
    )]
    pub id: String,
    #[serde(default, alias = "Name", skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, alias = "HTTP", skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    #[serde(default, alias = "TCP", skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    /// A gRPC health check's target: `"host:port"` (the server's overall health) or
    /// `"host:port/service"`.
    #[serde(default, alias = "GRPC", skip_serializing_if = "Option::is_none")]
    pub grpc: Option<String>,
    /// The gRPC check is made over TLS.
    #[serde(default, alias = "GRPCUseTLS", skip_serializing_if = "is_false")]
    pub grpc_use_tls: bool,
    #[serde(
        default,
        alias = "Args",
        alias = "ScriptArgs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub args: Vec<String>,
    /// Go duration text, e.g. `"10s"`.
    #[serde(default, alias = "Interval", skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, alias = "Timeout", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Consul's threshold: the check turns critical after this many failures in a row. Absent
    /// or 0 (Consul's default) means at the first failure ([`CheckDefinition::fall`]).
    #[serde(
        default,
        alias = "FailuresBeforeCritical",
        skip_serializing_if = "Option::is_none"
    )]
    pub failures_before_critical: Option<u32>,
    /// Consul's threshold: the check turns passing after this many successes in a row. Absent
    /// or 0 means at the first success ([`CheckDefinition::rise`]).
    #[serde(
        default,
        alias = "SuccessBeforePassing",
        skip_serializing_if = "Option::is_none"
    )]
    pub success_before_passing: Option<u32>,
    /// Go duration text: an instance whose check stays critical this long is deregistered.
    #[serde(
        default,
        alias = "DeregisterCriticalServiceAfter",
        skip_serializing_if = "Option::is_none"
    )]
    pub deregister_critical_service_after: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl CheckDefinition {
    /// Failed probes in a row that make the check critical, as Consul counts them: its status
    /// handler turns critical once the failure count reaches `failures_before_critical`, and
    /// the default 0 is reached by the first failure.
    pub fn fall(&self) -> u32 {
        self.failures_before_critical.unwrap_or(0).max(1)
    }

    /// Passing probes in a row that make the check passing again (Consul's
    /// `success_before_passing`, same counting as [`CheckDefinition::fall`]).
    pub fn rise(&self) -> u32 {
        self.success_before_passing.unwrap_or(0).max(1)
    }
}

impl ServiceDefinition {
    /// The instance id, defaulting to the service name as Consul does.
    pub fn instance_id(&self) -> &str {
        if self.id.is_empty() {
            &self.name
        } else {
            &self.id
        }
    }

    /// Checks the parts that key names and routing depend on.
    pub fn validate(&self) -> Result<(), InvalidDefinition> {
        check_segment(KeySegment::ServiceName, &self.name)?;
        check_segment(KeySegment::InstanceId, self.instance_id())
    }

    /// The file-registry document for this instance: `{"service": {...}}`, pretty-printed.
    pub fn to_file_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(&ServiceFile { service: self })
            .unwrap_or_else(|_| String::from("{}"));
        text.push('\n');
        text
    }

    /// The etcd value for this instance: the bare definition object.
    pub fn to_etcd_value(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A part of a definition that becomes a key segment (a file name, an etcd key level).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySegment {
    /// `name`.
    ServiceName,
    /// `id` (or the name it defaults to).
    InstanceId,
}

impl std::fmt::Display for KeySegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeySegment::ServiceName => "service name",
            KeySegment::InstanceId => "instance id",
        })
    }
}

/// Why [`ServiceDefinition::validate`] refused a definition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDefinition {
    /// The segment is empty.
    #[error("{0} is empty")]
    Empty(KeySegment),
    /// It would name another key level or a hidden file.
    #[error("{0} {1:?} must not contain '/' or start with '.'")]
    PathLike(KeySegment, String),
    /// It holds control characters.
    #[error("{0} {1:?} contains control characters")]
    Control(KeySegment, String),
}

fn check_segment(what: KeySegment, value: &str) -> Result<(), InvalidDefinition> {
    if value.is_empty() {
        Err(InvalidDefinition::Empty(what))
    } else if value.contains('/') || value.starts_with('.') {
        Err(InvalidDefinition::PathLike(what, value.to_owned()))
    } else if value.chars().any(char::is_control) {
        Err(InvalidDefinition::Control(what, value.to_owned()))
    } else {
        Ok(())
    }
}

#[derive(Serialize)]
struct ServiceFile<'a> {
    service: &'a ServiceDefinition,
}

/// The file name an instance is registered under in a file registry.
pub fn file_name(id: &str) -> String {
    format!("{id}.json")
}

/// The etcd key an instance is registered under.
pub fn etcd_key(prefix: &str, service: &str, id: &str) -> String {
    format!("{prefix}{service}/{id}")
}

/// Splits an etcd registry key into (service, id); `None` for keys that are not instance keys.
pub fn parse_etcd_key<'a>(prefix: &str, key: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = key.strip_prefix(prefix)?;
    let (service, id) = rest.split_once('/')?;
    (!service.is_empty() && !id.is_empty() && !id.contains('/')).then_some((service, id))
}

/// A registry document that could not be used, with where the problem is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}:{line}:{column}: {message}")]
pub struct RegistryError {
    /// File path or etcd key.
    pub origin: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Parses a file-registry document: `{"service": {...}}` or `{"services": [...]}`.
pub fn parse_service_file(
    path: &Path,
    text: &str,
) -> Result<Vec<ServiceDefinition>, RegistryError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Document {
        #[serde(default, alias = "Service")]
        service: Option<ServiceDefinition>,
        #[serde(default, alias = "Services")]
        services: Vec<ServiceDefinition>,
    }
    let origin = path.display().to_string();
    let document: Document = serde_json::from_str(text).map_err(|e| RegistryError {
        origin: origin.clone(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    let mut definitions: Vec<ServiceDefinition> = document.service.into_iter().collect();
    definitions.extend(document.services);
    if definitions.is_empty() {
        return Err(RegistryError {
            origin,
            line: 1,
            column: 1,
            message: "no \"service\" or \"services\" in the document".into(),
        });
    }
    for definition in &definitions {
        definition.validate().map_err(|invalid| RegistryError {
            origin: origin.clone(),
            line: 1,
            column: 1,
            message: invalid.to_string(),
        })?;
    }
    Ok(definitions)
}

/// Parses an etcd registry entry and checks that its key agrees with its content.
pub fn parse_etcd_entry(prefix: &str, entry: &KvEntry) -> Result<ServiceDefinition, RegistryError> {
    let error = |line, column, message: String| RegistryError {
        origin: entry.key.clone(),
        line,
        column,
        message,
    };
    let (service, id) = parse_etcd_key(prefix, &entry.key)
        .ok_or_else(|| error(0, 0, format!("key is not {prefix}<service>/<id>")))?;
    let mut definition: ServiceDefinition = serde_json::from_slice(&entry.value)
        .map_err(|e| error(e.line(), e.column(), e.to_string()))?;
    if definition.id.is_empty() {
        definition.id = id.to_owned();
    }
    if definition.name != service || definition.id != id {
        return Err(error(
            1,
            1,
            format!(
                "value names {}/{} but the key says {service}/{id}",
                definition.name, definition.id
            ),
        ));
    }
    Ok(definition)
}

/// Which kind of registry a set of KV entries came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryKind {
    /// Entries from a `file` source over the registry directory (key = file name).
    File,
    /// Entries from an etcd source under this prefix. Keys in the entries are full etcd keys.
    Etcd { prefix: String },
}

/// Every instance found in `entries`, plus the documents that could not be used. Used by the
/// sidecar's `services()` over a mirrored registry; discovery applies the same rules.
pub fn instances_from_entries<'a>(
    kind: &RegistryKind,
    entries: impl IntoIterator<Item = &'a KvEntry>,
) -> (Vec<ServiceDefinition>, Vec<RegistryError>) {
    let mut instances = Vec::new();
    let mut errors = Vec::new();
    for entry in entries {
        match kind {
            RegistryKind::File => {
                if !entry.key.ends_with(".json") || entry.key.contains('/') {
                    continue;
                }
                match parse_service_file(Path::new(&entry.key), &entry.value_str()) {
                    Ok(found) => instances.extend(found),
                    Err(error) => errors.push(error),
                }
            }
            RegistryKind::Etcd { prefix } => match parse_etcd_entry(prefix, entry) {
                Ok(found) => instances.push(found),
                Err(error) => errors.push(error),
            },
        }
    }
    (instances, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_004_WEB: &str = r#"{
    "service": {
        "name": "web",
        "port": 8000,
        "tags": ["web", "application", "urlprefix-/web"],
        "check": {
            "id": "web_app_status",
            "name": "Web Application Status",
            "tcp": "localhost:8000",
            "interval": "30s",
            "timeout": "20s"
        },
        "connect": {"sidecar_service": {"proxy": {"upstreams": [{"destination_name": "mongo-primary", "local_bind_port": 5501}]}}}
    }
}"#;

    #[test]
    fn seed_004_definitions_parse_and_round_trip() {
        let defs = parse_service_file(Path::new("web.json"), SEED_004_WEB).expect("valid");
        let web = &defs[0];
        assert_eq!(
            (web.name.as_str(), web.port, web.instance_id()),
            ("web", 8000, "web")
        );
        assert_eq!(web.tags[2], "urlprefix-/web");
        let check = web.check.as_ref().expect("check");
        assert_eq!(check.tcp.as_deref(), Some("localhost:8000"));
        assert_eq!(check.interval.as_deref(), Some("30s"));
        assert!(web.extra.contains_key("connect"));
        let again =
            parse_service_file(Path::new("web.json"), &web.to_file_json()).expect("round trip");
        assert_eq!(&again[0], web);
    }

    #[test]
    fn services_form_and_capitalised_fields_are_read() {
        let text = r#"{"services": [{"Name": "a", "ID": "a1", "Port": 1}, {"name": "b", "checks": [{"args": ["/bin/true"], "interval": "5s"}]}]}"#;
        let defs = parse_service_file(Path::new("x.json"), text).expect("valid");
        assert_eq!(defs[0].instance_id(), "a1");
        assert_eq!(defs[1].checks[0].args, ["/bin/true"]);
    }

    #[test]
    fn consul_thresholds_and_deregistration_are_read_in_both_spellings() {
        let lower = r#"{"service": {"name": "web", "check": {"tcp": "localhost:8000",
            "failures_before_critical": 3, "success_before_passing": 2,
            "deregister_critical_service_after": "90s"}}}"#;
        let capitalised = r#"{"Service": {"Name": "web", "Check": {"TCP": "localhost:8000",
            "FailuresBeforeCritical": 3, "SuccessBeforePassing": 2,
            "DeregisterCriticalServiceAfter": "90s"}}}"#;
        for text in [lower, capitalised] {
            let defs = parse_service_file(Path::new("web.json"), text).expect("valid");
            let check = defs[0].check.as_ref().expect("check");
            assert_eq!((check.fall(), check.rise()), (3, 2), "{text}");
            assert_eq!(
                check.deregister_critical_service_after.as_deref(),
                Some("90s")
            );
            assert!(check.extra.is_empty(), "{:?}", check.extra);
            let again = parse_service_file(Path::new("web.json"), &defs[0].to_file_json())
                .expect("round trip");
            assert_eq!(&again[0], &defs[0]);
        }
    }

    #[test]
    fn grpc_checks_are_read_in_both_spellings() {
        let lower = r#"{"service": {"name": "ledger", "check": {"grpc": "localhost:50051/billing.Ledger",
            "grpc_use_tls": true}}}"#;
        let capitalised = r#"{"Service": {"Name": "ledger", "Check": {"GRPC": "localhost:50051/billing.Ledger",
            "GRPCUseTLS": true}}}"#;
        for text in [lower, capitalised] {
            let defs = parse_service_file(Path::new("ledger.json"), text).expect("valid");
            let check = defs[0].check.as_ref().expect("check");
            assert_eq!(
                (check.grpc.as_deref(), check.grpc_use_tls),
                (Some("localhost:50051/billing.Ledger"), true),
                "{text}"
            );
            assert!(check.extra.is_empty(), "{:?}", check.extra);
            let again = parse_service_file(Path::new("ledger.json"), &defs[0].to_file_json())
                .expect("round trip");
            assert_eq!(&again[0], &defs[0]);
        }
        let plain: CheckDefinition = serde_json::from_str(r#"{"grpc": "x:1"}"#).expect("valid");
        assert!(!plain.grpc_use_tls, "cleartext unless said");
        let written = serde_json::to_string(&plain).expect("serializes");
        assert!(!written.contains("grpc_use_tls"), "{written}");
    }

    #[test]
    fn consul_defaults_go_critical_and_passing_at_once() {
        let absent = CheckDefinition::default();
        assert_eq!((absent.fall(), absent.rise()), (1, 1));
        let zero: CheckDefinition = serde_json::from_str(
            r#"{"tcp": "x:1", "failures_before_critical": 0, "success_before_passing": 0}"#,
        )
        .expect("valid");
        assert_eq!((zero.fall(), zero.rise()), (1, 1), "0 is Consul's default");
        let err = parse_service_file(
            Path::new("x.json"),
            "{\"service\": {\"name\": \"web\",\n \"check\": {\"failures_before_critical\": -1}}}",
        )
        .expect_err("negative");
        assert!(err.to_string().starts_with("x.json:2:"), "{err}");
    }

    #[test]
    fn bad_documents_say_where() {
        let err = parse_service_file(Path::new("d/x.json"), "{\n \"service\": {\"port\": 1}\n}")
            .expect_err("no name");
        assert!(err.to_string().starts_with("d/x.json:2:"), "{err}");
        let err = parse_service_file(Path::new("x.json"), "{\"servic\": {}}").expect_err("typo");
        assert!(err.message.contains("servic"), "{err}");
        let err = parse_service_file(Path::new("x.json"), r#"{"service": {"name": "a/b"}}"#)
            .expect_err("slash");
        assert!(err.message.contains("must not contain"), "{err}");
    }

    #[test]
    fn etcd_keys_and_values_agree() {
        let key = etcd_key(DEFAULT_ETCD_PREFIX, "mongo-primary", "mongo-1");
        assert_eq!(key, "/sluice/services/mongo-primary/mongo-1");
        assert_eq!(
            parse_etcd_key(DEFAULT_ETCD_PREFIX, &key),
            Some(("mongo-primary", "mongo-1"))
        );
        assert_eq!(
            parse_etcd_key(DEFAULT_ETCD_PREFIX, "/sluice/services/x"),
            None
        );
        let def = ServiceDefinition {
            name: "mongo-primary".into(),
            id: "mongo-1".into(),
            address: "10.0.0.3".into(),
            port: 27017,
            tags: vec!["primary".into()],
            meta: BTreeMap::new(),
            check: None,
            checks: Vec::new(),
            extra: BTreeMap::new(),
        };
        let entry = KvEntry::new(key.clone(), def.to_etcd_value(), 7);
        assert_eq!(
            parse_etcd_entry(DEFAULT_ETCD_PREFIX, &entry).expect("valid"),
            def
        );
        let moved = KvEntry::new(
            etcd_key(DEFAULT_ETCD_PREFIX, "other", "mongo-1"),
            def.to_etcd_value(),
            8,
        );
        assert!(parse_etcd_entry(DEFAULT_ETCD_PREFIX, &moved).is_err());
        let (found, errors) = instances_from_entries(
            &RegistryKind::Etcd {
                prefix: DEFAULT_ETCD_PREFIX.into(),
            },
            [&entry, &moved],
        );
        assert_eq!((found.len(), errors.len()), (1, 1));
    }
}
