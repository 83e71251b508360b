//! `sluice-sidecar [OPTIONS] [-- COMMAND [ARGS...]]` and `sluice-sidecar envsubst [...]`.
//! See `docs/sidecar.md`.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use sluice_sidecar::config::{
    Config, Engine, ExitPolicy, KvConfig, KvKind, ProcfileConfig, SignalTarget, Span,
    TemplateConfig, VariableList, parse_procfile,
};
use sluice_sidecar::envsubst::{self, EnvsubstOptions};
use sluice_sidecar::lifecycle;
use sluice_sidecar::reaper::Reaper;
use sluice_sidecar::supervisor::{Launch, ProcessSpec, exit_code};

/// Renders configs from env and KV, registers the service, launches and supervises the
/// workload as PID 1.
#[derive(Debug, Parser)]
#[command(
    name = "sluice-sidecar",
    version,
    after_help = "Also: `sluice-sidecar envsubst [--no-unset] [--no-empty] [SHELL-FORMAT] < in > out`."
)]
struct Cli {
    /// TOML configuration file (flags below add to it).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// A jinja template: SOURCE:DESTINATION.
    #[arg(long, value_name = "SRC:DEST")]
    template: Vec<String>,
    /// An envsubst template: SOURCE:DESTINATION.
    #[arg(long, value_name = "SRC:DEST")]
    envsubst: Vec<String>,
    /// envsubst templates given by flags: fail if a referenced variable is unset.
    #[arg(long)]
    no_unset: bool,
    /// envsubst templates given by flags: fail if a referenced variable is empty.
    #[arg(long)]
    no_empty: bool,
    /// envsubst templates given by flags: only substitute these (GNU SHELL-FORMAT, "$A $B").
    #[arg(long, value_name = "SHELL-FORMAT")]
    variables: Option<String>,
    /// A file KV layer: a directory or a .toml/.json document (repeatable, in lookup order).
    #[arg(long, value_name = "PATH")]
    kv_file: Vec<PathBuf>,
    /// An etcd KV layer at this client URL (repeat for more endpoints of the same cluster).
    #[arg(long, value_name = "URL")]
    kv_etcd: Vec<String>,
    /// Run the processes of this Procfile instead of COMMAND.
    #[arg(long, value_name = "PATH")]
    procfile: Option<PathBuf>,
    /// Where forwarded signals go.
    #[arg(long, value_enum)]
    signal_target: Option<TargetArg>,
    /// Time between the stop signal and SIGKILL, e.g. 10s.
    #[arg(long, value_name = "DURATION")]
    stop_grace: Option<humantime::Duration>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Log level: error, warn, info, debug, trace (default: $SLUICE_LOG or info).
    #[arg(long)]
    log_level: Option<String>,
    /// The workload (its arguments are passed as bytes, UTF-8 or not).
    #[arg(last = true, value_name = "COMMAND", value_parser = clap::value_parser!(std::ffi::OsString))]
    command: Vec<std::ffi::OsString>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TargetArg {
    Child,
    Group,
}

/// `sluice-sidecar envsubst`: GNU envsubst's interface, stdin to stdout.
#[derive(Debug, Parser)]
#[command(name = "sluice-sidecar envsubst")]
struct EnvsubstCli {
    /// Fail (listing every offender) if a referenced variable is unset.
    #[arg(long)]
    no_unset: bool,
    /// Fail (listing every offender) if a referenced variable is set but empty.
    #[arg(long)]
    no_empty: bool,
    /// Print the referenced variable names instead of substituting (like GNU's -v).
    #[arg(short = 'v', long)]
    variables: bool,
    /// Only substitute the variables named in this string, e.g. '$HOST $PORT'.
    shell_format: Option<String>,
}

fn envsubst_main(args: Vec<OsString>) -> anyhow::Result<ExitCode> {
    let cli = EnvsubstCli::parse_from(args);
    // Bytes, as GNU envsubst reads them: a Latin-1 template is substituted, not refused.
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .context("reading standard input")?;
    if cli.variables {
        let names = match &cli.shell_format {
            Some(format) => EnvsubstOptions::allow_from_shell_format(format),
            None => envsubst::referenced_names(&input)?,
        };
        let mut out = std::io::stdout().lock();
        for name in names {
            writeln!(out, "{name}")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let options = EnvsubstOptions {
        allow: cli
            .shell_format
            .as_deref()
            .map(EnvsubstOptions::allow_from_shell_format),
        no_unset: cli.no_unset,
        no_empty: cli.no_empty,
    };
    let mut vars = envsubst::process_env();
    match envsubst::substitute("<stdin>", &input, &mut vars, &options) {
        Ok(output) => {
            std::io::stdout().lock().write_all(&output)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("{error}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn split_pair(text: &str, flag: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    match text.rsplit_once(':') {
        Some((source, destination)) if !source.is_empty() && !destination.is_empty() => {
            Ok((PathBuf::from(source), PathBuf::from(destination)))
        }
        _ => bail!("{flag} expects SOURCE:DESTINATION, got {text:?}"),
    }
}

fn plain_template(
    source: PathBuf,
    destination: PathBuf,
    engine: Engine,
) -> anyhow::Result<TemplateConfig> {
    let text = format!(
        "source = {:?}\ndestination = {:?}\nengine = {:?}\n",
        source.to_string_lossy(),
        destination.to_string_lossy(),
        if engine == Engine::Jinja {
            "jinja"
        } else {
            "envsubst"
        }
    );
    // Goes through the same deserializer as the file so defaults live in one place.
    toml::from_str(&text).with_context(|| format!("template {}", source.display()))
}

/// Merges flags into the file configuration and decides what to launch.
fn build(cli: &Cli) -> anyhow::Result<(Config, Launch)> {
    let mut config = match &cli.config {
        Some(path) => Config::load(path).map_err(all_errors)?,
        None => Config::default(),
    };
    for pair in &cli.template {
        let (source, destination) = split_pair(pair, "--template")?;
        config
            .template
            .push(plain_template(source, destination, Engine::Jinja)?);
    }
    for pair in &cli.envsubst {
        let (source, destination) = split_pair(pair, "--envsubst")?;
        let mut template = plain_template(source, destination, Engine::Envsubst)?;
        template.no_unset = cli.no_unset;
        template.no_empty = cli.no_empty;
        template.variables = cli.variables.clone().map(VariableList::ShellFormat);
        config.template.push(template);
    }
    let layer = |source, path: Option<PathBuf>, endpoints: Vec<String>| KvConfig {
        source,
        path,
        endpoints,
        prefix: String::new(),
        poll: Span(sluice_kv::DEFAULT_POLL_INTERVAL),
        request_timeout: Span(sluice_kv::etcd::DEFAULT_REQUEST_TIMEOUT),
    };
    for path in &cli.kv_file {
        config
            .kv
            .push(layer(KvKind::File, Some(path.clone()), Vec::new()));
    }
    if !cli.kv_etcd.is_empty() {
        config
            .kv
            .push(layer(KvKind::Etcd, None, cli.kv_etcd.clone()));
    }
    if let Some(target) = cli.signal_target {
        config.signals.target = match target {
            TargetArg::Child => SignalTarget::Child,
            TargetArg::Group => SignalTarget::Group,
        };
    }
    if let Some(grace) = cli.stop_grace {
        config.signals.stop_grace = Span(grace.into());
    }
    if let Some(path) = &cli.procfile {
        config
            .procfile
            .get_or_insert_with(ProcfileConfig::default)
            .path = Some(path.clone());
    }
    let origin = cli
        .config
        .as_ref()
        .map_or("command line".to_owned(), |p| p.display().to_string());
    config.validate(&origin, None).map_err(all_errors)?;
    let launch = launch_from(cli, &config, &origin)?;
    Ok((config, launch))
}

/// Every error of a file or of the command line, one per line.
fn all_errors<E: ToString>(errors: Vec<E>) -> anyhow::Error {
    anyhow::anyhow!(
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    )
}

/// The processes to run: the Procfile's, `[[process]]`es, or the one COMMAND / `[exec]`.
fn launch_from(cli: &Cli, config: &Config, origin: &str) -> anyhow::Result<Launch> {
    let procfile = config.procfile.clone().unwrap_or_default();
    let mut processes: Vec<ProcessSpec> = Vec::new();
    if let Some(path) = &procfile.path {
        let path = config.resolve(path);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let parsed = parse_procfile(&path, &text).map_err(all_errors)?;
        processes.extend(parsed.into_iter().map(|p| ProcessSpec {
            argv: os_argv(p.command.argv()),
            name: p.name,
            on_exit: p.on_exit,
        }));
    }
    processes.extend(config.process.iter().map(|p| ProcessSpec {
        name: p.name.clone(),
        argv: os_argv(p.command.argv()),
        on_exit: p.on_exit,
    }));
    for process in &mut processes {
        if let Some(policy) = procfile.on_exit.get(&process.name) {
            process.on_exit = *policy;
        }
    }
    for name in procfile.on_exit.keys() {
        if !processes.iter().any(|p| &p.name == name) {
            bail!("{origin}: procfile.on_exit names {name:?}, which is not a process");
        }
    }
    let several = processes.len() > 1;
    if !cli.command.is_empty() || config.exec.is_some() {
        if !processes.is_empty() {
            bail!("a COMMAND/[exec] and Procfile processes are exclusive");
        }
        let argv = if cli.command.is_empty() {
            config
                .exec
                .as_ref()
                .map(|e| os_argv(e.command.argv()))
                .unwrap_or_default()
        } else {
            cli.command.clone()
        };
        let name = argv
            .first()
            .and_then(|p| std::path::Path::new(p).file_name())
            .map_or("workload".into(), |n| n.to_string_lossy().into_owned());
        processes.push(ProcessSpec {
            name,
            argv,
            on_exit: ExitPolicy::StopAll,
        });
    }
    let primary = match &procfile.primary {
        Some(name) => processes
            .iter()
            .position(|p| &p.name == name)
            .with_context(|| format!("procfile.primary names {name:?}, which is not a process"))?,
        None => 0,
    };
    if config.register.is_some() && processes.is_empty() {
        bail!("[register] needs a workload to register");
    }
    let launch = Launch {
        processes,
        primary,
        prefix_output: procfile.prefix_output.unwrap_or(several),
        restart_initial: procfile.restart_backoff_initial.0,
        restart_max: procfile.restart_backoff_max.0,
    };
    Ok(launch)
}

fn init_logging(level: Option<&str>) {
    let text = level
        .map(str::to_owned)
        .or_else(|| std::env::var("SLUICE_LOG").ok())
        .unwrap_or_else(|| "info".into());
    let level = text
        .parse::<tracing_subscriber::filter::LevelFilter>()
        .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    // `args_os`: `args` panics on an argument that is not UTF-8; clap reports it instead.
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|arg| arg == "envsubst") {
        // A filter, not a supervisor: signals keep their default effect.
        let rest = std::iter::once(OsString::from("sluice-sidecar envsubst"))
            .chain(args.into_iter().skip(2))
            .collect();
        return envsubst_main(rest).unwrap_or_else(|error| {
            eprintln!("sluice-sidecar envsubst: {error:#}");
            ExitCode::FAILURE
        });
    }
    // First, before any thread exists: every thread inherits this mask.
    let signal_set = match sluice_sidecar::signals::block_handled_signals() {
        Ok(set) => set,
        Err(error) => {
            eprintln!("sluice-sidecar: cannot block signals: {error}");
            return ExitCode::from(exit_code::STARTUP_FAILED as u8);
        }
    };
    let cli = Cli::parse_from(args);
    init_logging(cli.log_level.as_deref());
    let (config, launch) = match build(&cli) {
        Ok(built) => built,
        Err(error) => {
            eprintln!("sluice-sidecar: {error:#}");
            return ExitCode::from(exit_code::BAD_CONFIG as u8);
        }
    };
    if cli.check {
        let _ = writeln!(
            std::io::stdout(),
            "configuration OK: {} template(s), {} process(es)",
            config.template.len(),
            launch.processes.len()
        );
        return ExitCode::SUCCESS;
    }
    let reaper = Reaper::new();
    if std::process::id() != 1
        && let Err(error) = nix::sys::prctl::set_child_subreaper(true)
    {
        tracing::warn!(%error, "cannot become a child subreaper; orphans will be reaped by init instead");
    }
    let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
    if let Err(error) =
        sluice_sidecar::signals::spawn_signal_thread(signal_set, reaper.clone(), events_tx)
    {
        eprintln!("sluice-sidecar: cannot start the signal thread: {error}");
        return ExitCode::from(exit_code::STARTUP_FAILED as u8);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sluice-sidecar: cannot start the runtime: {error}");
            return ExitCode::from(exit_code::STARTUP_FAILED as u8);
        }
    };
    let code = runtime.block_on(lifecycle::run(config, launch, reaper, events));
    let _ = std::io::stdout().flush();
    // Exit now: blocking-pool threads (output pumps of orphans) must not hold the exit.
    std::process::exit(code)
}

/// A command from the configuration (text) as the bytes it is run with.
fn os_argv(argv: Vec<String>) -> Vec<std::ffi::OsString> {
    argv.into_iter().map(Into::into).collect()
}
