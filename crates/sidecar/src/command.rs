//! Short-lived helper commands (`check_cmd`, probe and reload commands): started through the
//! reaper in their own process group, output captured, killed with their group on timeout.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};

use crate::reaper::{ExitStatus, Reaper};

/// At most this much output is kept (the tail is what explains a failure).
const MAX_OUTPUT: usize = 16 * 1024;

/// How a helper command ended.
#[derive(Debug, Clone)]
pub enum CommandOutcome {
    Finished { status: ExitStatus, output: String },
    TimedOut { output: String },
}

impl CommandOutcome {
    pub fn success(&self) -> bool {
        matches!(self, CommandOutcome::Finished { status, .. } if status.success())
    }

    /// One line for logs: status and the last line of output.
    pub fn describe(&self, timeout: Duration) -> String {
        let (what, output) = match self {
            CommandOutcome::Finished { status, output } => (status.to_string(), output),
            CommandOutcome::TimedOut { output } => (format!("timed out after {timeout:?}"), output),
        };
        let tail: Vec<&str> = output
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        if tail.is_empty() {
            what
        } else {
            format!("{what}: {}", tail.join(" | "))
        }
    }
}

/// Runs `argv` with extra `env`, capturing stdout+stderr, within `timeout`.
pub async fn run(
    reaper: &Reaper,
    argv: &[String],
    env: &[(&str, &str)],
    timeout: Duration,
) -> std::io::Result<CommandOutcome> {
    let Some((program, args)) = argv.split_first() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "empty command",
        ));
    };
    let (mut reader, writer) = std::io::pipe()?;
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .process_group(0);
    let (_child, exit) = reaper
        .spawn(&mut command)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot run {program:?}: {e}")))?;
    // `command` holds the write end; drop it so EOF arrives when the child (and its children)
    // close theirs.
    drop(command);
    let pid = exit.pid();
    let output = tokio::task::spawn_blocking(move || {
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(read) = reader.read(&mut chunk) {
            if read == 0 {
                break;
            }
            buffer.extend_from_slice(&chunk[..read]);
            if buffer.len() > 2 * MAX_OUTPUT {
                buffer.drain(..buffer.len() - MAX_OUTPUT);
            }
        }
        let start = buffer.len().saturating_sub(MAX_OUTPUT);
        String::from_utf8_lossy(&buffer[start..]).into_owned()
    });
    let mut exit = exit.into_receiver();
    let status = tokio::select! {
        status = &mut exit => status.ok(),
        _ = tokio::time::sleep(timeout) => None,
    };
    match status {
        Some(status) => {
            // A background grandchild may keep the pipe open; do not wait for it long.
            let output = tokio::time::timeout(Duration::from_millis(200), output)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            Ok(CommandOutcome::Finished { status, output })
        }
        None => {
            let _ = killpg(pid, Signal::SIGKILL);
            let _ = exit.await;
            let output = tokio::time::timeout(Duration::from_millis(200), output)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            Ok(CommandOutcome::TimedOut { output })
        }
    }
}
