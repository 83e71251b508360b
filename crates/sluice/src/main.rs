//! `sluice`: the load balancer's command line.
//!
//! `sluice run -c FILE` serves a configuration; `sluice check -c FILE` validates one and prints
//! every error with `file:line:col` (exit status 2); `sluice policy check FILE.wasm` tells which
//! policy world a module implements and tries it; `sluice policy test FILE.wasm --cases FILE`
//! compares its answers with recorded ones; `sluice policy new NAME --world W` creates a policy
//! project; `sluice --version`.

mod acme;
mod admin;
mod admin_auth;
mod app;
mod builtin;
mod discovery;
mod discovery_health;
mod discovery_overrides;
mod discovery_rebuild;
mod discovery_reload;
mod kv;
mod policies;
mod policy_new;
mod reloads;
mod request_policies;
mod run;
mod status_page;
mod tls_watch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "A load balancer whose decisions are WebAssembly policies"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// Configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a configuration file and print every problem in it.
    Check {
        /// Configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Work with WebAssembly policy modules.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Say which world a module implements (or exactly what does not match), run its
    /// `configure`, and make one call on an input, with the time it took.
    Check {
        /// The component (`.wasm`), or `builtin:NAME` for a policy built into sluice.
        file: PathBuf,
        /// JSON handed to `configure` (default `{}`).
        #[arg(long, value_name = "JSON")]
        config: Option<String>,
        /// JSON input for one call (a peer, `{"instance", "probe"}`, a list of instances, or an
        /// http-request).
        #[arg(long, value_name = "JSON")]
        input: Option<String>,
    },
    /// Run recorded inputs through a module and compare its answers with the expected ones;
    /// exit non-zero, showing a diff per case, on any mismatch.
    Test {
        /// The component (`.wasm`), or `builtin:NAME` for a policy built into sluice.
        file: PathBuf,
        /// JSON list of cases: `[{"name", "call", "input", "expect"}, …]`.
        #[arg(long, value_name = "FILE")]
        cases: PathBuf,
        /// JSON handed to `configure` (default `{}`).
        #[arg(long, value_name = "JSON")]
        config: Option<String>,
    },
    /// Create a policy project in directory NAME that builds and passes `policy check` and
    /// `policy test` unchanged.
    New {
        /// The project's directory; its last component is the package name.
        name: PathBuf,
        /// The world the policy implements.
        #[arg(long, value_enum)]
        world: policy_new::World,
        /// The language to write it in.
        #[arg(long, value_enum, default_value = "rust")]
        lang: policy_new::Lang,
        /// Rust: the SDK's location, a Sluice checkout or its `crates/policy-sdk` (default: the
        /// checkout this binary was built from).
        #[arg(long, value_name = "PATH")]
        sdk: Option<PathBuf>,
    },
}

// Request handling allocates many small, short-lived objects across threads (header maps,
// buffers, futures); mimalloc's thread-local free lists serve them faster than glibc's malloc
// (measured in docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for an invalid configuration.
const EXIT_INVALID_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Policy {
            command:
                PolicyCommand::Check {
                    file,
                    config,
                    input,
                },
        } => policies::check(&file, config.as_deref(), input.as_deref()),
        Command::Policy {
            command:
                PolicyCommand::Test {
                    file,
                    cases,
                    config,
                },
        } => policies::test(&file, &cases, config.as_deref()),
        Command::Policy {
            command:
                PolicyCommand::New {
                    name,
                    world,
                    lang,
                    sdk,
                },
        } => policy_new::run(&name, world, lang, sdk.as_deref()),
        Command::Run { config } => match sluice_config::load_file(&config) {
            Err(diags) => {
                report_invalid(&diags);
                ExitCode::from(EXIT_INVALID_CONFIG)
            }
            Ok(cfg) => match run::run(config, cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sluice: {e:#}");
                    ExitCode::FAILURE
                }
            },
        },
    }
}

#[allow(clippy::print_stdout, reason = "`check` reports its verdict on stdout")]
fn check(path: &std::path::Path) -> ExitCode {
    match sluice_config::load_file(path) {
        Ok(cfg) => {
            println!(
                "{}: ok ({} listeners, {} routes, {} services, {} policies)",
                path.display(),
                cfg.listeners.len(),
                cfg.routes.len(),
                cfg.services.len(),
                cfg.policies.len()
            );
            ExitCode::SUCCESS
        }
        Err(diags) => {
            report_invalid(&diags);
            ExitCode::from(EXIT_INVALID_CONFIG)
        }
    }
}

fn report_invalid(diags: &sluice_config::Diagnostics) {
    eprintln!("{diags}");
    let n = diags.0.len();
    eprintln!(
        "{n} error{} found; nothing was started",
        if n == 1 { "" } else { "s" }
    );
}
