//! Answers a `request` policy lets the host give again (`cache-answer`): only to requests that
//! agree on every part the call read, only until their time is up, not after a KV change or a
//! reload, never for a policy that does not ask; and within a bounded memory.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;
use sluice_config::PolicyWorld;
use sluice_policy_host::types::{Action, HeaderEdit, HttpRequest};
use sluice_policy_host::{
    AnswerMemory, KvView, MemoryKv, PolicyHost, RequestHandle, RequestOutcome, RequestView,
};
use sluice_policy_test_artifacts as artifacts;

/// The test guest reading `reads` and letting the host reuse its answers for `ttl_ms`.
fn reusing(kv: Arc<dyn KvView>, reads: &[&str], ttl_ms: u64) -> (PolicyHost, RequestHandle) {
    let host = host_with_kv(kv);
    let config = json!({"reads": reads, "ttl_ms": ttl_ms});
    let loaded = policy(
        "reuse",
        artifacts::REUSING_REQUEST,
        PolicyWorld::Request,
        config,
    );
    let report = host.apply_config(&[loaded]);
    assert!(report.is_ok(), "{report:?}");
    let handle = host.request("reuse").expect("a request policy");
    (host, handle)
}

/// The guest's `x-seen` for `request`, answered through `memory`.
fn ask(handle: &RequestHandle, memory: &mut AnswerMemory, request: &HttpRequest) -> String {
    let mut view = RequestView::default();
    view.copy_from(request);
    match handle.on_request_remembered(&mut view, memory) {
        RequestOutcome::Decided(Action::Forward(forward)) => match forward.headers.as_slice() {
            [HeaderEdit::Set((name, seen))] if name == "x-seen" => seen.clone(),
            other => panic!("unexpected edits {other:?}"),
        },
        other => panic!("the policy did not forward: {other:?}"),
    }
}

/// Calls that ran the guest, and answers given again, as the admin listing counts them.
fn counts(host: &PolicyHost) -> (u64, u64) {
    let status = &host.list()[0];
    (status.calls, status.answers_reused)
}

fn get(path: &str, fields: &[(&str, &str)]) -> HttpRequest {
    http_request(path, fields)
}

#[test]
fn an_answer_is_given_again_only_to_requests_that_agree_on_every_part_the_call_read() {
    let (host, handle) = reusing(Arc::new(MemoryKv::new()), &["path", "field:x-user"], 60_000);
    let mut memory = AnswerMemory::new();
    let alice_a = get("/a", &[("x-user", "alice")]);
    assert_eq!(ask(&handle, &mut memory, &alice_a), "/a;alice");
    assert_eq!(counts(&host), (1, 0));

    assert_eq!(ask(&handle, &mut memory, &alice_a), "/a;alice");
    // Fields and parts the call did not read do not matter, nor does a field name's case.
    let mut unread_differ = get("/a", &[("X-User", "alice"), ("x-other", "1")]);
    unread_differ.method = "POST".into();
    assert_eq!(ask(&handle, &mut memory, &unread_differ), "/a;alice");
    assert_eq!(counts(&host), (1, 2));
    assert_eq!(memory.reused(), 2);

    let differing = [
        get("/b", &[("x-user", "alice")]),
        get("/a", &[("x-user", "bob")]),
        get("/a", &[]),
        // Every value of a field read is part of the key, not just the first.
        get("/a", &[("x-user", "alice"), ("x-user", "mallory")]),
    ];
    for request in &differing {
        ask(&handle, &mut memory, request);
    }
    assert_eq!(counts(&host), (1 + differing.len() as u64, 2));
    assert_eq!(memory.len(), 1 + differing.len());
}

#[test]
fn every_part_a_call_can_read_keys_its_answer() {
    type Change = fn(&mut HttpRequest);
    let cases: [(&str, Change); 8] = [
        ("method", |r| r.method = "PUT".into()),
        ("scheme", |r| r.scheme = "https".into()),
        ("host", |r| r.host = "other.test".into()),
        ("query", |r| r.query = Some("page=2".into())),
        ("headers", |r| r.headers.push(("x-any".into(), "1".into()))),
        ("peer", |r| r.peer.source_port += 1),
        ("route", |r| r.route.name = "other-route".into()),
        ("field:x-key", |r| {
            r.headers.push(("x-key".into(), "k".into()))
        }),
    ];
    for (part, change) in cases {
        let (host, handle) = reusing(Arc::new(MemoryKv::new()), &[part], 60_000);
        let mut memory = AnswerMemory::new();
        let request = get("/", &[]);
        ask(&handle, &mut memory, &request);
        ask(&handle, &mut memory, &request);
        assert_eq!(
            counts(&host),
            (1, 1),
            "{part}: the same request is answered again"
        );
        let mut changed = request.clone();
        change(&mut changed);
        ask(&handle, &mut memory, &changed);
        assert_eq!(
            counts(&host),
            (2, 1),
            "{part}: a change of it calls the policy"
        );
    }
}

/// A KV view that keeps no generation: answers are keyed by the values read.
struct ValuesOnly(MemoryKv);

impl KvView for ValuesOnly {
    fn get(&self, key: &str) -> Option<String> {
        self.0.get(key)
    }
}

#[test]
fn a_kv_change_ends_the_reuse_of_answers_that_read_kv() {
    let kv = Arc::new(MemoryKv::new());
    kv.set("secret", "one");
    let (host, handle) = reusing(Arc::clone(&kv) as Arc<dyn KvView>, &["kv:secret"], 60_000);
    let mut memory = AnswerMemory::new();
    let request = get("/", &[]);
    assert_eq!(ask(&handle, &mut memory, &request), "one");
    assert_eq!(ask(&handle, &mut memory, &request), "one");
    kv.set("secret", "two");
    assert_eq!(ask(&handle, &mut memory, &request), "two");
    assert_eq!(ask(&handle, &mut memory, &request), "two");
    assert_eq!(counts(&host), (2, 2));

    // Without a generation, by value: another key's change keeps the answer, its own ends it.
    let values = Arc::new(ValuesOnly(MemoryKv::new()));
    values.0.set("secret", "one");
    let (host, handle) = reusing(
        Arc::clone(&values) as Arc<dyn KvView>,
        &["kv:secret"],
        60_000,
    );
    assert_eq!(ask(&handle, &mut memory, &request), "one");
    values.0.set("unrelated", "x");
    assert_eq!(ask(&handle, &mut memory, &request), "one");
    values.0.remove("secret");
    assert_eq!(ask(&handle, &mut memory, &request), "");
    assert_eq!(counts(&host), (2, 1));
}

#[test]
fn an_answer_is_not_given_after_its_time_nor_after_a_reload() {
    let kv: Arc<dyn KvView> = Arc::new(MemoryKv::new());
    let (host, handle) = reusing(Arc::clone(&kv), &["path"], 300);
    let mut memory = AnswerMemory::new();
    let request = get("/", &[]);
    ask(&handle, &mut memory, &request);
    ask(&handle, &mut memory, &request);
    assert_eq!(counts(&host), (1, 1));
    std::thread::sleep(Duration::from_millis(400));
    ask(&handle, &mut memory, &request);
    assert_eq!(counts(&host), (2, 1), "the answer's 300 ms are over");

    // A new version (another config) forgets what the previous one let the host reuse.
    let config = json!({"reads": ["path"], "ttl_ms": 60_000});
    let reloaded = policy(
        "reuse",
        artifacts::REUSING_REQUEST,
        PolicyWorld::Request,
        config,
    );
    assert!(host.apply_config(&[reloaded]).is_ok());
    ask(&handle, &mut memory, &request);
    assert_eq!(counts(&host), (3, 1));
    ask(&handle, &mut memory, &request);
    assert_eq!(counts(&host), (3, 2));
}

#[test]
fn a_policy_that_does_not_ask_is_called_for_every_request() {
    let (host, handle) = reusing(Arc::new(MemoryKv::new()), &["path"], 0);
    let mut memory = AnswerMemory::new();
    for _ in 0..3 {
        ask(&handle, &mut memory, &get("/", &[]));
    }
    assert_eq!(counts(&host), (3, 0));
    assert!(memory.is_empty());
}

#[test]
fn the_memory_of_one_policy_stays_bounded() {
    let (host, handle) = reusing(Arc::new(MemoryKv::new()), &["field:x-key"], 60_000);
    let mut memory = AnswerMemory::new();
    let filler = "v".repeat(8 << 10);
    for i in 0..300 {
        let value = format!("{i}{filler}");
        ask(&handle, &mut memory, &get("/", &[("x-key", &value)]));
    }
    // Each answer keeps about 16 KiB of key: far fewer than 300 fit in a policy's 1 MiB.
    assert!(
        (1..=64).contains(&memory.len()),
        "{} answers kept",
        memory.len()
    );
    // The first value's answer went when the memory started over.
    ask(
        &handle,
        &mut memory,
        &get("/", &[("x-key", &format!("0{filler}"))]),
    );
    assert_eq!(counts(&host), (301, 0));
}

#[test]
fn field_values_are_keyed_by_their_bytes_not_by_the_text_the_policy_was_shown() {
    let (host, handle) = reusing(Arc::new(MemoryKv::new()), &["field:x-key"], 60_000);
    let mut memory = AnswerMemory::new();
    // Both values read as "a\u{fffd}" to the policy; only the same bytes may share an answer.
    let ask_bytes = |memory: &mut AnswerMemory, value: &[u8]| {
        let mut view = RequestView::default();
        view.set_request_line("GET", "http", Some(b"example.test"), "/", None);
        view.push_field(b"x-key", value);
        match handle.on_request_remembered(&mut view, memory) {
            RequestOutcome::Decided(Action::Forward(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    ask_bytes(&mut memory, b"a\xff");
    ask_bytes(&mut memory, b"a\xff");
    ask_bytes(&mut memory, b"a\xfe");
    assert_eq!(counts(&host), (2, 1));
}
