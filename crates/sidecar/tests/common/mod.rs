//! Helpers for tests that run the real `sluice-sidecar` binary.
#![allow(dead_code, unreachable_pub)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Default bound for anything a test waits on.
pub const DEADLINE: Duration = Duration::from_secs(15);

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_sluice-sidecar")
}

/// Polls `probe` every 20 ms until it returns `Some`, or fails the test after `deadline`
/// saying what it waited for.
pub fn wait_for<T>(what: &str, deadline: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A sidecar process with its output in files, killed on drop.
pub struct Sidecar {
    pub child: Child,
    pub dir: tempfile::TempDir,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Sidecar {
    /// Starts the binary with `args` in a fresh temp dir (also its working directory).
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Sidecar {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, args, env)
    }

    pub fn start_in(dir: tempfile::TempDir, args: &[&str], env: &[(&str, &str)]) -> Sidecar {
        let stdout = dir.path().join("sidecar.stdout");
        let stderr = dir.path().join("sidecar.stderr");
        let child = Command::new(binary())
            .args(args)
            .envs(env.iter().copied())
            .env("SLUICE_LOG", "debug")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start sluice-sidecar");
        Sidecar {
            child,
            dir,
            stdout,
            stderr,
        }
    }

    /// Starts the binary in `dir` with *only* `env` (like `env -i`), whose names and values
    /// may be any bytes.
    pub fn start_clean(
        dir: tempfile::TempDir,
        args: &[&OsStr],
        env: &[(&OsStr, &OsStr)],
    ) -> Sidecar {
        let stdout = dir.path().join("sidecar.stdout");
        let stderr = dir.path().join("sidecar.stderr");
        let child = Command::new(binary())
            .args(args)
            .env_clear()
            .envs(env.iter().copied())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start sluice-sidecar");
        Sidecar {
            child,
            dir,
            stdout,
            stderr,
        }
    }

    /// Standard output as bytes (it need not be UTF-8).
    pub fn stdout_bytes(&self) -> Vec<u8> {
        std::fs::read(&self.stdout).unwrap_or_default()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signal the sidecar");
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Waits for the sidecar to exit and returns its exit code (or 128 + signal).
    pub fn wait(&mut self, deadline: Duration) -> i32 {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                use std::os::unix::process::ExitStatusExt;
                return status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
            }
            assert!(
                Instant::now() < end,
                "sidecar still running after {deadline:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the sidecar with SIGKILL (it gets no chance to deregister or stop anything), and
    /// its workload too so nothing outlives the test.
    pub fn kill_with_workload(&mut self) {
        let family = descendants(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in family {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }

    /// Waits until stderr contains `needle`.
    pub fn wait_log(&self, needle: &str) {
        wait_for(&format!("log line containing {needle:?}"), DEADLINE, || {
            self.stderr().contains(needle).then_some(())
        });
    }
}

impl Drop for Sidecar {
    /// Stops the sidecar *and everything it started*. Killing only the sidecar would orphan its
    /// workload to init, where it would outlive the test run.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let mut family = descendants(self.child.id());
        // The sidecar's own stop sequence ends its workload: give it the chance first.
        let _ = kill(self.pid(), Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end && self.child.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        family.extend(descendants(self.child.id()));
        for pid in family {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every live descendant of `pid`, read from /proc (children of each of its threads).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
            {
                if !found.contains(&child) {
                    found.push(child);
                    queue.push(child);
                }
            }
        }
    }
    found
}

/// Reads a file, empty when absent.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Lines of a file equal to `line`.
pub fn count_lines(path: &Path, line: &str) -> usize {
    read(path).lines().filter(|l| *l == line).count()
}

/// Children of `parent` as (pid, state) from /proc.
pub fn children_of(parent: Pid) -> Vec<(i32, char)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        if fields.next().and_then(|p| p.parse::<i32>().ok()) == Some(parent.as_raw()) {
            found.push((pid, state));
        }
    }
    found
}

/// Whether a process is alive (and not a zombie).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with(|c| c != 'Z'))
        })
        .unwrap_or(false)
}

/// A shell workload that logs the signals it gets to `log` and exits 0 on TERM.
pub fn trap_script(log: &Path) -> String {
    format!(
        "trap 'echo HUP >> {log}' HUP; trap 'echo USR1 >> {log}' USR1; trap 'echo USR2 >> {log}' USR2; \
         trap 'echo TERM >> {log}; exit 0' TERM; echo started >> {log}; while :; do sleep 0.05; done",
        log = log.display()
    )
}
