//! `sluice-kv` against a real etcd (Debian's `etcd-server`, started per test).

use std::sync::Arc;
use std::time::Duration;

use sluice_kv::{
    Backoff, EtcdClient, EtcdOptions, EtcdSource, KvMirror, KvSource, WatchEvent, WatchOptions,
};
use sluice_test_support::etcd::Etcd;

const EVENT_DEADLINE: Duration = Duration::from_secs(15);

fn client(etcd: &Etcd) -> Arc<EtcdClient> {
    Arc::new(EtcdClient::new(&[etcd.endpoint()], EtcdOptions::default()).expect("valid endpoint"))
}

fn fast_options() -> WatchOptions {
    WatchOptions {
        backoff: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(300),
        },
        liveness_interval: Duration::from_millis(500),
        ..WatchOptions::default()
    }
}

async fn next_event(watch: &mut sluice_kv::KvWatch) -> WatchEvent {
    tokio::time::timeout(EVENT_DEADLINE, watch.next())
        .await
        .expect("a watch event within the deadline")
        .expect("the watch is still running")
}

/// Skips status events and returns the next data event.
async fn next_data_event(watch: &mut sluice_kv::KvWatch) -> WatchEvent {
    loop {
        match next_event(watch).await {
            WatchEvent::Unavailable { .. } | WatchEvent::Restored => continue,
            other => return other,
        }
    }
}

#[tokio::test]
async fn unary_calls_read_what_etcd_holds() {
    let etcd = Etcd::start();
    let client = client(&etcd);
    etcd.put("web/debug", "True");
    etcd.put("web/allowed_hosts", "localhost, 33.10.0.100");
    etcd.put("webx", "outside the prefix");

    let entry = client
        .get("web/debug")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(entry.value_str(), "True");
    assert!(entry.revision > 0);
    assert!(client.get("web/missing").await.expect("get").is_none());

    let listed = client.list("web/").await.expect("list");
    let keys: Vec<_> = listed.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["web/allowed_hosts", "web/debug"]);

    let revision = client
        .put("web/installed_apps", b"tweetapp", None)
        .await
        .expect("put");
    assert!(revision > listed.revision);
    assert_eq!(etcd.get("web/installed_apps").as_deref(), Some("tweetapp"));
    assert_eq!(
        client.delete("web/installed_apps").await.expect("delete"),
        1
    );
    assert_eq!(etcd.get("web/installed_apps"), None);

    client
        .replace("svc/a/1", "svc/b/1", b"moved", None)
        .await
        .expect("txn");
    client
        .replace("svc/b/1", "svc/c/1", b"moved again", None)
        .await
        .expect("txn");
    assert_eq!(
        etcd.list("svc/"),
        [("svc/c/1".to_owned(), "moved again".to_owned())]
    );

    let source = KvSource::Etcd(EtcdSource {
        client: client.clone(),
    });
    assert_eq!(source.list("web/").await.expect("list").len(), 2);
    assert!(source.describe().contains(&etcd.endpoint()));
}

#[tokio::test]
async fn leases_keep_keys_alive_and_take_them_away() {
    let etcd = Etcd::start();
    let client = client(&etcd);
    let lease = client
        .lease_grant(Duration::from_secs(2))
        .await
        .expect("grant");
    assert_eq!(lease.ttl, Duration::from_secs(2));
    client
        .put("reg/a", b"1", Some(lease.id))
        .await
        .expect("put with lease");
    // Kept alive past its TTL.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(
            client
                .lease_keepalive(lease.id)
                .await
                .expect("keepalive")
                .is_some()
        );
    }
    assert_eq!(etcd.get("reg/a").as_deref(), Some("1"));
    client.lease_revoke(lease.id).await.expect("revoke");
    assert_eq!(etcd.get("reg/a"), None);
    assert!(
        client
            .lease_keepalive(lease.id)
            .await
            .expect("keepalive")
            .is_none()
    );
    client
        .lease_revoke(lease.id)
        .await
        .expect("revoking a gone lease is fine");

    // Not kept alive: expires by itself.
    let lease = client
        .lease_grant(Duration::from_secs(1))
        .await
        .expect("grant");
    client
        .put("reg/b", b"1", Some(lease.id))
        .await
        .expect("put with lease");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while etcd.get("reg/b").is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn watch_delivers_snapshot_then_changes_and_survives_a_restart() {
    let mut etcd = Etcd::start();
    etcd.put("app/a", "1");
    let source = KvSource::Etcd(EtcdSource {
        client: client(&etcd),
    });
    let mut watch = source.watch("app/", fast_options());
    let mirror = KvMirror::new();

    let snapshot = next_event(&mut watch).await;
    assert!(
        matches!(&snapshot, WatchEvent::Snapshot { entries, .. } if entries.len() == 1 && entries[0].value == b"1"),
        "{snapshot:?}"
    );
    mirror.apply(&snapshot);

    etcd.put("app/b", "2");
    etcd.put("other", "ignored");
    etcd.delete("app/a");
    let put = next_data_event(&mut watch).await;
    assert_eq!(mirror.apply(&put), ["app/b"]);
    let delete = next_data_event(&mut watch).await;
    assert_eq!(mirror.apply(&delete), ["app/a"]);

    // Outage: the watch says so, keeps retrying, and resumes without losing or repeating.
    etcd.stop();
    match next_event(&mut watch).await {
        WatchEvent::Unavailable { error } => {
            assert!(error.to_string().contains("127.0.0.1"), "{error}");
            mirror.apply(&WatchEvent::Unavailable { error });
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(mirror.unavailable().is_some());
    assert_eq!(
        mirror.get("app/b").map(|e| e.value),
        Some(b"2".to_vec()),
        "last good state kept"
    );
    etcd.restart();
    etcd.put("app/c", "3");
    let mut seen = Vec::new();
    while seen.is_empty() {
        let event = next_event(&mut watch).await;
        seen = mirror.apply(&event);
        assert!(
            !matches!(event, WatchEvent::Snapshot { .. }),
            "resumed, not re-read: {event:?}"
        );
    }
    assert_eq!(seen, ["app/c"]);
    assert!(mirror.unavailable().is_none());
    assert_eq!(mirror.list("app/").len(), 2);
}

#[tokio::test]
async fn watch_resynchronises_after_compaction() {
    let etcd = Etcd::start();
    let first = etcd.put("cfg/x", "1");
    etcd.put("cfg/x", "2");
    let last = etcd.put("cfg/y", "3");
    etcd.compact(last);
    let source = KvSource::Etcd(EtcdSource {
        client: client(&etcd),
    });
    // A consumer that last saw `first` asks to resume from there: history is gone.
    let mut watch = source.watch_from("cfg/", Some(first), fast_options());
    match next_data_event(&mut watch).await {
        WatchEvent::Snapshot { entries, revision } => {
            assert_eq!(revision, last);
            let values: Vec<_> = entries
                .iter()
                .map(|e| (e.key.as_str(), e.value_str().into_owned()))
                .collect();
            assert_eq!(
                values,
                [("cfg/x", "2".to_owned()), ("cfg/y", "3".to_owned())]
            );
        }
        other => panic!("expected a fresh snapshot, got {other:?}"),
    }
    etcd.put("cfg/z", "4");
    assert!(matches!(next_data_event(&mut watch).await, WatchEvent::Put(e) if e.key == "cfg/z"));
}

#[tokio::test]
async fn unreachable_etcd_is_reported_with_its_address() {
    // A port nobody listens on: bind, read, release.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("probe port")
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let client =
        EtcdClient::new(std::slice::from_ref(&endpoint), EtcdOptions::default()).expect("valid");
    let error = client.get("x").await.expect_err("nothing listens there");
    assert!(error.is_transient());
    assert!(error.to_string().contains(&endpoint), "{error}");
    let source = KvSource::Etcd(EtcdSource {
        client: Arc::new(client),
    });
    let mut watch = source.watch("", fast_options());
    assert!(matches!(
        next_event(&mut watch).await,
        WatchEvent::Unavailable { .. }
    ));
}

#[tokio::test]
async fn failover_to_the_next_endpoint() {
    let etcd = Etcd::start();
    etcd.put("k", "v");
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("probe port")
        .port();
    let client = EtcdClient::new(
        &[format!("http://127.0.0.1:{dead}"), etcd.endpoint()],
        EtcdOptions::default(),
    )
    .expect("valid");
    assert_eq!(
        client
            .get("k")
            .await
            .expect("second endpoint answers")
            .map(|e| e.value),
        Some(b"v".to_vec())
    );
}
