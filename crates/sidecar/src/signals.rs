//! Signal reception the way an init must do it: every forwardable signal is blocked in all
//! threads (the mask is set before any thread exists and inherited) and taken synchronously by
//! one thread with `sigwait`. No handler runs in signal context, and because the signals are
//! blocked rather than left at their default action, the kernel queues them even for PID 1 of a
//! PID namespace, which otherwise drops signals it has no handler for.
//!
//! The same thread owns reaping: a `SIGCHLD` makes it call [`Reaper::reap_all`].

use nix::sys::signal::{SigSet, Signal};
use tokio::sync::mpsc::UnboundedSender;

use crate::reaper::{Reaped, Reaper};

/// What the signal thread reports to the supervisor.
#[derive(Debug, Clone)]
pub enum SignalEvent {
    /// A signal to act on or forward.
    Received(Signal),
    /// Children were collected (claimed ones were also delivered to their waiters).
    Reaped(Vec<Reaped>),
}

/// Signals that are never taken by the sidecar: they cannot be caught (`KILL`, `STOP`), are
/// about the sidecar's own faults (`SEGV`...), or are job-control/pipe signals the sidecar must
/// keep default or ignored (`TTIN`, `TTOU`, `PIPE`).
const NOT_HANDLED: [Signal; 12] = [
    Signal::SIGKILL,
    Signal::SIGSTOP,
    Signal::SIGSEGV,
    Signal::SIGBUS,
    Signal::SIGFPE,
    Signal::SIGILL,
    Signal::SIGTRAP,
    Signal::SIGSYS,
    Signal::SIGABRT,
    Signal::SIGPIPE,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
];

/// The set taken by the signal thread.
pub fn handled_set() -> SigSet {
    let mut set = SigSet::empty();
    for signal in Signal::iterator() {
        if !NOT_HANDLED.contains(&signal) {
            set.add(signal);
        }
    }
    set
}

/// Blocks the handled signals in the calling thread (call first thing in `main`, before any
/// thread starts) and resets their dispositions to the default, so that a signal ignored by
/// whoever started us (`nohup`, a shell's `&`) is not inherited as ignored by the workload.
pub fn block_handled_signals() -> nix::Result<SigSet> {
    let set = handled_set();
    set.thread_block()?;
    for signal in set.iter() {
        reset_to_default(signal)?;
    }
    Ok(set)
}

#[allow(unsafe_code)]
fn reset_to_default(signal: Signal) -> nix::Result<()> {
    // SAFETY: installing SIG_DFL runs no code in signal context; the unsafety `signal()` warns
    // about concerns handler functions, of which none is installed here.
    unsafe { nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl) }.map(|_| ())
}

/// Starts the thread that waits for signals, reaps on `SIGCHLD` and reports both.
pub fn spawn_signal_thread(
    set: SigSet,
    reaper: Reaper,
    events: UnboundedSender<SignalEvent>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            // Children may have exited before this thread started waiting.
            let early = reaper.reap_all();
            if !early.is_empty() && events.send(SignalEvent::Reaped(early)).is_err() {
                return;
            }
            loop {
                let Ok(signal) = set.wait() else { continue };
                let event = if signal == Signal::SIGCHLD {
                    let reaped = reaper.reap_all();
                    if reaped.is_empty() {
                        continue;
                    }
                    SignalEvent::Reaped(reaped)
                } else {
                    SignalEvent::Received(signal)
                };
                if events.send(event).is_err() {
                    // The supervisor is gone; keep reaping so no zombie stays until exit.
                    loop {
                        if let Ok(Signal::SIGCHLD) = set.wait() {
                            reaper.reap_all();
                        }
                    }
                }
            }
        })
}

/// Text that names no signal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalNameError {
    /// A number that is not a signal's.
    #[error("{number} is not a signal number")]
    UnknownNumber { number: i32 },
    /// A name that is not a signal's, as written.
    #[error("unknown signal {text:?} (expected a name like SIGHUP or a number)")]
    UnknownName { text: String },
}

/// Parses `SIGHUP`, `HUP` or a number.
pub fn parse_signal(text: &str) -> Result<Signal, SignalNameError> {
    let trimmed = text.trim();
    if let Ok(number) = trimmed.parse::<i32>() {
        return Signal::try_from(number).map_err(|_| SignalNameError::UnknownNumber { number });
    }
    let upper = trimmed.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map_err(|_| SignalNameError::UnknownName {
            text: text.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_parse_in_every_spelling() {
        assert_eq!(parse_signal("SIGHUP"), Ok(Signal::SIGHUP));
        assert_eq!(parse_signal("hup"), Ok(Signal::SIGHUP));
        assert_eq!(parse_signal("15"), Ok(Signal::SIGTERM));
        let unknown = parse_signal("SIGNOPE").expect_err("no such signal");
        assert_eq!(
            unknown,
            SignalNameError::UnknownName {
                text: "SIGNOPE".to_owned()
            }
        );
        assert_eq!(
            unknown.to_string(),
            "unknown signal \"SIGNOPE\" (expected a name like SIGHUP or a number)"
        );
        assert_eq!(
            parse_signal("99"),
            Err(SignalNameError::UnknownNumber { number: 99 })
        );
        assert_eq!(
            parse_signal(" 99").map_err(|e| e.to_string()),
            Err("99 is not a signal number".to_owned())
        );
    }

    #[test]
    fn handled_set_excludes_fault_and_pipe_signals() {
        let set = handled_set();
        assert!(set.contains(Signal::SIGTERM) && set.contains(Signal::SIGCHLD));
        assert!(set.contains(Signal::SIGWINCH) && set.contains(Signal::SIGUSR2));
        assert!(!set.contains(Signal::SIGPIPE) && !set.contains(Signal::SIGSEGV));
    }
}
