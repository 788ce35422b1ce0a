//! One run of the program: start it in its own process group, log its standard error, and
//! stop it (SIGTERM to the group, a grace period, SIGKILL, always reaped).

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinHandle;

use crate::config::ExecConfig;
use crate::lines::{Line, LineReader};
use crate::protocol::{excerpt, stderr_level, PROTOCOL_VERSION};

/// The longest line read from standard output; a longer one is skipped and counted.
pub const MAX_LINE: usize = 64 * 1024;
/// The longest line of standard error logged as it is; a longer one is cut.
const MAX_STDERR_LINE: usize = 4 * 1024;
/// How long a SIGKILLed program may take to be reaped before it is left to tokio's
/// orphan reaper (a process in uninterruptible sleep, stuck on a device).
const REAP_LIMIT: Duration = Duration::from_secs(5);
/// How long the standard-error logger may go on after the program is gone (a helper that
/// left the process group may hold the pipe open).
const STDERR_LIMIT: Duration = Duration::from_secs(1);

/// A started program.
pub struct Running {
    pub child: Child,
    /// The program's pid, which is also its process group's id.
    pub pid: i32,
    pub stdout: LineReader<ChildStdout>,
    stderr_task: Option<JoinHandle<()>>,
    /// The last line the program wrote to standard error, for the message when it exits.
    last_stderr: Arc<Mutex<String>>,
}

/// Start `config.command` for device `device`: no standard input, standard output and
/// error piped, its own process group, the `SENSORGATE_*` variables set.
pub fn spawn(
    config: &ExecConfig,
    device: &str,
    poll_interval: Duration,
) -> std::io::Result<Running> {
    let program = match (&config.working_dir, config.command.first()) {
        // A relative path with a `/` is taken from `working_dir`, whatever the OS does.
        (Some(dir), Some(p)) if p.contains('/') && !p.starts_with('/') => {
            dir.join(p).into_os_string()
        }
        (_, Some(p)) => p.into(),
        (_, None) => return Err(std::io::Error::other("empty command")),
    };
    let mut cmd = Command::new(program);
    cmd.args(&config.command[1..])
        .env("PYTHONUNBUFFERED", "1")
        .env("SENSORGATE_PROTOCOL", PROTOCOL_VERSION.to_string())
        .env("SENSORGATE_DEVICE", device)
        .env("SENSORGATE_MODE", config.mode.name())
        .env(
            "SENSORGATE_POLL_INTERVAL_MS",
            poll_interval.as_millis().to_string(),
        )
        .envs(&config.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group: SIGTERM reaches a shell script's children too.
        .process_group(0)
        // The last resort, should this run be dropped without `stop`.
        .kill_on_drop(true);
    if let Some(dir) = &config.working_dir {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn()?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| std::io::Error::other("the started program has no pid"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no standard output pipe"))?;
    let last_stderr = Arc::new(Mutex::new(String::new()));
    let stderr_task = child.stderr.take().map(|stderr| {
        let device = device.to_string();
        let last = last_stderr.clone();
        tokio::spawn(async move {
            let mut lines = LineReader::new(stderr, MAX_STDERR_LINE);
            while let Ok(Some(line)) = lines.next().await {
                let text = match line {
                    Line::Text(t) => t,
                    Line::TooLong(n) => format!("(a line of {n} bytes, not logged)"),
                    Line::NotUtf8 => "(a line that is not UTF-8, not logged)".to_string(),
                };
                log_stderr(&device, &text);
                if !text.trim().is_empty() {
                    if let Ok(mut l) = last.lock() {
                        *l = text;
                    }
                }
            }
        })
    });
    Ok(Running {
        child,
        pid,
        stdout: LineReader::new(stdout, MAX_LINE),
        stderr_task,
        last_stderr,
    })
}

/// Log one line of a program's standard error at the level its prefix asks for.
pub fn log_stderr(device: &str, line: &str) {
    let (level, msg) = stderr_level(line);
    log::log!(target: "sensorgate_exec::stderr", level, "device {device}: {msg}");
}

impl Running {
    /// The last line of standard error, for a message about the exit.
    pub fn last_stderr(&self) -> Option<String> {
        let l = self.last_stderr.lock().ok()?;
        (!l.is_empty()).then(|| excerpt(&l, 200))
    }

    /// Signal the whole process group. A group that is gone already is fine.
    fn signal_group(&mut self, signal: i32) {
        // Never 0 or 1: kill(0) is our own group, kill(-1) every process we may signal.
        if self.pid <= 1 {
            return;
        }
        // SAFETY: kill(2) has no memory effects; the pid is the child's group id.
        let rc = unsafe { libc::kill(-self.pid, signal) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                log::debug!("signal {signal} to process group {}: {e}", self.pid);
                if signal == libc::SIGKILL {
                    let _ = self.child.start_kill();
                }
            }
        }
    }

    /// The program has exited by itself: kill what is left of its group (helpers it
    /// started), so that a restart does not run two of them.
    pub fn kill_leftovers(&mut self) {
        self.signal_group(libc::SIGKILL);
    }

    /// Stop the program: SIGTERM to its group, up to `grace` for it to exit, then SIGKILL;
    /// reaped before this returns (bounded: see [`REAP_LIMIT`]). `None` when it could not
    /// be reaped in time (tokio reaps it later).
    pub async fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            self.kill_leftovers();
            return Some(status);
        }
        self.signal_group(libc::SIGTERM);
        let status = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => Some(status),
            Ok(Err(_)) => None,
            Err(_) => {
                log::debug!(
                    "process {} did not exit within {} of SIGTERM; SIGKILL",
                    self.pid,
                    humantime::format_duration(grace)
                );
                None
            }
        };
        // Whatever is left of the group, the program itself too if it ignored SIGTERM.
        self.signal_group(libc::SIGKILL);
        match status {
            Some(s) => Some(s),
            None => match tokio::time::timeout(REAP_LIMIT, self.child.wait()).await {
                Ok(Ok(s)) => Some(s),
                _ => {
                    log::warn!(
                        "process {} did not go away after SIGKILL; left to be reaped later",
                        self.pid
                    );
                    None
                }
            },
        }
    }

    /// Wait (bounded) for the standard-error logger to log the last lines.
    pub async fn finish_stderr(&mut self) {
        if let Some(mut task) = self.stderr_task.take() {
            if tokio::time::timeout(STDERR_LIMIT, &mut task).await.is_err() {
                task.abort();
            }
        }
    }
}

impl Drop for Running {
    /// The last resort when a run is dropped without [`Running::stop`] (a panic, a
    /// cancelled task): kill the whole group, not just the program (`kill_on_drop`).
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal_group(libc::SIGKILL);
        }
        if let Some(task) = self.stderr_task.take() {
            task.abort();
        }
    }
}

/// `exited with status 1`, `was killed by signal 9`.
pub fn describe_exit(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        None => "was stopped".to_string(),
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exited with status {c}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            _ => format!("ended ({s})"),
        },
    }
}
