//! Real ptys for the serial tests: a socat process joins `DIR/dev` (the device's port)
//! and `DIR/peer` (the test's end, where it writes the lines a sensor would print).
#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use sensorgate_api::testing::{self, Event, Running};
use sensorgate_api::{Reading, Value};
use sensorgate_serial::adapter::Stats;
use sensorgate_serial::SerialAdapter;

/// Every wait of these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

/// A socat pty pair; killed (by its PID) when dropped. socat is one of the test
/// packages (tests/run.sh installs it): without it the test fails, it is not skipped.
pub struct Socat {
    child: Option<Child>,
    pub dev: PathBuf,
    pub peer: PathBuf,
}

impl Socat {
    /// A pair with its links in `dir`.
    pub fn start(dir: &Path) -> Socat {
        let mut s = Socat {
            child: None,
            dev: dir.join("dev"),
            peer: dir.join("peer"),
        };
        s.restart();
        s
    }

    /// Start socat (again) on the same link paths.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "socat is still running");
        let child = Command::new("socat")
            .arg("-d")
            .arg("-d")
            .arg(format!("pty,raw,echo=0,link={}", self.dev.display()))
            .arg(format!("pty,raw,echo=0,link={}", self.peer.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat runs (install the socat package)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + WAIT;
        while !(self.dev.exists() && self.peer.exists()) {
            assert!(
                std::time::Instant::now() < deadline,
                "socat made no ptys within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Unplug: SIGTERM to socat (by its PID), so that it closes both ptys and removes its
    /// links, as a USB adapter's device node goes away.
    pub fn unplug(&mut self) {
        let mut child = self.child.take().expect("socat is running");
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM socat");
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if child.try_wait().expect("wait for socat").is_some() {
                break;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("socat did not stop on SIGTERM within {WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Stale links (if socat left any) would point at someone else's pty later.
        let _ = std::fs::remove_file(&self.dev);
        let _ = std::fs::remove_file(&self.peer);
    }

    /// The test's end of the line, to write (and read) as the sensor.
    pub fn open_peer(&self) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.peer)
            .expect("open the peer pty")
    }
}

impl Drop for Socat {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Write `text` to the peer as a sensor would print it.
pub fn print(peer: &mut File, text: &str) {
    peer.write_all(text.as_bytes()).expect("write to the peer");
    peer.flush().expect("flush the peer");
}

/// The serial plugin's keys for a device on `port`, with `extra` TOML after them.
pub fn table(port: &Path, extra: &str) -> String {
    format!("port = {:?}\n{extra}", port.display().to_string())
}

/// Build a device from its table (panics on config errors: the test's own mistake) and
/// start it; its counters stay readable.
pub fn start(table: &str, state_dir: &Path) -> (Running, Arc<Stats>) {
    let spec = testing::spec("serial", "station", table, state_dir);
    let adapter = SerialAdapter::from_spec(&spec).unwrap_or_else(|e| panic!("config: {e:?}"));
    let stats = adapter.stats();
    (
        testing::start(Box::new(adapter), "station", state_dir),
        stats,
    )
}

/// Wait until the device says it is online (skipping anything before).
pub async fn online(dev: &mut Running) {
    assert_eq!(
        dev.availability(WAIT).await,
        Some(true),
        "the device comes online"
    );
}

/// The next batch of readings (availability changes on the way are skipped).
pub async fn next_batch(dev: &mut Running) -> Vec<Reading> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match dev.next(left).await {
            Some(Event::Readings(r)) => return r,
            Some(Event::Availability(_)) => continue,
            None => panic!("no readings within {WAIT:?}"),
        }
    }
}

/// `(point, value)` of a batch, in order.
pub fn values(batch: &[Reading]) -> Vec<(String, Value)> {
    batch
        .iter()
        .map(|r| (r.point.to_string(), r.value.clone()))
        .collect()
}

/// Wait until `cond` holds on the counters (they are updated as lines are read).
pub async fn until(stats: &Stats, what: &str, cond: impl Fn(&Stats) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond(stats) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {WAIT:?}: {:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
