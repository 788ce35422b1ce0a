//! What the systemd unit and the .deb rely on: the notify protocol (READY=1, WATCHDOG=1,
//! STATUS=, STOPPING=1) over a real datagram socket, the way systemd runs the daemon, and
//! the packaged default configuration.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The daemon started as systemd starts a `Type=notify` service with `WatchdogSec=`:
/// NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID (its own PID: `sh` execs it).
struct Notified {
    child: Option<Child>,
    socket: UnixDatagram,
    log: std::path::PathBuf,
}

impl Notified {
    fn start(setup: &Setup, watchdog_usec: u64) -> Notified {
        let path = setup.dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
        let log = setup.dir.path().join("daemon.log");
        let child = Command::new("sh")
            .args(["-c", r#"WATCHDOG_PID=$$ exec "$0" run --config "$1""#, BIN])
            .arg(setup.config())
            .env("NOTIFY_SOCKET", &path)
            .env("WATCHDOG_USEC", watchdog_usec.to_string())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn sensorgate");
        Notified {
            child: Some(child),
            socket,
            log,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Notify messages until one satisfies `done` (all of them, in order), or panic
    /// after `limit`.
    fn until(&self, limit: Duration, done: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                let finished = done(&m);
                seen.push(m);
                if finished {
                    return seen;
                }
            }
        }
        panic!(
            "no such notify message within {limit:?}; got {seen:#?}\n{}",
            self.log_text()
        );
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on the PID of our child, not yet reaped.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = child.try_wait().expect("wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no exit after SIGTERM:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Notified {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn field<'m>(message: &'m str, key: &str) -> Option<&'m str> {
    message.lines().find_map(|l| l.strip_prefix(key))
}

#[test]
fn notify_ready_watchdog_status_and_stopping() {
    // An upstream that is not there: readings routed out wait in the buffer.
    let upstream = free_port();
    let setup = Setup::new("");
    setup.write(&format!(
        r#"
[upstream]
url = "mqtt://127.0.0.1:{upstream}"

[[upstream.route]]
filter = "{prefix}/#"
direction = "out"
qos = 1

[[device]]
name = "sim1"
plugin = "sim"
poll_interval = "100ms"

[[device.point]]
name = "count"
signal = "counter"

[[device]]
name = "sim2"
plugin = "sim"
poll_interval = "100ms"

[[device.point]]
name = "count"
signal = "counter"
"#,
        prefix = setup.prefix
    ));
    let mut d = Notified::start(&setup, 400_000);

    let first = d.until(Duration::from_secs(30), |m| m.contains("READY=1"));
    let ready = first.last().expect("one message");
    assert!(
        !first[..first.len() - 1]
            .iter()
            .any(|m| m.contains("READY=1")),
        "READY=1 twice"
    );
    assert!(ready.contains("WATCHDOG=1"), "{ready}");
    // The broker listens when READY=1 is sent.
    assert!(sensorgate::broker::mqtt_ping(setup.addr(), 4), "{ready}");
    assert!(
        field(ready, "STATUS=").is_some_and(|s| s.contains("/2 device(s) online")),
        "{ready}"
    );

    // Pings at half of WatchdogSec, and the status catches up with both devices online
    // and readings waiting in the buffer.
    let later = d.until(Duration::from_secs(30), |m| {
        field(m, "STATUS=").is_some_and(|s| {
            s.starts_with("2/2 device(s) online, buffer ") && !s.contains("buffer 0 message")
        })
    });
    let pings = later.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(pings >= 1, "{later:#?}");
    assert!(!later.iter().any(|m| m.contains("READY=1")), "{later:#?}");

    // SIGTERM: STOPPING=1, then a clean exit.
    let status = {
        let pid = d.child.as_ref().expect("running").id();
        let stopping = std::thread::spawn({
            let socket = d.socket.try_clone().expect("clone socket");
            move || {
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut buf = [0u8; 4096];
                while Instant::now() < deadline {
                    if let Ok(n) = socket.recv(&mut buf) {
                        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
                            return true;
                        }
                    }
                }
                false
            }
        });
        let s = d.stop();
        assert!(
            stopping.join().expect("reader"),
            "no STOPPING=1 from {pid}:\n{}",
            d.log_text()
        );
        s
    };
    assert!(status.success(), "{status}\n{}", d.log_text());
}

#[test]
fn without_watchdog_usec_there_are_no_pings() {
    let setup = Setup::new("");
    // WATCHDOG_USEC=0: no watchdog (systemd sets none without WatchdogSec=).
    let mut d = Notified::start(&setup, 0);
    let first = d.until(Duration::from_secs(30), |m| m.contains("READY=1"));
    assert!(
        field(first.last().expect("one"), "STATUS=") == Some("0/0 device(s) online, no upstream"),
        "{first:#?}"
    );
    assert!(
        !first.iter().any(|m| m.contains("WATCHDOG=1")),
        "{first:#?}"
    );
    let status = d.stop();
    assert!(status.success(), "{status}\n{}", d.log_text());
}

#[test]
fn the_packaged_default_config_checks() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/debian/sensorgate.toml"
    );
    let (ok, out, err) = sensorgate(&["check", "--config", path]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("0 device(s)"), "{out}");
    assert!(out.contains("127.0.0.1:1883"), "{out}");
}
