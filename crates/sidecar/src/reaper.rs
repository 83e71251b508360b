//! The one owner of `waitpid`. Every child the sidecar starts — the workload, Procfile
//! processes, `check_cmd`, probes, reload commands — is started through [`Reaper::spawn`], and
//! every exit (including orphans re-parented to us as PID 1 or subreaper) is collected by
//! [`Reaper::reap_all`], which hands each status to whoever waits for that pid.
//!
//! The race other supervisors lost: a child can exit before its spawner has recorded its pid.
//! Here `spawn` holds the same lock `reap_all` needs, from before `fork` until the pid is
//! registered, so a status can never arrive for a pid nobody is waiting on yet. Nobody else may
//! call `waitpid`/`Child::wait` (std's spawn only does so on a failed exec, under that lock).

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(Signal),
}

impl ExitStatus {
    /// The shell convention: the exit code, or 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(code) => code,
            ExitStatus::Signaled(signal) => 128 + signal as i32,
        }
    }

    pub fn success(self) -> bool {
        self == ExitStatus::Exited(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Exited(code) => write!(f, "exit code {code}"),
            ExitStatus::Signaled(signal) => write!(f, "killed by {signal}"),
        }
    }
}

/// Resolves when the process exits.
#[derive(Debug)]
pub struct ChildExit {
    pid: Pid,
    receiver: oneshot::Receiver<ExitStatus>,
}

impl ChildExit {
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Waits for the exit status.
    pub async fn wait(self) -> ExitStatus {
        // The reaper never drops a registered sender without sending; if it ever did, the
        // process is gone anyway and "killed" is the honest answer.
        self.receiver
            .await
            .unwrap_or(ExitStatus::Signaled(Signal::SIGKILL))
    }

    /// A pollable form for `select!` loops.
    pub fn into_receiver(self) -> oneshot::Receiver<ExitStatus> {
        self.receiver
    }
}

#[derive(Debug, Default)]
struct ReaperState {
    waiting: HashMap<Pid, oneshot::Sender<ExitStatus>>,
}

/// See the module documentation. Cloning shares the reaper.
#[derive(Debug, Clone, Default)]
pub struct Reaper {
    state: Arc<Mutex<ReaperState>>,
}

/// One collected exit, as returned by [`Reaper::reap_all`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    pub pid: Pid,
    pub status: ExitStatus,
    /// `false` for processes nobody started through [`Reaper::spawn`] (orphans).
    pub claimed: bool,
}

impl Reaper {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, ReaperState> {
        // Only map inserts/removes happen under the lock; a poisoned map is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts `command` and registers its pid before any exit can be collected.
    /// The child starts with an empty signal mask (see [`unblock_signals_in_child`]).
    pub fn spawn(&self, command: &mut Command) -> std::io::Result<(Child, ChildExit)> {
        unblock_signals_in_child(command);
        let mut state = self.lock();
        let child = command.spawn()?;
        let pid = Pid::from_raw(child.id() as i32);
        let (sender, receiver) = oneshot::channel();
        state.waiting.insert(pid, sender);
        Ok((child, ChildExit { pid, receiver }))
    }

    /// Collects every exited child without blocking and delivers their statuses.
    pub fn reap_all(&self) -> Vec<Reaped> {
        let mut state = self.lock();
        let mut reaped = Vec::new();
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Exited(code)),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, ExitStatus::Signaled(signal)),
                // Stopped/continued are not exits (and not requested); nothing more right now.
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                // ECHILD: no children at all.
                Err(_) => break,
            };
            let (pid, status) = status;
            let claimed = match state.waiting.remove(&pid) {
                Some(sender) => {
                    let _ = sender.send(status);
                    true
                }
                None => false,
            };
            reaped.push(Reaped {
                pid,
                status,
                claimed,
            });
        }
        reaped
    }
}

/// Makes `command`'s child start with an empty signal mask. The mask blocked here is inherited
/// across fork and exec, and std's spawn does not clear it; a workload with SIGTERM blocked
/// would never stop (shells such as dash happen to clear it themselves, most programs do not).
#[allow(unsafe_code)]
fn unblock_signals_in_child(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs in the forked child before exec; it only calls pthread_sigmask,
    // which is async-signal-safe, allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(|| {
            nix::sys::signal::SigSet::empty()
                .thread_set_mask()
                .map_err(|errno| std::io::Error::from_raw_os_error(errno as i32))
        });
    }
}
