//! `sluice policy test` as a library call: recorded cases run through the real shipped
//! components, compared with their expected answers.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::{Path, PathBuf};

use sluice_policy_host::cases::{TestError, run_cases};
use sluice_policy_test_artifacts as artifacts;

fn cases_file(dir: &tempfile::TempDir, json: &str) -> PathBuf {
    let path = dir.path().join("cases.json");
    std::fs::write(&path, json).unwrap();
    path
}

const AUTHZ_CASES: &str = r#"[
  {"name": "known client system", "call": "authorize",
   "input": {"listener": "ecp", "source_address": "10.1.2.3", "source_port": 4000,
             "client_certificate": {"subject_cn": "app1", "dns_sans": [], "uri_sans": [],
               "issuer": "CN=ca", "sha256_fingerprint": "00", "not_before": 0, "not_after": 1}},
   "expect": "Allow"},
  {"name": "outside the source range",
   "input": {"listener": "ecp", "source_address": "192.0.2.1", "source_port": 4000},
   "expect": {"Deny": "WRONG REASON"}}
]"#;

#[test]
fn passing_cases_print_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = cases_file(
        &dir,
        r#"[{"name": "primary answers", "call": "evaluate",
             "input": {"instance": {"id": "a", "service": "s", "address": "127.0.0.1", "port": 1,
                                    "tags": [], "metadata": [], "health": "Unknown"},
                       "probe": {"kind": "Http", "status": 200, "headers": [],
                                 "body_prefix": [83, 85, 67, 67, 69, 83, 83], "latency_us": 5}},
             "expect": {"Up": {"role": "Primary", "weight": null}}},
            {"name": "a refused probe is down",
             "input": {"instance": {"id": "a", "service": "s", "address": "127.0.0.1", "port": 1,
                                    "tags": [], "metadata": [], "health": "Unknown"},
                       "probe": {"kind": "Http", "headers": [], "body_prefix": [], "latency_us": 5,
                                 "error": {"kind": "Refused", "message": "port 1"}}},
             "expect": {"Down": "connection refused: port 1"}}]"#,
    );
    let report = run_cases(Path::new(artifacts::MIRROR_PRIMARY), &cases, None).unwrap();
    assert!(report.passed(), "{report}");
    assert_eq!(
        report.to_string(),
        format!(
            "ok: 2 cases passed ({}, world health)",
            artifacts::MIRROR_PRIMARY
        )
    );
}

#[test]
fn a_mismatch_fails_with_a_diff_naming_the_case() {
    let dir = tempfile::tempdir().unwrap();
    let cases = cases_file(&dir, AUTHZ_CASES);
    let config = r#"{"client_systems": ["app1"], "source_cidrs": ["10.0.0.0/8"]}"#;
    let report = run_cases(Path::new(artifacts::ECP_AUTHZ), &cases, Some(config)).unwrap();
    assert!(!report.passed());
    assert!(report.cases[0].passed);
    assert!(!report.cases[1].passed);
    let printed = report.to_string();
    let got = &report.cases[1].got;
    assert!(got.contains("\"Deny\": "), "{got}");
    assert!(
        printed.starts_with(&format!(
            "FAIL \"outside the source range\": expected (-) and got (+) differ:\n      {{\n    -   \"Deny\": \"WRONG REASON\"\n    +   {}\n      }}\n",
            got.lines().nth(1).unwrap().trim()
        )),
        "{printed}"
    );
    assert!(
        printed.ends_with(&format!(
            "FAILED: 1 of 2 cases failed ({}, world authz)",
            artifacts::ECP_AUTHZ
        )),
        "{printed}"
    );
}

#[test]
fn routing_cases_compare_routes_and_rejections() {
    let dir = tempfile::tempdir().unwrap();
    let cases = cases_file(
        &dir,
        r#"[{"name": "a bad tag is an entry error", "call": "build-routes",
             "input": [{"id": "w1", "service": "web", "address": "10.0.0.1", "port": 80,
                        "tags": ["urlprefix-/web bogus=1"], "metadata": [], "health": "Passing"}],
             "expect": {"routes": []}}]"#,
    );
    let report = run_cases(Path::new(artifacts::URLPREFIX), &cases, None).unwrap();
    assert!(!report.passed(), "the entry error was not expected");
    assert!(
        report.cases[0].got.contains("\"instance_id\": \"w1\""),
        "{}",
        report.cases[0].got
    );
}

#[test]
fn a_trapping_case_shows_the_failure_and_the_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let cases = cases_file(
        &dir,
        r#"[{"name": "panics", "input": {"listener": "panic", "source_address": "127.0.0.1",
             "source_port": 1}, "expect": "Allow"}]"#,
    );
    // The call has the default 5 ms deadline; on a loaded machine a panic (formatting, stderr)
    // can miss it, so a timed-out attempt is retried.
    let report = (0..5)
        .map(|_| run_cases(Path::new(artifacts::MISBEHAVING_AUTHZ), &cases, None).unwrap())
        .find(|report| !report.cases[0].got.contains("timed out"))
        .expect("the call timed out five times");
    assert!(!report.passed());
    let got = &report.cases[0].got;
    assert!(got.contains("\"failed\": \"trapped: "), "{got}");
    assert!(
        got.contains("sluice_policy_test_guests::misbehave_on"),
        "{got}"
    );
}

#[test]
fn bad_cases_are_refused_before_any_runs_naming_the_case() {
    let dir = tempfile::tempdir().unwrap();
    let module = Path::new(artifacts::ECP_AUTHZ);
    let config = Some(r#"{"client_systems": "app1"}"#);
    let error = |json: &str| {
        run_cases(module, &cases_file(&dir, json), config)
            .unwrap_err()
            .to_string()
    };
    let cases = dir.path().join("cases.json");
    let shown = cases.display();
    assert_eq!(
        error(r#"[{"name": "x", "call": "evaluate", "input": {}, "expect": "Allow"}]"#),
        format!(
            "{shown}: case 1 (\"x\"): calls `evaluate`, but the module implements world `authz`, whose call is `authorize`"
        )
    );
    assert_eq!(
        error(r#"[{"name": "x", "input": {"listener": "l"}, "expect": "Allow"}]"#),
        format!(
            "{shown}: case 1 (\"x\"): input is not a valid peer object: missing field `source_address`"
        )
    );
    assert!(
        error(
            r#"[{"name": "x", "input": {"listener": "l", "source_address": "::1", "source_port": 1}, "expect": "Yes"}]"#
        )
        .starts_with(&format!(
            "{shown}: case 1 (\"x\"): expect is not a valid decision (\"Allow\" or {{\"Deny\": \"reason\"}}): unknown variant `Yes`"
        ))
    );
    assert!(error("{}").starts_with(&format!("{shown}: not a list of cases")));
    assert_eq!(error("[]"), format!("{shown}: no cases"));
    assert!(
        error(r#"[{"name": "x", "input": 1, "expect": 2, "extra": 3}]"#)
            .contains("unknown field `extra`")
    );

    let configure = run_cases(module, &cases_file(&dir, AUTHZ_CASES), Some("{}")).unwrap_err();
    assert!(
        matches!(&configure, TestError::Configure(message) if message.contains("nothing to allow")),
        "{configure}"
    );
}

#[test]
fn request_cases_call_on_response_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let module = Path::new(artifacts::HEADER_GATE);
    let config = Some(r#"{"key": "sesame"}"#);
    let response = |context: &str, expect: &str| {
        format!(
            r#"[{{"name": "tagged", "call": "on-response",
                 "input": {{"status": 200, "headers": [["content-type", "text/plain"]],
                           "context": "{context}"}},
                 "expect": {expect}}}]"#
        )
    };
    let passing = cases_file(
        &dir,
        &response("blue", r#"[{"Set": ["x-tagged", "blue"]}]"#),
    );
    let report = run_cases(module, &passing, config).unwrap();
    assert!(report.passed(), "{report}");

    let failing = cases_file(&dir, &response("blue", r#"[{"Remove": "x-tagged"}]"#));
    let report = run_cases(module, &failing, config).unwrap();
    assert!(!report.passed());
    let shown = report.to_string();
    assert!(
        shown.contains("-     \"Remove\": \"x-tagged\"") && shown.contains("+       \"x-tagged\","),
        "{shown}"
    );

    let wrong_input = cases_file(
        &dir,
        r#"[{"name": "x", "call": "on-response", "input": {"status": 200}, "expect": []}]"#,
    );
    let error = run_cases(module, &wrong_input, config)
        .unwrap_err()
        .to_string();
    assert!(error.contains("missing field `context`"), "{error}");
    let wrong_call = cases_file(
        &dir,
        r#"[{"name": "x", "call": "authorize", "input": {}, "expect": []}]"#,
    );
    let error = run_cases(module, &wrong_call, config)
        .unwrap_err()
        .to_string();
    assert!(
        error.ends_with("whose calls are `on-request` and `on-response`"),
        "{error}"
    );
}
