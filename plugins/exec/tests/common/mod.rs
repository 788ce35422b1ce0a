//! Shared by the exec tests: scripts in a temp folder, adapters built through the plugin,
//! a logger that keeps what was logged, and looks at processes by pid.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sensorgate_api::testing::{self, Event, Running, WAIT};
use sensorgate_api::{Reading, Value};
use sensorgate_exec::{ExecAdapter, Stats, PLUGIN};

/// A script `name` with `body` in `dir`, executable.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// A TOML string literal for `s`.
pub fn lit(s: impl AsRef<str>) -> String {
    toml::Value::String(s.as_ref().to_string()).to_string()
}

/// An exec adapter for device `name` with the keys in `table`, built by the plugin.
pub fn adapter(name: &str, table: &str, dir: &Path) -> ExecAdapter {
    let spec = testing::spec("exec", name, table, dir);
    PLUGIN
        .build_exec(&spec)
        .unwrap_or_else(|e| panic!("config does not build: {e:?}"))
}

/// Start it as the daemon would; its counters stay with the test.
pub fn start(name: &str, table: &str, dir: &Path) -> (Running, Arc<Stats>) {
    let a = adapter(name, table, dir);
    let stats = a.stats();
    (testing::start(Box::new(a), name, dir), stats)
}

/// The next batch of readings (availability changes skipped), within [`WAIT`].
pub async fn next_batch(dev: &mut Running) -> Vec<Reading> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match dev.next(left).await {
            Some(Event::Readings(r)) => return r,
            Some(Event::Availability(_)) => {}
            None => panic!("no readings within {WAIT:?}"),
        }
    }
}

/// The value of `point` in `batch`.
pub fn value(batch: &[Reading], point: &str) -> Option<Value> {
    batch
        .iter()
        .find(|r| &*r.point == point)
        .map(|r| r.value.clone())
}

/// Poll `cond` until it holds, up to [`WAIT`]; false if it never did.
pub async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// The first pid a script wrote to `file`, one a line (waits for it, up to [`WAIT`]).
pub async fn read_pid(file: &Path) -> i32 {
    let mut pid = None;
    eventually(|| {
        pid = std::fs::read_to_string(file)
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()));
        pid.is_some()
    })
    .await;
    pid.unwrap_or_else(|| panic!("no pid in {}", file.display()))
}

/// The state letter of `pid` (`R`, `S`, `Z`, …), `None` when there is no such process.
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) S …`: comm may hold blanks and parentheses; the state follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Dead: gone, or a zombie that only its parent (not us) can reap.
pub fn dead(pid: i32) -> bool {
    matches!(proc_state(pid), None | Some('Z') | Some('X'))
}

/// Kills a pid when dropped, should a test fail before the adapter stopped it.
pub struct KillOnDrop(pub i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0 > 1 && proc_state(self.0).is_some_and(|s| s != 'Z') {
            // SAFETY: kill(2) only; the pid is one a test's script reported.
            unsafe {
                libc::kill(self.0, libc::SIGKILL);
            }
        }
    }
}

/// What was logged, as (level, target, message).
type Logged = Vec<(log::Level, String, String)>;

fn logged() -> &'static Mutex<Logged> {
    static LOGGED: OnceLock<Mutex<Logged>> = OnceLock::new();
    LOGGED.get_or_init(|| Mutex::new(Vec::new()))
}

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        let line = (r.level(), r.target().to_string(), r.args().to_string());
        eprintln!("{:<5} {}: {}", line.0, line.1, line.2);
        if let Ok(mut l) = logged().lock() {
            l.push(line);
        }
    }
    fn flush(&self) {}
}

/// Keep every log record of this test binary (and echo it to stderr).
pub fn capture_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        if log::set_boxed_logger(Box::new(Capture)).is_ok() {
            log::set_max_level(log::LevelFilter::Trace);
        }
    });
}

/// The records whose message mentions `device <name>`.
pub fn logs_of(device: &str) -> Vec<(log::Level, String, String)> {
    let (a, b) = (format!("device {device}:"), format!("device {device} "));
    logged()
        .lock()
        .map(|l| {
            l.iter()
                .filter(|(_, _, m)| m.contains(&a) || m.contains(&b))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a record of `device` at `level` contains `text`.
pub fn logged_with(device: &str, level: log::Level, text: &str) -> bool {
    logs_of(device)
        .iter()
        .any(|(l, _, m)| *l == level && m.contains(text))
}
