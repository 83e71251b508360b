//! `sluice policy test FILE.wasm --cases CASES.json [--config JSON]`: runs recorded inputs
//! through a policy and compares its answers with the expected ones, as a library call.
//!
//! The cases file is a JSON list; each case names itself, optionally the export it calls (a
//! check that the file was written for this world), its input and the answer it expects, in
//! the formats of `sluice policy check --input` (docs/policy-authoring.md):
//!
//! ```json
//! [{"name": "office network", "call": "authorize",
//!   "input": {"listener": "ecp", "source_address": "10.1.2.3", "source_port": 4000},
//!   "expect": "Allow"}]
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use sluice_config::{PolicySource, PolicyWorld};

use crate::builtin::BuiltinModules;
use crate::check::{CheckError, POLICY_NAME, load, plural};
use crate::log_capture::{self, GuestLogLine};
use crate::world_call::{self, CallInput, Expected, ON_RESPONSE, call_export, outcome_json};

/// One case as written in the cases file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseSpec {
    name: String,
    #[serde(default)]
    call: Option<String>,
    input: serde_json::Value,
    expect: serde_json::Value,
}

/// Why the cases could not be run (the CLI prints it and exits non-zero).
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    /// The module could not be loaded (unreadable, not a policy, bad `--config`).
    #[error(transparent)]
    Module(#[from] CheckError),
    /// `configure` failed: no case can run.
    #[error("configure failed, no case was run: {0}")]
    Configure(String),
    /// The cases file could not be read.
    #[error("cannot read {path}: {source}")]
    ReadCases {
        /// The cases file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The cases file is not a list of cases.
    #[error(
        "{path}: not a list of cases ({detail}); expected [{{\"name\": …, \"call\": …, \"input\": …, \"expect\": …}}, …]"
    )]
    CasesFormat {
        /// The cases file.
        path: PathBuf,
        /// The JSON error.
        detail: String,
    },
    /// The file holds no case.
    #[error("{0}: no cases")]
    NoCases(PathBuf),
    /// One case does not fit the module's world.
    #[error("{path}: case {number} ({name:?}): {problem}")]
    Case {
        /// The cases file.
        path: PathBuf,
        /// 1-based position in the list.
        number: usize,
        /// The case's name.
        name: String,
        /// What is wrong.
        problem: String,
    },
}

/// How one case went.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// Whether the answer was the expected one.
    pub passed: bool,
    /// The expected answer, pretty JSON.
    pub expected: String,
    /// The answer (or `{"failed": …}`), pretty JSON.
    pub got: String,
    /// What the guest logged during the call.
    pub log: Vec<GuestLogLine>,
}

/// What `run_cases` found. Its `Display` is the command's output: one line when every case
/// passed, else a diff per failed case.
#[derive(Debug, Clone)]
pub struct TestReport {
    /// The module tested: its file or `builtin:NAME`.
    pub file: PolicySource,
    /// Its world.
    pub world: PolicyWorld,
    /// In the file's order.
    pub cases: Vec<CaseResult>,
}

impl TestReport {
    /// Whether every case passed: the CLI's exit status.
    pub fn passed(&self) -> bool {
        self.cases.iter().all(|case| case.passed)
    }
}

impl fmt::Display for TestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failed = self.cases.iter().filter(|case| !case.passed).count();
        let total = self.cases.len();
        let what = format!("{}, world {}", self.file, self.world.as_str());
        if failed == 0 {
            return write!(f, "ok: {total} case{} passed ({what})", plural(total));
        }
        for case in self.cases.iter().filter(|case| !case.passed) {
            writeln!(f, "FAIL {:?}: expected (-) and got (+) differ:", case.name)?;
            for line in line_diff(&case.expected, &case.got) {
                writeln!(f, "    {line}")?;
            }
            if !case.log.is_empty() {
                let mut log = String::new();
                for line in &case.log {
                    log.push_str(&format!("\n    {line}"));
                }
                writeln!(f, "  guest log:{log}")?;
            }
        }
        write!(
            f,
            "FAILED: {failed} of {total} case{} failed ({what})",
            plural(total)
        )
    }
}

/// Loads the module, configures it with `config_json` (default `{}`) and runs every case in
/// `cases_path`, each on the same configured policy.
pub fn run_cases(
    path: &Path,
    cases_path: &Path,
    config_json: Option<&str>,
) -> Result<TestReport, TestError> {
    let source = PolicySource::File(path.to_owned());
    run_cases_on(&source, &Arc::default(), cases_path, config_json)
}

/// [`run_cases`] for a file or a built-in policy (`builtin:NAME`, looked up in `builtins`).
pub fn run_cases_on(
    source: &PolicySource,
    builtins: &Arc<BuiltinModules>,
    cases_path: &Path,
    config_json: Option<&str>,
) -> Result<TestReport, TestError> {
    let text = std::fs::read_to_string(cases_path).map_err(|source| TestError::ReadCases {
        path: cases_path.to_owned(),
        source,
    })?;
    let specs: Vec<CaseSpec> = serde_json::from_str(&text).map_err(|e| TestError::CasesFormat {
        path: cases_path.to_owned(),
        detail: e.to_string(),
    })?;
    if specs.is_empty() {
        return Err(TestError::NoCases(cases_path.to_owned()));
    }
    let loaded = load(source, builtins, config_json)?;
    if let Err(error) = &loaded.configure {
        let mut message = error.clone();
        for line in &loaded.log {
            message.push_str(&format!("\n  guest log: {line}"));
        }
        return Err(TestError::Configure(message));
    }
    let world = loaded.module.world;
    let cases = parse_cases(world, specs, cases_path)?;
    let results = cases
        .into_iter()
        .map(|(name, input, expected)| {
            let (got, log) =
                log_capture::capture(|| world_call::call(&loaded.host, POLICY_NAME, &input));
            CaseResult {
                name,
                passed: expected.matches(&got),
                expected: expected.to_json(),
                got: outcome_json(&got),
                log,
            }
        })
        .collect();
    Ok(TestReport {
        file: source.clone(),
        world,
        cases: results,
    })
}

/// Types every case for `world` before any runs, so a typo fails fast and names its case.
fn parse_cases(
    world: PolicyWorld,
    specs: Vec<CaseSpec>,
    cases_path: &Path,
) -> Result<Vec<(String, CallInput, Expected)>, TestError> {
    let export = call_export(world);
    specs
        .into_iter()
        .enumerate()
        .map(|(index, spec)| {
            let problem = |problem: String| TestError::Case {
                path: cases_path.to_owned(),
                number: index + 1,
                name: spec.name.clone(),
                problem,
            };
            let call = spec.call.as_deref();
            let second = world_call::calls_on_response(world, call);
            if let Some(call) = call
                && call != export
                && !second
            {
                let calls = if world == PolicyWorld::Request {
                    format!("calls are `{export}` and `{ON_RESPONSE}`")
                } else {
                    format!("call is `{export}`")
                };
                return Err(problem(format!(
                    "calls `{call}`, but the module implements world `{}`, whose {calls}",
                    world.as_str()
                )));
            }
            let input = CallInput::parse_call(world, call, spec.input.clone()).map_err(|e| {
                problem(format!("input is not a valid {}: {}", e.expected, e.detail))
            })?;
            let expected = Expected::parse_call(world, call, spec.expect.clone()).map_err(|e| {
                problem(format!(
                    "expect is not a valid {}: {}",
                    e.expected, e.detail
                ))
            })?;
            Ok((spec.name, input, expected))
        })
        .collect()
}

/// A line diff of `expected` against `got`: shared lines with two spaces, removed ones with
/// `- `, added ones with `+ ` (longest common subsequence; answers are a few dozen lines).
fn line_diff(expected: &str, got: &str) -> Vec<String> {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = got.lines().collect();
    // common[i][j]: length of the longest common subsequence of a[i..] and b[j..].
    let mut common = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            common[i][j] = if a[i] == b[j] {
                common[i + 1][j + 1] + 1
            } else {
                common[i + 1][j].max(common[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push(format!("  {}", a[i]));
            (i, j) = (i + 1, j + 1);
        } else if i < a.len() && (j == b.len() || common[i + 1][j] >= common[i][j + 1]) {
            out.push(format!("- {}", a[i]));
            i += 1;
        } else {
            out.push(format!("+ {}", b[j]));
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::line_diff;

    #[test]
    fn line_diff_marks_removed_and_added_lines() {
        let diff = line_diff(
            "{\n  \"a\": 1,\n  \"b\": 2\n}",
            "{\n  \"a\": 1,\n  \"b\": 3\n}",
        );
        assert_eq!(
            diff,
            [
                "  {",
                "    \"a\": 1,",
                "-   \"b\": 2",
                "+   \"b\": 3",
                "  }"
            ]
        );
    }
}
