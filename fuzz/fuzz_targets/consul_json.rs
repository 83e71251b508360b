//! Consul service definitions (`{"service": {...}}` / `{"services": [...]}`, and etcd's bare
//! object) as discovery's `file` and `etcd` sources read them
//! (`sluice_discovery::fuzzing::*_document`, i.e. `sluice_kv::registry`'s parser plus the
//! conversion to catalog instances), on arbitrary bytes — anyone who can write into the
//! registry directory or etcd prefix controls them.
//!
//! Properties:
//! - never panics;
//! - an accepted file declares at least one instance, each with a service name and id usable
//!   as key segments (non-empty, no `/`, no leading `.`, no control character), and its origin;
//! - each accepted definition written back (`to_file_json`, `to_etcd_value`) reads back the
//!   same (etcd fills in the id from the key);
//! - a rejected document's error names the document and points at a line of it, and a column
//!   within that line (serde_json counts columns in bytes, and 0 right after a newline);
//! - an etcd value is accepted only if it names the service and id of its key.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sluice_discovery::fuzzing::{etcd_document, file_document};
use sluice_discovery::{Instance, RegistryError};
use sluice_kv::KvEntry;
use sluice_kv::registry::{self, DEFAULT_ETCD_PREFIX, ServiceDefinition};

const SOURCE: &str = "fuzz";
const DIR: &str = "/var/lib/sluice/registry";
const ETCD_KEY: &str = "/sluice/services/web/web-1";

fuzz_target!(|data: &[u8]| {
    check_file(data);
    check_etcd(data);
});

fn check_file(data: &[u8]) {
    let origin = format!("{DIR}/fuzz.json");
    let Some(found) = file_document(SOURCE, Path::new(DIR), "fuzz.json", data) else {
        panic!("a *.json file is a registry document");
    };
    let text = String::from_utf8_lossy(data);
    let definitions = registry::parse_service_file(Path::new(&origin), &text);
    match (found, definitions) {
        (Ok(instances), Ok(definitions)) => {
            assert!(!instances.is_empty());
            assert_eq!(instances.len(), definitions.len());
            for (instance, definition) in instances.iter().zip(&definitions) {
                check_instance(instance, &origin);
                assert_eq!(
                    instance,
                    &Instance::from_definition(definition.clone(), SOURCE, origin.clone())
                        .at_revision(instance.revision)
                );
                round_trip(definition);
            }
        }
        (Err(error), Err(same)) => {
            assert_eq!(error, same);
            assert_eq!(error.origin, origin);
            // The file source parses the lossy text; positions are in it.
            check_position(&error, text.as_bytes());
        }
        (found, definitions) => {
            panic!("discovery says {found:?}, the registry parser {definitions:?}")
        }
    }
}

fn check_etcd(data: &[u8]) {
    match etcd_document(SOURCE, DEFAULT_ETCD_PREFIX, ETCD_KEY, data) {
        Some(Ok(instances)) => {
            assert_eq!(instances.len(), 1);
            let instance = &instances[0];
            check_instance(instance, ETCD_KEY);
            assert_eq!(
                (instance.service.as_str(), instance.id.as_str()),
                ("web", "web-1")
            );
        }
        Some(Err(error)) => {
            assert_eq!(error.origin, ETCD_KEY);
            check_position(&error, data);
        }
        None => panic!("an etcd key under the prefix is a registry document"),
    }
}

fn check_instance(instance: &Instance, origin: &str) {
    for segment in [&instance.service, &instance.id] {
        assert!(
            !segment.is_empty()
                && !segment.contains('/')
                && !segment.starts_with('.')
                && !segment.contains(char::is_control),
            "{segment:?} is not a key segment"
        );
    }
    assert_eq!(
        (instance.source.as_str(), instance.origin.as_str()),
        (SOURCE, origin)
    );
}

fn round_trip(definition: &ServiceDefinition) {
    let file = definition.to_file_json();
    let again = registry::parse_service_file(Path::new("again.json"), &file)
        .unwrap_or_else(|e| panic!("{e}: {file}"));
    assert_eq!(again.as_slice(), std::slice::from_ref(definition), "{file}");

    let key = registry::etcd_key(
        DEFAULT_ETCD_PREFIX,
        &definition.name,
        definition.instance_id(),
    );
    let entry = KvEntry::new(key, definition.to_etcd_value(), 1);
    let from_etcd = registry::parse_etcd_entry(DEFAULT_ETCD_PREFIX, &entry)
        .unwrap_or_else(|e| panic!("{e}: {}", entry.value_str()));
    let mut expected = definition.clone();
    expected.id = definition.instance_id().to_owned();
    assert_eq!(from_etcd, expected);
}

fn check_position(error: &RegistryError, data: &[u8]) {
    let lines: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    assert!(
        (1..=lines.len()).contains(&error.line),
        "line {} outside 1..={}: {error}",
        error.line,
        lines.len()
    );
    let width = lines[error.line - 1].len();
    assert!(
        error.column <= width + 1,
        "column {} outside 0..={}: {error}",
        error.column,
        width + 1
    );
}
