//! Supervision with real processes: signal forwarding and rewriting, exit codes, reaping of
//! orphaned grandchildren, the stop sequence, PID 1 in a PID namespace, Procfile policies.

mod common;

use std::time::Duration;

use common::{DEADLINE, Sidecar, alive, children_of, count_lines, read, trap_script, wait_for};
use nix::sys::signal::Signal;

#[test]
fn signals_are_forwarded_and_rewritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("signals.log");
    std::fs::write(
        dir.path().join("sidecar.toml"),
        "[signals]\nrewrite = { SIGUSR1 = \"SIGUSR2\", SIGWINCH = \"none\" }\n",
    )
    .expect("config");
    let script = trap_script(&log);
    let mut sidecar = Sidecar::start_in(
        dir,
        &["--config", "sidecar.toml", "--", "/bin/sh", "-c", &script],
        &[],
    );
    wait_for("workload start", DEADLINE, || {
        read(&log).contains("started").then_some(())
    });
    sidecar.signal(Signal::SIGHUP);
    wait_for("HUP forwarded", DEADLINE, || {
        (count_lines(&log, "HUP") == 1).then_some(())
    });
    sidecar.signal(Signal::SIGUSR1);
    wait_for("USR1 rewritten to USR2", DEADLINE, || {
        (count_lines(&log, "USR2") == 1).then_some(())
    });
    sidecar.signal(Signal::SIGWINCH);
    sidecar.signal(Signal::SIGHUP);
    wait_for("second HUP", DEADLINE, || {
        (count_lines(&log, "HUP") == 2).then_some(())
    });
    assert_eq!(
        count_lines(&log, "USR1"),
        0,
        "USR1 is rewritten, never delivered as is"
    );
    sidecar.signal(Signal::SIGTERM);
    assert_eq!(
        sidecar.wait(DEADLINE),
        0,
        "the workload exits 0 on TERM: {}",
        sidecar.stderr()
    );
    assert_eq!(count_lines(&log, "TERM"), 1);
}

#[test]
fn workloads_start_with_no_blocked_or_ignored_signals() {
    // Started the way `nohup` or a shell's `&` starts things: SIGHUP/SIGINT ignored by our
    // parent. The sidecar blocks its signals; neither the mask nor the ignores may leak.
    let script = format!(
        "trap '' HUP INT; exec {} -- /usr/bin/env grep -E '^Sig(Blk|Ign)' /proc/self/status",
        common::binary()
    );
    let output = std::process::Command::new("/bin/sh")
        .args(["-c", &script])
        .output()
        .expect("run");
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(stdout.contains("SigBlk:\t0000000000000000"), "{stdout}");
    let ignored = stdout
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:\t"))
        .expect("SigIgn line");
    let ignored = u64::from_str_radix(ignored.trim(), 16).expect("hex");
    assert_eq!(
        ignored & ((1 << 31) - 1),
        0,
        "no standard signal ignored: {ignored:x}"
    );
}

#[test]
fn exit_codes_pass_through() {
    let mut sidecar = Sidecar::start(&["--", "/bin/sh", "-c", "exit 3"], &[]);
    assert_eq!(sidecar.wait(DEADLINE), 3);
    // Killed by a signal: 128 + the signal number, as a shell reports it.
    let mut sidecar = Sidecar::start(&["--", "/bin/sh", "-c", "kill -KILL $$"], &[]);
    assert_eq!(sidecar.wait(DEADLINE), 137);
    let mut sidecar = Sidecar::start(&["--", "/bin/sh", "-c", "kill -SEGV $$"], &[]);
    assert_eq!(sidecar.wait(DEADLINE), 128 + 11);
    let mut sidecar = Sidecar::start(&["--", "/nonexistent/program"], &[]);
    assert_eq!(sidecar.wait(DEADLINE), 127);
    assert!(
        sidecar.stderr().contains("/nonexistent/program"),
        "{}",
        sidecar.stderr()
    );
}

#[test]
fn orphaned_grandchildren_are_reaped() {
    // The workload starts background children and exits their parent at once, so they are
    // re-parented to the sidecar (child subreaper) and exit later.
    let mut sidecar = Sidecar::start(
        &[
            "--",
            "/bin/sh",
            "-c",
            "for i in 1 2 3 4 5; do (sleep 0.2 &) ; done; sleep 1.5",
        ],
        &[],
    );
    let pid = sidecar.pid();
    wait_for("orphans re-parented to the sidecar", DEADLINE, || {
        (children_of(pid).len() >= 4).then_some(())
    });
    wait_for("orphans reaped, no zombie left", DEADLINE, || {
        let children = children_of(pid);
        (children.iter().all(|(_, state)| *state != 'Z') && children.len() <= 2).then_some(())
    });
    assert_eq!(sidecar.wait(DEADLINE), 0);
    let stderr = sidecar.stderr();
    assert!(
        stderr.matches("reaped orphaned process").count() >= 5,
        "{stderr}"
    );
}

#[test]
fn stop_sequence_escalates_to_sigkill_and_stops_leftovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    // Ignores TERM; leaves a daemonised grandchild that also ignores TERM.
    let script = format!(
        "trap 'echo TERM >> {log}' TERM; (trap '' TERM; sleep 60) & echo started >> {log}; while :; do sleep 0.05; done",
        log = log.display()
    );
    let mut sidecar = Sidecar::start_in(
        dir,
        &["--stop-grace", "500ms", "--", "/bin/sh", "-c", &script],
        &[],
    );
    wait_for("start", DEADLINE, || {
        read(&log).contains("started").then_some(())
    });
    let begun = std::time::Instant::now();
    sidecar.signal(Signal::SIGTERM);
    let code = sidecar.wait(DEADLINE);
    assert_eq!(
        code,
        137,
        "killed after the grace period: {}",
        sidecar.stderr()
    );
    assert!(begun.elapsed() >= Duration::from_millis(450));
    assert!(
        begun.elapsed() < Duration::from_secs(5),
        "{:?}",
        begun.elapsed()
    );
    assert_eq!(count_lines(&log, "TERM"), 1, "stop signal delivered first");
    let stderr = sidecar.stderr();
    assert!(
        stderr.contains("did not stop within the grace period"),
        "{stderr}"
    );
    assert!(children_of(sidecar.pid()).is_empty());
}

#[test]
fn group_target_signals_the_whole_process_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    // The grandchild logs TERM itself: only a group signal reaches it.
    let script = format!(
        "sh -c \"trap 'echo child-TERM >> {log}; exit 0' TERM; while :; do sleep 0.05; done\" & echo started >> {log}; trap 'echo TERM >> {log}; wait; exit 0' TERM; while :; do sleep 0.05; done",
        log = log.display()
    );
    let mut sidecar = Sidecar::start_in(
        dir,
        &["--signal-target", "group", "--", "/bin/sh", "-c", &script],
        &[],
    );
    wait_for("start", DEADLINE, || {
        read(&log).contains("started").then_some(())
    });
    std::thread::sleep(Duration::from_millis(100));
    sidecar.signal(Signal::SIGTERM);
    assert_eq!(sidecar.wait(DEADLINE), 0, "{}", sidecar.stderr());
    assert_eq!(count_lines(&log, "child-TERM"), 1, "{}", read(&log));
}

#[test]
fn runs_as_pid_1_in_a_pid_namespace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    let script = format!(
        "echo pid=$$ ppid=$PPID >> {log}; for i in 1 2 3; do (sleep 0.1 &); done; \
         trap 'echo TERM >> {log}; sleep 0.3; exit 7' TERM; while :; do sleep 0.05; done",
        log = log.display()
    );
    let sidecar_args = [
        "--pid",
        "--fork",
        "--mount-proc",
        common::binary(),
        "--",
        "/bin/sh",
        "-c",
        &script,
    ];
    let mut unshare = std::process::Command::new("unshare")
        .args(sidecar_args)
        .env("SLUICE_LOG", "debug")
        .stderr(std::fs::File::create(dir.path().join("stderr")).expect("stderr"))
        .spawn()
        .expect("unshare (util-linux) runs");
    let unshare_pid = nix::unistd::Pid::from_raw(unshare.id() as i32);
    let started = wait_for("workload start inside the namespace", DEADLINE, || {
        let text = read(&log);
        text.lines().next().map(str::to_owned)
    });
    // Inside the namespace the sidecar is PID 1 and the workload's parent.
    assert!(started.ends_with("ppid=1"), "{started}");
    let sidecar_pid = wait_for("the sidecar (unshare's child)", DEADLINE, || {
        children_of(unshare_pid).first().map(|(pid, _)| *pid)
    });
    wait_for("orphans reaped by PID 1", DEADLINE, || {
        let stderr = read(&dir.path().join("stderr"));
        (stderr.matches("reaped orphaned process").count() >= 3).then_some(())
    });
    // A signal from outside the namespace reaches PID 1 (it does not use SIG_DFL) and is
    // forwarded; the workload's exit code comes back out through unshare.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(sidecar_pid), Signal::SIGTERM)
        .expect("signal PID 1");
    let status = wait_for("unshare exit", DEADLINE, || {
        unshare.try_wait().expect("try_wait")
    });
    assert_eq!(
        status.code(),
        Some(7),
        "{}",
        read(&dir.path().join("stderr"))
    );
    assert_eq!(count_lines(&log, "TERM"), 1);
    assert!(!alive(sidecar_pid));
}

#[test]
fn procfile_prefixes_output_and_applies_exit_policies() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("Procfile"),
        "# seed 004 style\nmongo: echo mongo-up; trap 'exit 5' TERM; while :; do sleep 0.05; done\nflaky: echo run >> flaky.log; exit 1\nonce: echo one-shot; exit 0\nchecker: sleep 0.8; exit 9\n",
    )
    .expect("procfile");
    std::fs::write(
        dir.path().join("sidecar.toml"),
        "[procfile]\npath = \"Procfile\"\nprimary = \"mongo\"\nrestart_backoff_initial = \"100ms\"\nrestart_backoff_max = \"200ms\"\n[procfile.on_exit]\nflaky = \"restart\"\nonce = \"ignore\"\nchecker = \"stop-all\"\n",
    )
    .expect("config");
    let mut sidecar = Sidecar::start_in(dir, &["--config", "sidecar.toml"], &[]);
    // checker exits after 0.8 s with stop-all: everything stops; the primary's code is the exit.
    let code = sidecar.wait(DEADLINE);
    assert_eq!(
        code,
        5,
        "primary mongo exits 5 on TERM: {}",
        sidecar.stderr()
    );
    let stdout = sidecar.stdout();
    assert!(
        stdout.lines().any(|l| l == "mongo   | mongo-up"),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l == "once    | one-shot"),
        "{stdout}"
    );
    let restarts = count_lines(&sidecar.path("flaky.log"), "run");
    assert!(restarts >= 3, "flaky restarted with backoff: {restarts}");
    let stderr = sidecar.stderr();
    assert!(stderr.contains("checker exited (exit code 9)"), "{stderr}");
}
