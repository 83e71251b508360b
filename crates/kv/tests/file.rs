//! The `file` and `env` sources on real files.

use std::time::Duration;

use sluice_kv::registry::{self, RegistryKind};
use sluice_kv::{EnvSource, KvMirror, KvSource, WatchEvent, WatchOptions};

const EVENT_DEADLINE: Duration = Duration::from_secs(10);

fn fast() -> WatchOptions {
    WatchOptions {
        poll_interval: Duration::from_millis(50),
        ..WatchOptions::default()
    }
}

async fn next_event(watch: &mut sluice_kv::KvWatch) -> WatchEvent {
    tokio::time::timeout(EVENT_DEADLINE, watch.next())
        .await
        .expect("a watch event within the deadline")
        .expect("the watch is still running")
}

#[tokio::test]
async fn directory_source_reads_and_watches_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("web")).expect("mkdir");
    std::fs::write(dir.path().join("web/debug"), "True\n").expect("write");
    std::fs::write(dir.path().join("web/.hidden"), "x").expect("write");
    let source = KvSource::File(dir.path().to_owned());

    let entry = source
        .get("web/debug")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(entry.value, b"True", "one trailing newline is not data");
    assert_eq!(
        source.list("").await.expect("list").len(),
        1,
        "dot files are skipped"
    );

    let mut watch = source.watch("web/", fast());
    let mirror = KvMirror::new();
    mirror.apply(&next_event(&mut watch).await);
    assert_eq!(
        mirror.get("web/debug").map(|e| e.value),
        Some(b"True".to_vec())
    );

    std::fs::write(dir.path().join("web/allowed_hosts"), "localhost").expect("write");
    assert_eq!(
        mirror.apply(&next_event(&mut watch).await),
        ["web/allowed_hosts"]
    );
    std::fs::remove_file(dir.path().join("web/debug")).expect("rm");
    assert_eq!(mirror.apply(&next_event(&mut watch).await), ["web/debug"]);
    // An atomic replace (new inode, maybe same size and second) is still seen.
    std::fs::write(dir.path().join(".tmp"), "remote").expect("write");
    std::fs::rename(
        dir.path().join(".tmp"),
        dir.path().join("web/allowed_hosts"),
    )
    .expect("rename");
    let event = next_event(&mut watch).await;
    assert!(
        matches!(&event, WatchEvent::Put(e) if e.value == b"remote"),
        "{event:?}"
    );
}

#[tokio::test]
async fn document_source_keeps_last_good_values_through_a_bad_edit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kv.toml");
    std::fs::write(&path, "[web]\ndebug = true\n").expect("write");
    let source = KvSource::File(path.clone());
    let mut watch = source.watch("", fast());
    let mirror = KvMirror::new();
    mirror.apply(&next_event(&mut watch).await);
    assert_eq!(
        mirror.get("web/debug").map(|e| e.value),
        Some(b"true".to_vec())
    );

    std::fs::write(&path, "[web]\ndebug = \n").expect("write");
    match next_event(&mut watch).await {
        WatchEvent::Unavailable { error } => {
            let text = error.to_string();
            assert!(text.contains("kv.toml:2:"), "{text}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(
        mirror.get("web/debug").map(|e| e.value),
        Some(b"true".to_vec())
    );
    std::fs::write(&path, "[web]\ndebug = false\n").expect("write");
    assert!(matches!(next_event(&mut watch).await, WatchEvent::Restored));
    assert_eq!(mirror.apply(&next_event(&mut watch).await), ["web/debug"]);
    assert_eq!(
        mirror.get("web/debug").map(|e| e.value),
        Some(b"false".to_vec())
    );
}

#[tokio::test]
async fn env_source_lists_by_prefix() {
    let source = KvSource::Env(EnvSource::from_pairs([
        ("APP_A", "1"),
        ("APP_B", "2"),
        ("OTHER", "3"),
    ]));
    let keys: Vec<_> = source
        .list("APP_")
        .await
        .expect("list")
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, ["APP_A", "APP_B"]);
    assert!(source.get("MISSING").await.expect("get").is_none());
    let mut watch = source.watch("APP_", WatchOptions::default());
    assert!(
        matches!(next_event(&mut watch).await, WatchEvent::Snapshot { entries, .. } if entries.len() == 2)
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), watch.next())
            .await
            .is_err(),
        "an environment does not change"
    );
}

#[tokio::test]
async fn registry_directory_read_through_a_file_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("web-1.json"),
        r#"{"service": {"name": "web", "id": "web-1", "port": 8000, "tags": ["urlprefix-/web"]}}"#,
    )
    .expect("write");
    std::fs::write(dir.path().join("broken.json"), "{\"service\": ").expect("write");
    let entries = KvSource::File(dir.path().to_owned())
        .list("")
        .await
        .expect("list");
    let (instances, errors) = registry::instances_from_entries(&RegistryKind::File, &entries);
    assert_eq!(instances.len(), 1);
    assert_eq!(instances[0].tags, ["urlprefix-/web"]);
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].to_string().starts_with("broken.json:1:"),
        "{}",
        errors[0]
    );
}
