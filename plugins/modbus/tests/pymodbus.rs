//! The adapter and `sensorgate modbus read` against pymodbus, a Modbus simulator nobody
//! here wrote: `tests/pymodbus_server.py` serves a known register map (see its
//! docstring), over TCP on 127.0.0.1 and over RTU on one end of a socat pty pair. On both:
//! every type and byte order, scale and offset, coils and discrete inputs, a register
//! that does not exist (an exception), writes read back, the simulator killed and
//! started again. Over RTU also a unit id that never answers, next to unit 1.
//!
//! pymodbus (and, for RTU, pyserial) missing is a failure with the install command, not
//! a skip (tests/run.sh installs them).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use clap::Parser;
use sensorgate_api::Value;
use sensorgate_modbus::cli::{self, ModbusArgs, ModbusCommand};
use serde_json::json;

mod common;
use common::{build, crate_file, every_type_values, values, Event, Running, Socat, EVERY_TYPE};

const HOUR: Duration = Duration::from_secs(3600);

/// Where the simulator serves.
#[derive(Debug, Clone)]
enum Link {
    /// Modbus TCP on 127.0.0.1:port (0: any free port).
    Tcp(u16),
    /// Modbus RTU, 9600 8N1: the simulator on `server`, sensorgate on `client`, the two
    /// ends of a socat pty pair.
    Rtu { server: PathBuf, client: PathBuf },
}

impl Link {
    fn rtu(socat: &Socat) -> Link {
        Link::Rtu {
            server: socat.b.clone(),
            client: socat.a.clone(),
        }
    }
}

/// `python3 tests/pymodbus_server.py PORT | --serial DEV`, stopped (by its PID) when
/// dropped.
struct Simulator {
    child: Child,
    /// Where it serves (a TCP port as bound).
    link: Link,
    /// The simulator's stderr, for failure messages.
    log: tempfile::NamedTempFile,
}

impl Simulator {
    /// Serving `link`; returns once it takes requests.
    fn start(link: &Link) -> Simulator {
        let log = tempfile::NamedTempFile::new().expect("a temp file");
        let script = crate_file("tests/pymodbus_server.py");
        let mut cmd = Command::new("python3");
        cmd.arg(&script);
        match link {
            Link::Tcp(port) => cmd.arg(port.to_string()),
            Link::Rtu { server, .. } => cmd.arg("--serial").arg(server),
        };
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.reopen().expect("reopen the temp file"))
            .spawn()
            .expect("python3 runs (tests/run.sh installs pymodbus for it)");
        // The first line says where it serves; read it with a deadline.
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let mut sim = Simulator {
            child,
            link: link.clone(),
            log,
        };
        let served = match link {
            Link::Tcp(_) => line
                .strip_prefix("listening 127.0.0.1:")
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|p| p.parse::<u16>().ok())
                .map(Link::Tcp),
            Link::Rtu { server, .. } => line
                .strip_prefix(&format!("listening {} ", server.display()))
                .map(|_| link.clone()),
        };
        match served {
            Some(l) => sim.link = l,
            None => {
                sim.kill();
                panic!(
                    "the pymodbus simulator did not start (is pymodbus installed? \
                     `python3 -m pip install pymodbus pyserial`):\nstdout: {line:?}\n\
                     stderr: {}",
                    sim.log_text()
                );
            }
        }
        sim
    }

    /// The transport keys of a device on unit `unit` of this simulator's link.
    fn transport(&self, unit: u8) -> String {
        match &self.link {
            Link::Tcp(port) => {
                format!("transport = \"tcp\"\naddress = \"127.0.0.1:{port}\"\nunit = {unit}\n")
            }
            Link::Rtu { client, .. } => format!(
                "transport = \"rtu\"\nport = \"{}\"\nbaud = 9600\nunit = {unit}\n",
                client.display()
            ),
        }
    }

    /// The CLI options that reach unit 1 of this simulator.
    fn cli_link(&self) -> Vec<String> {
        let mut args: Vec<String> = match &self.link {
            Link::Tcp(port) => vec!["--tcp".into(), format!("127.0.0.1:{port}")],
            Link::Rtu { client, .. } => vec![
                "--port".into(),
                client.display().to_string(),
                "--baud".into(),
                "9600".into(),
            ],
        };
        // A generous timeout: the CLI does not retry, and a Python simulator on a loaded
        // machine can be slow to answer its first request.
        args.extend(["--unit", "1", "--timeout", "5s"].map(String::from));
        args
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// SIGKILL by PID, and reap it: the device is gone at once.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Beyond [`EVERY_TYPE`]: registers 34..49 do not exist in the simulator, 50 does.
const GAP_POINTS: &str = r#"
[[point]]
name = "ghost"
address = 40
[[point]]
name = "beyond"
address = 50
"#;

/// The device of every test: unit 1 of `sim`, with every point of the map.
fn device(sim: &Simulator, extra: &str) -> String {
    format!(
        "{}timeout = \"500ms\"\n{extra}\n{EVERY_TYPE}{GAP_POINTS}",
        sim.transport(1)
    )
}

/// What the first poll must publish: every point but `ghost`.
fn expected() -> BTreeMap<String, Value> {
    let mut v = every_type_values();
    v.insert("beyond".into(), Value::Int(77));
    v
}

/// `sensorgate modbus read ARGS…` against unit 1 of the simulator; what it prints.
async fn cli_read(sim: &Simulator, args: &[&str]) -> String {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        modbus: ModbusArgs,
    }
    let link = sim.cli_link();
    let mut argv = vec!["modbus", "read"];
    argv.extend(link.iter().map(String::as_str));
    argv.extend_from_slice(args);
    let ModbusCommand::Read(read) = Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
        .modbus
        .command
    else {
        panic!("not a read: {argv:?}");
    };
    let mut out = Vec::new();
    if let Err(e) = cli::read(&read, &mut out).await {
        panic!("{argv:?}: {e}\n{}", sim.log_text());
    }
    String::from_utf8(out).expect("utf-8")
}

/// The first poll publishes every point as [`expected`].
async fn every_type_byte_order_and_table(link: Link) {
    let sim = Simulator::start(&link);
    let mut run = Running::start(build("sim", HOUR, &device(&sim, "")), "sim");
    let readings = run.readings().await;
    // Registers 34..39 do not exist in the simulator: the merged read over them is
    // refused ("illegal data address"), its points are read one by one, and only the
    // point that really does not exist (`ghost`) stays unpublished.
    assert_eq!(values(&readings), expected(), "{}", sim.log_text());
    let temp = readings.iter().find(|r| &*r.point == "temp").expect("temp");
    assert_eq!(temp.unit.as_deref(), Some("°C"));
    run.stop().await.expect("a clean stop");
}

/// `/set` of each kind of writable point, read back and published; then what the
/// simulator holds, read by the CLI.
async fn writes_are_read_back(link: Link) {
    let sim = Simulator::start(&link);
    let mut run = Running::start(build("sim", HOUR, &device(&sim, "")), "sim");
    assert_eq!(
        values(&run.readings().await)["setpoint"],
        Value::Float(21.5)
    );
    let one = |k: &str, v: Value| BTreeMap::from([(k.to_string(), v)]);

    // One register, scaled: raw 225, function 6; the read-back is published.
    run.set("setpoint", json!(22.5)).await;
    assert_eq!(
        values(&run.readings().await),
        one("setpoint", Value::Float(22.5))
    );
    // Two registers in word-swapped order: function 16.
    run.set("target", json!(-3.75)).await;
    assert_eq!(
        values(&run.readings().await),
        one("target", Value::Float(-3.75))
    );
    // A coil: function 5.
    run.set("valve", json!("on")).await;
    assert_eq!(
        values(&run.readings().await),
        one("valve", Value::Bool(true))
    );
    // A bit of a register: read, set bit 4, write back; bit 3 is kept.
    run.set("bit4", json!(true)).await;
    assert_eq!(
        values(&run.readings().await),
        one("bit4", Value::Bool(true))
    );
    run.stop().await.expect("a clean stop");

    // What the simulator holds now, read by the CLI (a connection, or port, of its own).
    assert_eq!(
        cli_read(&sim, &["--address", "30", "--count", "2"]).await,
        "holding 30: 0x0018    24     24\n\
         holding 31: 0x00E1   225    225\n"
    );
    let f = cli_read(
        &sim,
        &[
            "--address",
            "32",
            "--count",
            "2",
            "--type",
            "f32",
            "--byte-order",
            "CDAB",
        ],
    )
    .await;
    assert!(f.ends_with("f32 CDAB @32: -3.75\n"), "{f}");
    assert_eq!(
        cli_read(&sim, &["--table", "coil", "--address", "0", "--count", "2"]).await,
        "coil 0: true\ncoil 1: true\n"
    );
}

/// Raw and decoded values as `sensorgate modbus read` prints them.
async fn the_cli_reads(link: Link) {
    let sim = Simulator::start(&link);
    let out = cli_read(&sim, &["--address", "0", "--count", "2", "--type", "f32"]).await;
    assert_eq!(
        out,
        "holding 0: 0x41AC 16812  16812\n\
         holding 1: 0x0000     0      0\n\
         f32 ABCD @0: 21.5\n"
    );
    let out = cli_read(
        &sim,
        &[
            "--address",
            "18",
            "--count",
            "4",
            "--type",
            "i64",
            "--byte-order",
            "DCBA",
        ],
    )
    .await;
    assert!(out.ends_with("i64 DCBA @18: -5\n"), "{out}");
    let out = cli_read(&sim, &["--table", "input", "--address", "1"]).await;
    assert_eq!(out, "input 1: 0x1806  6150   6150\n");
}

/// The simulator killed: the device goes offline; started again on the same link: the
/// device comes back online and publishes every point again.
async fn killed_and_restarted_is_offline_then_online(link: Link) {
    let mut sim = Simulator::start(&link);
    let link = sim.link.clone(); // The TCP port it bound, to take again.
    let mut run = Running::start(
        build("sim", Duration::from_millis(200), &device(&sim, "")),
        "sim",
    );
    run.until_online(true).await;
    assert_eq!(values(&run.readings().await)["beyond"], Value::Int(77));

    sim.kill();
    run.until_online(false).await;

    let sim = Simulator::start(&link);
    run.until_online(true).await;
    assert_eq!(
        values(&run.readings().await),
        expected(),
        "{}",
        sim.log_text()
    );
    run.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn tcp_every_type_byte_order_and_table() {
    every_type_byte_order_and_table(Link::Tcp(0)).await;
}

#[tokio::test]
async fn rtu_every_type_byte_order_and_table() {
    let socat = Socat::start();
    every_type_byte_order_and_table(Link::rtu(&socat)).await;
}

#[tokio::test]
async fn tcp_writes_are_read_back() {
    writes_are_read_back(Link::Tcp(0)).await;
}

#[tokio::test]
async fn rtu_writes_are_read_back() {
    let socat = Socat::start();
    writes_are_read_back(Link::rtu(&socat)).await;
}

#[tokio::test]
async fn tcp_the_cli_reads() {
    the_cli_reads(Link::Tcp(0)).await;
}

#[tokio::test]
async fn rtu_the_cli_reads() {
    let socat = Socat::start();
    the_cli_reads(Link::rtu(&socat)).await;
}

#[tokio::test]
async fn tcp_killed_and_restarted_is_offline_then_online() {
    killed_and_restarted_is_offline_then_online(Link::Tcp(0)).await;
}

#[tokio::test]
async fn rtu_killed_and_restarted_is_offline_then_online() {
    let socat = Socat::start();
    killed_and_restarted_is_offline_then_online(Link::rtu(&socat)).await;
}

/// Unit 2 on the simulator's line never answers (the simulator serves unit 1 only): that
/// device times out and goes offline, and never publishes, while unit 1 on the same
/// line and bus keeps publishing every point.
#[tokio::test]
async fn rtu_a_unit_that_never_answers_is_offline_while_unit_1_publishes() {
    let socat = Socat::start();
    let sim = Simulator::start(&Link::rtu(&socat));
    let poll = Duration::from_millis(100);
    let mut one = Running::start(build("one", poll, &device(&sim, "")), "one");
    let silent = format!(
        "{}timeout = \"200ms\"\nretries = 1\n[[point]]\nname = \"x\"\naddress = 8\n",
        sim.transport(2)
    );
    let mut two = Running::start(build("two", poll, &silent), "two");
    two.until_online(false).await;
    for _ in 0..3 {
        assert_eq!(
            values(&one.readings().await),
            expected(),
            "{}",
            sim.log_text()
        );
    }
    // Still offline, and nothing published for unit 2, while unit 1 went on.
    let events = two.events_for(Duration::from_millis(500)).await;
    assert!(
        events.iter().all(|e| matches!(e, Event::Online(false))),
        "{events:?}"
    );
    one.stop().await.expect("a clean stop");
    two.stop().await.expect("a clean stop");
}
