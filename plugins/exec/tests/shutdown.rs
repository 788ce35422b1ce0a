//! Stopping: SIGTERM to the program's process group, a grace period, SIGKILL, and the
//! program always reaped.

mod common;

use std::time::{Duration, Instant};

use common::*;
use sensorgate_api::testing::WAIT;

#[tokio::test]
async fn a_program_that_ignores_sigterm_is_killed_after_the_grace_and_reaped() {
    capture_logs();
    let dir = tempfile::tempdir().expect("temp dir");
    let pid_file = dir.path().join("pid");
    let s = script(
        dir.path(),
        "stubborn.py",
        &format!(
            r#"
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
open({p}, "w").write(str(os.getpid()))
print('{{"up": 1}}', flush=True)
while True:
    time.sleep(0.05)
"#,
            p = lit(pid_file.to_string_lossy())
        ),
    );
    let (mut dev, stats) = start(
        "stubborn",
        &format!(
            "command = [\"python3\", {}]\nstop_timeout = \"300ms\"",
            lit(s.to_string_lossy())
        ),
        dir.path(),
    );
    next_batch(&mut dev).await;
    let pid = read_pid(&pid_file).await;
    let _guard = KillOnDrop(pid);
    assert_eq!(stats.pid(), Some(pid));
    assert!(matches!(proc_state(pid), Some(s) if s != 'Z'), "running");
    let t = Instant::now();
    dev.stop().await.expect("a clean stop");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "SIGKILL only after the grace"
    );
    assert_eq!(proc_state(pid), None, "killed and reaped: no zombie");
    assert_eq!(stats.pid(), None);
    assert!(logged_with(
        "stubborn",
        log::Level::Info,
        "was killed by signal 9 on shutdown"
    ));
}

#[tokio::test]
async fn sigterm_reaches_a_shell_scripts_children() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pids = dir.path().join("pids");
    let s = script(
        dir.path(),
        "parent.sh",
        &format!(
            "sleep 600 &\necho $$ $! > {}\necho '{{\"up\": 1}}'\nwait\n",
            lit(pids.to_string_lossy())
        ),
    );
    let (mut dev, _stats) = start(
        "family",
        &format!("command = [\"sh\", {}]", lit(s.to_string_lossy())),
        dir.path(),
    );
    next_batch(&mut dev).await;
    let mut both = Vec::new();
    eventually(|| {
        both = std::fs::read_to_string(&pids)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .collect();
        both.len() == 2
    })
    .await;
    assert_eq!(both.len(), 2, "the script wrote its pid and its child's");
    let (shell, child) = (both[0], both[1]);
    let _guards = (KillOnDrop(shell), KillOnDrop(child));
    let t = Instant::now();
    dev.stop().await.expect("a clean stop");
    assert!(t.elapsed() < WAIT);
    assert_eq!(proc_state(shell), None, "the script is reaped");
    // The child is reparented when the shell dies; whoever adopts it reaps it.
    assert!(
        eventually(|| dead(child)).await,
        "the script's child got SIGTERM too"
    );
}

#[tokio::test]
async fn a_poll_run_in_progress_is_stopped_on_shutdown() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pid_file = dir.path().join("pid");
    let s = script(
        dir.path(),
        "slow.sh",
        &format!(
            "echo $$ > {}\nexec sleep 600\n",
            lit(pid_file.to_string_lossy())
        ),
    );
    let (dev, _stats) = start(
        "slowpoll",
        &format!(
            "command = [\"sh\", {}]\nmode = \"poll\"\ntimeout = \"1m\"",
            lit(s.to_string_lossy())
        ),
        dir.path(),
    );
    let pid = read_pid(&pid_file).await;
    let _guard = KillOnDrop(pid);
    dev.stop().await.expect("a clean stop");
    assert_eq!(proc_state(pid), None, "stopped and reaped");
}
