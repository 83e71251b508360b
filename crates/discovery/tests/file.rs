//! Discovery over real files: the seed-004 definition forms, add/change/remove/malformed, and
//! merging with a static source.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sluice_discovery::{Catalog, Discovery, DiscoveryOptions, SourceConfig, SourceSpec};
use sluice_kv::WatchOptions;
use sluice_kv::registry::ServiceDefinition;

const DEADLINE: Duration = Duration::from_secs(10);

fn fast_watch() -> WatchOptions {
    WatchOptions {
        poll_interval: Duration::from_millis(50),
        ..WatchOptions::default()
    }
}

fn fast() -> DiscoveryOptions {
    DiscoveryOptions {
        debounce: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
    }
}

fn file_source(dir: &Path) -> SourceConfig {
    SourceConfig {
        name: "files".into(),
        spec: SourceSpec::File {
            dir: dir.to_owned(),
            watch: fast_watch(),
            safety_poll: None,
        },
    }
}

/// Waits for a catalog that satisfies `check`.
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

/// The definitions seed 004 shows, as files: `service` with a tcp check, an `args` check, an
/// `http` check, and the `services` form with `checks`.
fn write_seed_fixtures(dir: &Path) {
    std::fs::write(
        dir.join("web.json"),
        r#"{
  "service": {
    "name": "web",
    "port": 8000,
    "tags": ["web", "application", "urlprefix-/web"],
    "check": {"id": "web_app_status", "name": "Web Application Status",
              "tcp": "localhost:8000", "interval": "30s", "timeout": "20s"}
  }
}"#,
    )
    .expect("write web.json");
    std::fs::write(
        dir.join("mongo-primary.json"),
        r#"{
  "service": {
    "name": "mongo-primary",
    "id": "mongo-1",
    "address": "10.0.0.3",
    "port": 27017,
    "tags": ["nosql", "primary"],
    "check": {"args": ["/bin/sh", "-c", "mongo --eval 'db.isMaster().ismaster' | grep true"],
              "interval": "10s", "timeout": "2s"}
  }
}"#,
    )
    .expect("write mongo-primary.json");
    std::fs::write(
        dir.join("api.json"),
        r#"{"Service": {"Name": "api", "ID": "api-1", "Address": "127.0.0.1", "Port": 9000,
            "Check": {"HTTP": "http://127.0.0.1:9000/health", "Interval": "5s"}}}"#,
    )
    .expect("write api.json");
    std::fs::write(
        dir.join("mongo-secondaries.json"),
        r#"{"services": [
  {"name": "mongo-secondary", "id": "mongo-2", "port": 27017,
   "checks": [{"tcp": "mongo-2:27017", "interval": "10s"}, {"args": ["/bin/true"], "interval": "10s"}]},
  {"name": "mongo-secondary", "id": "mongo-3", "port": 27017}
]}"#,
    )
    .expect("write mongo-secondaries.json");
}

#[tokio::test]
async fn seed_004_definition_forms_are_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_seed_fixtures(dir.path());
    let discovery = Discovery::start(vec![file_source(dir.path())], fast()).expect("start");
    let catalog = wait_for(&discovery, "five instances", |c| c.len() == 5).await;
    assert_eq!(
        ids(&catalog),
        ["api-1", "mongo-1", "mongo-2", "mongo-3", "web"]
    );

    let web = catalog.get("web").expect("web");
    assert_eq!((web.service.as_str(), web.port), ("web", 8000));
    assert!(web.tags.iter().any(|t| t == "urlprefix-/web"));
    assert_eq!(web.checks[0].tcp.as_deref(), Some("localhost:8000"));
    assert_eq!(web.checks[0].timeout.as_deref(), Some("20s"));
    assert_eq!(web.source, "files");
    assert!(web.origin.ends_with("/web.json"), "{}", web.origin);

    let mongo = catalog.get("mongo-1").expect("mongo-1");
    assert_eq!(mongo.service, "mongo-primary");
    assert_eq!(mongo.address, "10.0.0.3");
    assert_eq!(mongo.checks[0].args[0], "/bin/sh");

    let api = catalog.get("api-1").expect("api-1");
    assert_eq!(
        api.checks[0].http.as_deref(),
        Some("http://127.0.0.1:9000/health")
    );
    let secondary = catalog.get("mongo-2").expect("mongo-2");
    assert_eq!(secondary.checks.len(), 2);
    assert_eq!(secondary.checks[1].args, ["/bin/true"]);
    let status = &catalog.sources()[0];
    assert!(status.synced && !status.stale() && status.invalid.is_empty());
    assert_eq!(status.instances, 5);
}

#[tokio::test]
async fn files_added_changed_removed_and_malformed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        // As the sidecar does: a dot-named temporary, then rename.
        let tmp = dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, dir.path().join(name)).expect("rename");
    };
    write(
        "a.json",
        r#"{"service": {"name": "web", "id": "a", "port": 1}}"#,
    );
    let discovery = Discovery::start(vec![file_source(dir.path())], fast()).expect("start");
    let first = wait_for(&discovery, "a", |c| ids(c) == ["a"]).await;

    write(
        "b.json",
        r#"{"service": {"name": "web", "id": "b", "port": 2}}"#,
    );
    let added = wait_for(&discovery, "a and b", |c| ids(c) == ["a", "b"]).await;
    assert!(added.version() > first.version());
    let diff = first.diff(&added);
    assert_eq!(diff.added.len(), 1);
    assert!(diff.removed.is_empty() && diff.changed.is_empty());

    write(
        "a.json",
        r#"{"service": {"name": "web", "id": "a", "port": 11}}"#,
    );
    let changed = wait_for(&discovery, "a on port 11", |c| {
        c.get("a").is_some_and(|i| i.port == 11)
    })
    .await;
    assert_eq!(added.diff(&changed).changed.len(), 1);

    // Malformed: skipped with path:line:col, the others keep working.
    write(
        "c.json",
        "{\n  \"service\": {\"name\": \"web\",\n  \"port\": oops}\n}",
    );
    let broken = wait_for(&discovery, "c.json reported", |c| {
        !c.sources()[0].invalid.is_empty()
    })
    .await;
    assert_eq!(ids(&broken), ["a", "b"]);
    let error = broken.sources()[0].invalid[0].to_string();
    let expected = format!("{}:3:", dir.path().join("c.json").display());
    assert!(
        error.starts_with(&expected),
        "{error} should start with {expected}"
    );

    // Fixed: it comes in and the error goes.
    write(
        "c.json",
        r#"{"service": {"name": "web", "id": "c", "port": 3}}"#,
    );
    let fixed = wait_for(&discovery, "c", |c| ids(c) == ["a", "b", "c"]).await;
    assert!(fixed.sources()[0].invalid.is_empty());

    std::fs::remove_file(dir.path().join("a.json")).expect("rm");
    let removed = wait_for(&discovery, "a gone", |c| ids(c) == ["b", "c"]).await;
    assert_eq!(
        fixed
            .diff(&removed)
            .removed
            .iter()
            .map(|i| i.id.as_str())
            .collect::<Vec<_>>(),
        ["a"]
    );
}

#[tokio::test]
async fn static_and_file_sources_merge_and_the_first_listed_wins() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("x.json"),
        r#"{"services": [{"name": "web", "id": "shared", "port": 2}, {"name": "web", "id": "filed", "port": 3}]}"#,
    )
    .expect("write");
    let definition: ServiceDefinition = serde_json::from_str(
        r#"{"name": "web", "id": "shared", "address": "127.0.0.1", "port": 1}"#,
    )
    .expect("definition");
    let discovery = Discovery::start(
        vec![
            SourceConfig {
                name: "config".into(),
                spec: SourceSpec::Static(vec![definition]),
            },
            file_source(dir.path()),
        ],
        fast(),
    )
    .expect("start");
    // The static part is there from the first catalog.
    assert_eq!(ids(&discovery.current()), ["shared"]);
    let catalog = wait_for(&discovery, "both sources", |c| c.len() == 2).await;
    let shared = catalog.get("shared").expect("shared");
    assert_eq!((shared.port, shared.source.as_str()), (1, "config"));
    assert_eq!(catalog.sources()[1].shadowed, ["shared"]);
    assert_eq!(catalog.sources()[1].instances, 1);
}

#[tokio::test]
async fn bad_static_definitions_and_duplicate_names_are_refused() {
    let bad: ServiceDefinition =
        serde_json::from_str(r#"{"name": "we/b"}"#).expect("parses, invalid");
    let error = Discovery::start(
        vec![SourceConfig {
            name: "config".into(),
            spec: SourceSpec::Static(vec![bad]),
        }],
        fast(),
    )
    .expect_err("invalid");
    assert!(error.to_string().contains("must not contain"), "{error}");
    let dir = tempfile::tempdir().expect("tempdir");
    let error = Discovery::start(
        vec![file_source(dir.path()), file_source(dir.path())],
        fast(),
    )
    .expect_err("duplicate");
    assert!(error.to_string().contains("used twice"), "{error}");
}

/// A file source driven by inotify: polls an hour apart, so only the directory watch can
/// deliver these changes in time.
fn notified_source(dir: &Path) -> SourceConfig {
    SourceConfig {
        name: "notified".into(),
        spec: SourceSpec::File {
            dir: dir.to_owned(),
            watch: WatchOptions {
                poll_interval: Duration::from_secs(3600),
                ..WatchOptions::default()
            },
            safety_poll: Some(Duration::from_secs(3600)),
        },
    }
}

#[tokio::test]
async fn inotify_brings_file_changes_without_waiting_for_the_poll() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, id: &str| {
        std::fs::write(
            dir.path().join(name),
            format!(r#"{{"service": {{"name": "web", "id": "{id}", "port": 1}}}}"#),
        )
        .expect("write")
    };
    write("a.json", "a");
    let discovery = Discovery::start(vec![notified_source(dir.path())], fast()).expect("start");
    wait_for(&discovery, "the first read", |c| ids(c) == ["a"]).await;
    write("b.json", "b");
    wait_for(&discovery, "b added", |c| ids(c) == ["a", "b"]).await;
    std::fs::remove_file(dir.path().join("a.json")).expect("remove");
    wait_for(&discovery, "a removed", |c| ids(c) == ["b"]).await;
}

#[tokio::test]
async fn a_directory_created_later_is_watched_once_it_exists() {
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("registry");
    let mut source = notified_source(&dir);
    // Not watchable yet: polled every 50 ms until inotify can take over.
    if let SourceSpec::File { watch, .. } = &mut source.spec {
        watch.poll_interval = Duration::from_millis(50);
    }
    let discovery = Discovery::start(vec![source], fast()).expect("start");
    std::fs::create_dir(&dir).expect("mkdir");
    wait_for(&discovery, "the directory read", |c| c.sources()[0].synced).await;
    std::fs::write(
        dir.join("a.json"),
        r#"{"service": {"name": "web", "id": "a", "port": 1}}"#,
    )
    .expect("write");
    wait_for(&discovery, "a added", |c| ids(c) == ["a"]).await;
}

#[tokio::test]
async fn applying_new_sources_keeps_unchanged_ones_and_restarts_changed_ones() {
    let (one, two) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    std::fs::write(
        one.path().join("a.json"),
        r#"{"service": {"name": "web", "id": "a", "port": 1}}"#,
    )
    .expect("write");
    std::fs::write(
        two.path().join("b.json"),
        r#"{"service": {"name": "web", "id": "b", "port": 2}}"#,
    )
    .expect("write");
    let pinned = |port: u16| SourceConfig {
        name: "pinned".into(),
        spec: SourceSpec::Static(vec![
            serde_json::from_str(&format!(
                r#"{{"name": "api", "id": "p", "address": "127.0.0.1", "port": {port}}}"#
            ))
            .expect("definition"),
        ]),
    };
    let discovery = Discovery::start(vec![file_source(one.path())], fast()).expect("start");
    wait_for(&discovery, "a", |c| ids(c) == ["a"]).await;

    let plan = Discovery::prepare(vec![file_source(one.path()), pinned(1)]).expect("valid");
    let summary = discovery.apply(plan, fast()).await.expect("applied");
    assert_eq!(
        (summary.kept, summary.started, summary.stopped),
        (vec!["files".to_owned()], vec!["pinned".to_owned()], vec![])
    );
    // Published at once; the kept file source still holds its instance.
    assert_eq!(ids(&discovery.current()), ["a", "p"]);

    // A changed static source and a file source on another directory: both restart.
    let mut moved = file_source(two.path());
    moved.name = "files".into();
    let plan = Discovery::prepare(vec![moved, pinned(2)]).expect("valid");
    let summary = discovery.apply(plan, fast()).await.expect("applied");
    assert_eq!(summary.started, ["files", "pinned"]);
    assert_eq!(summary.stopped, ["files", "pinned"]);
    let catalog = wait_for(&discovery, "b and the new p", |c| ids(c) == ["b", "p"]).await;
    assert_eq!(catalog.get("p").map(|p| p.port), Some(2));

    // An invalid set is refused before anything changes.
    let error = Discovery::prepare(vec![pinned(1), pinned(2)]).expect_err("duplicate");
    assert!(error.to_string().contains("used twice"), "{error}");
    assert_eq!(ids(&discovery.current()), ["b", "p"]);

    // None at all: an empty catalog.
    let plan = Discovery::prepare(Vec::new()).expect("valid");
    discovery.apply(plan, fast()).await.expect("applied");
    assert!(discovery.current().is_empty());
}
