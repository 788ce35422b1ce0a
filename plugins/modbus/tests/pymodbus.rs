//! The adapter and `sensorgate modbus read` against pymodbus, a Modbus simulator nobody
//! here wrote: `tests/pymodbus_server.py` serves a known register map on 127.0.0.1 (see
//! its docstring). Every type and byte order, scale and offset, coils and discrete
//! inputs, a register that does not exist, writes read back, the simulator killed and
//! started again.
//!
//! pymodbus missing is a failure with the install command, not a skip (tests/run.sh
//! installs it).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use clap::Parser;
use sensorgate_api::Value;
use sensorgate_modbus::cli::{self, ModbusArgs, ModbusCommand};
use serde_json::json;

mod common;
use common::{build, crate_file, values, Running};

const HOUR: Duration = Duration::from_secs(3600);

/// `python3 tests/pymodbus_server.py PORT`, stopped (by its PID) when dropped.
struct Simulator {
    child: Child,
    port: u16,
    /// The simulator's stderr, for failure messages.
    log: tempfile::NamedTempFile,
}

impl Simulator {
    /// On `port` (0: any free port); returns once it accepts connections.
    fn start(port: u16) -> Simulator {
        let log = tempfile::NamedTempFile::new().expect("a temp file");
        let script = crate_file("tests/pymodbus_server.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.reopen().expect("reopen the temp file"))
            .spawn()
            .expect("python3 runs (tests/run.sh installs pymodbus for it)");
        // The first line says where it listens; read it with a deadline.
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
            port: 0,
            log,
        };
        let bound = line
            .strip_prefix("listening 127.0.0.1:")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|p| p.parse::<u16>().ok());
        match bound {
            Some(p) => sim.port = p,
            None => {
                sim.kill();
                panic!(
                    "the pymodbus simulator did not start (is pymodbus installed? \
                     `python3 -m pip install pymodbus`):\nstdout: {line:?}\nstderr: {}",
                    sim.log_text()
                );
            }
        }
        sim
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
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

const POINTS: &str = r#"
[[point]]
name = "f_abcd"
address = 0
type = "f32"
[[point]]
name = "f_cdab"
address = 2
type = "f32"
byte_order = "CDAB"
[[point]]
name = "f_badc"
address = 4
type = "f32"
byte_order = "BADC"
[[point]]
name = "f_dcba"
address = 6
type = "f32"
byte_order = "DCBA"
[[point]]
name = "u16"
address = 8
[[point]]
name = "i16"
address = 9
type = "i16"
[[point]]
name = "i32"
address = 10
type = "i32"
[[point]]
name = "u32"
address = 12
type = "u32"
byte_order = "CDAB"
[[point]]
name = "u64"
address = 14
type = "u64"
[[point]]
name = "i64"
address = 18
type = "i64"
byte_order = "DCBA"
[[point]]
name = "f64"
address = 22
type = "f64"
[[point]]
name = "label"
address = 26
type = "string"
length = 4
[[point]]
name = "bit3"
address = 30
bit = 3
[[point]]
name = "bit4"
address = 30
bit = 4
writable = true
[[point]]
name = "setpoint"
address = 31
type = "i16"
scale = 0.1
unit = "°C"
writable = true
[[point]]
name = "target"
address = 32
type = "f32"
byte_order = "CDAB"
writable = true
[[point]]
name = "ghost"
address = 40
[[point]]
name = "beyond"
address = 50
[[point]]
name = "temp"
table = "input"
address = 0
type = "i16"
scale = 0.1
unit = "°C"
[[point]]
name = "temp2"
table = "input"
address = 1
scale = 0.01
offset = -40
[[point]]
name = "pump"
table = "coil"
address = 0
[[point]]
name = "valve"
table = "coil"
address = 1
writable = true
[[point]]
name = "alarm"
table = "discrete"
address = 5
"#;

fn device(sim: &Simulator, extra: &str) -> String {
    format!(
        "transport = \"tcp\"\naddress = \"{}\"\nunit = 1\ntimeout = \"500ms\"\n{extra}\n{POINTS}",
        sim.addr()
    )
}

/// What the first poll must publish: every point but `ghost`.
fn expected() -> BTreeMap<String, Value> {
    [
        ("f_abcd", Value::Float(21.5)),
        ("f_cdab", Value::Float(21.5)),
        ("f_badc", Value::Float(21.5)),
        ("f_dcba", Value::Float(21.5)),
        ("u16", Value::Int(4242)),
        ("i16", Value::Int(-2)),
        ("i32", Value::Int(-100_000)),
        ("u32", Value::Int(0x1234_5678)),
        ("u64", Value::Int(0x0102_0304_0506_0708)),
        ("i64", Value::Int(-5)),
        ("f64", Value::Float(-1.25)),
        ("label", Value::Text("pump-7".into())),
        ("bit3", Value::Bool(true)),
        ("bit4", Value::Bool(false)),
        ("setpoint", Value::Float(21.5)),
        ("target", Value::Float(0.0)),
        ("beyond", Value::Int(77)),
        ("temp", Value::Float(21.5)),
        ("temp2", Value::Float(21.5)),
        ("pump", Value::Bool(true)),
        ("valve", Value::Bool(false)),
        ("alarm", Value::Bool(true)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// `sensorgate modbus read ARGS…` against the simulator; what it prints.
async fn cli_read(sim: &Simulator, args: &[&str]) -> String {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        modbus: ModbusArgs,
    }
    let addr = sim.addr();
    let mut argv = vec!["modbus", "read", "--tcp", &addr, "--unit", "1"];
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

#[tokio::test]
async fn every_type_byte_order_and_table_from_pymodbus() {
    let sim = Simulator::start(0);
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

#[tokio::test]
async fn writes_reach_pymodbus_and_are_read_back() {
    let sim = Simulator::start(0);
    let mut run = Running::start(build("sim", HOUR, &device(&sim, "")), "sim");
    assert_eq!(
        values(&run.readings().await)["setpoint"],
        Value::Float(21.5)
    );

    // One register, scaled: raw 225, function 6; the read-back is published.
    run.set("setpoint", json!(22.5)).await;
    assert_eq!(
        values(&run.readings().await),
        BTreeMap::from([("setpoint".to_string(), Value::Float(22.5))])
    );
    // Two registers in word-swapped order: function 16.
    run.set("target", json!(-3.75)).await;
    assert_eq!(
        values(&run.readings().await),
        BTreeMap::from([("target".to_string(), Value::Float(-3.75))])
    );
    // A coil: function 5.
    run.set("valve", json!("on")).await;
    assert_eq!(
        values(&run.readings().await),
        BTreeMap::from([("valve".to_string(), Value::Bool(true))])
    );
    // A bit of a register: read, set bit 4, write back; bit 3 is kept.
    run.set("bit4", json!(true)).await;
    assert_eq!(
        values(&run.readings().await),
        BTreeMap::from([("bit4".to_string(), Value::Bool(true))])
    );
    run.stop().await.expect("a clean stop");

    // What the simulator holds now, read by the CLI (a separate connection).
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

#[tokio::test]
async fn the_cli_reads_pymodbus() {
    let sim = Simulator::start(0);
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

#[tokio::test]
async fn pymodbus_killed_and_restarted_is_offline_then_online() {
    let mut sim = Simulator::start(0);
    let port = sim.port;
    let mut run = Running::start(
        build("sim", Duration::from_millis(200), &device(&sim, "")),
        "sim",
    );
    run.until_online(true).await;
    assert_eq!(values(&run.readings().await)["beyond"], Value::Int(77));

    sim.kill();
    run.until_online(false).await;

    let sim = Simulator::start(port);
    run.until_online(true).await;
    assert_eq!(
        values(&run.readings().await),
        expected(),
        "{}",
        sim.log_text()
    );
    run.stop().await.expect("a clean stop");
}
