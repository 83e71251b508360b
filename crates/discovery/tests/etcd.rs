//! Discovery against a real etcd (Debian's `etcd-server`, one per test): puts and deletes,
//! lease expiry, an unreachable etcd at start, an outage (stale) and a restart (resume).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_discovery::{Catalog, Discovery, DiscoveryOptions, SourceConfig, SourceSpec};
use sluice_kv::registry::ServiceDefinition;
use sluice_kv::{Backoff, EtcdClient, EtcdOptions, WatchOptions};
use sluice_test_support::etcd::Etcd;

const DEADLINE: Duration = Duration::from_secs(20);
const PREFIX: &str = "/sluice/services/";

fn fast() -> DiscoveryOptions {
    DiscoveryOptions {
        debounce: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
    }
}

fn etcd_source(endpoint: String) -> SourceConfig {
    SourceConfig {
        name: "etcd".into(),
        spec: SourceSpec::Etcd {
            endpoints: vec![endpoint],
            prefix: PREFIX.into(),
            client: EtcdOptions {
                request_timeout: Duration::from_secs(1),
            },
            watch: WatchOptions {
                backoff: Backoff {
                    initial: Duration::from_millis(50),
                    max: Duration::from_millis(300),
                },
                liveness_interval: Duration::from_millis(300),
                ..WatchOptions::default()
            },
        },
    }
}

fn static_source() -> SourceConfig {
    let definition: ServiceDefinition = serde_json::from_str(
        r#"{"name": "web", "id": "pinned", "address": "127.0.0.1", "port": 1}"#,
    )
    .expect("definition");
    SourceConfig {
        name: "config".into(),
        spec: SourceSpec::Static(vec![definition]),
    }
}

async fn wait_for(
    discovery: &Discovery,
    what: &str,
    check: impl Fn(&Catalog) -> bool,
) -> Arc<Catalog> {
    let mut receiver = discovery.subscribe();
    let found = tokio::time::timeout(DEADLINE, async {
        loop {
            let current = Arc::clone(&receiver.borrow_and_update());
            if check(&current) {
                return current;
            }
            if receiver.changed().await.is_err() {
                panic!("discovery stopped while waiting for {what}");
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| {
        panic!(
            "no catalog with {what} within {DEADLINE:?}: {:#?}",
            discovery.current()
        )
    })
}

fn ids(catalog: &Catalog) -> Vec<&str> {
    catalog.instances().map(|i| i.id.as_str()).collect()
}

fn value(service: &str, id: &str, port: u16) -> String {
    format!(
        r#"{{"name": "{service}", "id": "{id}", "address": "127.0.0.1", "port": {port}, "tags": ["urlprefix-/{service}"]}}"#
    )
}

#[tokio::test]
async fn puts_deletes_and_malformed_values() {
    let etcd = Etcd::start();
    etcd.put(&format!("{PREFIX}web/w1"), &value("web", "w1", 8001));
    let discovery = Discovery::start(vec![etcd_source(etcd.endpoint())], fast()).expect("start");
    let first = wait_for(&discovery, "w1", |c| ids(c) == ["w1"]).await;
    let w1 = first.get("w1").expect("w1");
    assert_eq!((w1.service.as_str(), w1.port), ("web", 8001));
    assert_eq!(w1.origin, format!("{PREFIX}web/w1"));
    assert_eq!(w1.tags, ["urlprefix-/web"]);

    etcd.put(&format!("{PREFIX}web/w2"), &value("web", "w2", 8002));
    etcd.put(
        &format!("{PREFIX}web/bad"),
        "{\"name\": \"web\", \"port\": }",
    );
    let catalog = wait_for(&discovery, "w2 and the bad key", |c| {
        ids(c) == ["w1", "w2"] && !c.sources()[0].invalid.is_empty()
    })
    .await;
    let error = catalog.sources()[0].invalid[0].to_string();
    assert!(error.starts_with(&format!("{PREFIX}web/bad:1:")), "{error}");

    etcd.delete(&format!("{PREFIX}web/w1"));
    wait_for(&discovery, "w1 gone", |c| ids(c) == ["w2"]).await;
}

#[tokio::test]
async fn an_expired_lease_removes_a_dead_registrant() {
    let etcd = Etcd::start();
    let registrant = EtcdClient::new(&[etcd.endpoint()], EtcdOptions::default()).expect("client");
    let lease = registrant
        .lease_grant(Duration::from_secs(1))
        .await
        .expect("grant");
    registrant
        .put(
            &format!("{PREFIX}web/leased"),
            value("web", "leased", 8003).as_bytes(),
            Some(lease.id),
        )
        .await
        .expect("put");
    etcd.put(
        &format!("{PREFIX}web/forever"),
        &value("web", "forever", 8004),
    );
    let discovery = Discovery::start(vec![etcd_source(etcd.endpoint())], fast()).expect("start");
    wait_for(&discovery, "both", |c| ids(c) == ["forever", "leased"]).await;
    // The registrant "dies": nobody refreshes the lease, etcd expires it (TTL 1 s; etcd may
    // take a little longer than the TTL to revoke).
    let started = Instant::now();
    wait_for(&discovery, "leased gone", |c| ids(c) == ["forever"]).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn unreachable_at_start_serves_the_static_part_then_syncs() {
    let mut etcd = Etcd::start();
    etcd.put(&format!("{PREFIX}web/w1"), &value("web", "w1", 8001));
    etcd.stop();
    let discovery = Discovery::start(vec![static_source(), etcd_source(etcd.endpoint())], fast())
        .expect("start");
    let waiting = wait_for(&discovery, "the etcd error reported", |c| {
        c.sources()[1].last_error.is_some()
    })
    .await;
    assert_eq!(ids(&waiting), ["pinned"]);
    let status = &waiting.sources()[1];
    assert!(!status.synced && !status.stale());
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("127.0.0.1")),
        "{status:?}"
    );
    etcd.restart();
    let synced = wait_for(&discovery, "w1 after etcd came up", |c| {
        ids(c) == ["pinned", "w1"]
    })
    .await;
    assert!(synced.sources()[1].synced && synced.sources()[1].last_error.is_none());
}

#[tokio::test]
async fn an_outage_keeps_the_last_catalog_stale_and_a_restart_resumes() {
    let mut etcd = Etcd::start();
    etcd.put(&format!("{PREFIX}web/w1"), &value("web", "w1", 8001));
    let discovery = Discovery::start(vec![static_source(), etcd_source(etcd.endpoint())], fast())
        .expect("start");
    wait_for(&discovery, "w1", |c| ids(c) == ["pinned", "w1"]).await;

    etcd.stop();
    let stale = wait_for(&discovery, "stale", Catalog::stale).await;
    assert_eq!(
        ids(&stale),
        ["pinned", "w1"],
        "the last good catalog is kept"
    );
    assert!(stale.sources()[1].last_error.is_some());
    assert!(
        !stale.sources()[0].stale(),
        "the static part is never stale"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let age = discovery
        .current()
        .stale_age(Instant::now())
        .expect("still stale");
    assert!(age >= Duration::from_secs(1), "{age:?}");

    // Back on the same data: the watch resumes, and changes made after the restart arrive.
    etcd.restart();
    wait_for(&discovery, "fresh again", |c| !c.stale()).await;
    etcd.put(&format!("{PREFIX}web/w2"), &value("web", "w2", 8002));
    etcd.delete(&format!("{PREFIX}web/w1"));
    wait_for(&discovery, "w2 only", |c| ids(c) == ["pinned", "w2"]).await;
}
