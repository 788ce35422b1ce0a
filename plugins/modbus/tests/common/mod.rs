//! Helpers shared by the tests: a real Modbus device (a tokio-modbus server over a
//! register map, on TCP port 0 or a serial line: [`device`]), the register map of every
//! type that both it and pymodbus serve, and a run of an adapter against a real events
//! channel whose other end plays the daemon.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Duration;

use sensorgate_api::{
    Adapter, AdapterContext, AdapterError, CancellationToken, Command, ConfigError, DeviceEvent,
    DeviceSpec, Plugin, Reading, Value,
};
use sensorgate_modbus::PLUGIN;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

pub mod device;
#[allow(unused_imports)] // Not every test uses every one.
pub use device::{Service, State, TcpDevice, Unit};

/// Every wait in the tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

/// A spec for device `name` polled every `poll` with the plugin keys in `table` (TOML).
pub fn spec(name: &str, poll: Duration, table: &str) -> DeviceSpec {
    DeviceSpec {
        name: name.into(),
        plugin: "modbus".into(),
        poll_interval: poll,
        state_dir: std::env::temp_dir().join("sensorgate-modbus-test-unused"),
        table: toml::from_str(table).expect("test TOML parses"),
    }
}

/// Build a device; panics with the errors if it does not build.
pub fn build(name: &str, poll: Duration, table: &str) -> Box<dyn Adapter> {
    match PLUGIN.build(&spec(name, poll, table)) {
        Ok(a) => a,
        Err(e) => panic!("does not build: {e:?}\n{table}"),
    }
}

/// The errors of building a device from `table`; panics if it builds.
pub fn errors(table: &str) -> Vec<ConfigError> {
    match PLUGIN.build(&spec("d", Duration::from_secs(1), table)) {
        Ok(_) => panic!("built, but should not have:\n{table}"),
        Err(e) => e,
    }
}

/// The points of the register map of every type, on unit 1 (holding unless said
/// otherwise, 0-based addresses as on the wire):
///
/// ```text
///  0  f32 21.5 ABCD     2  f32 21.5 CDAB      4  f32 21.5 BADC    6  f32 21.5 DCBA
///  8  u16 4242          9  i16 -2            10  i32 -100000     12  u32 0x12345678 CDAB
/// 14  u64 0x0102030405060708                 18  i64 -5 DCBA     22  f64 -1.25
/// 26  string "pump-7" (4 registers)          30  bits: 3 set, 4 clear (writable)
/// 31  i16 215, scale 0.1 (writable)          32  f32 0.0 CDAB (writable)
/// input 0: i16 215 x 0.1    input 1: 6150 x 0.01 - 40
/// coil 0: on, coil 1: off (writable)    discrete 5: on
/// ```
///
/// Served by [`every_type_unit`] here and by `tests/pymodbus_server.py`.
pub const EVERY_TYPE: &str = r#"
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

/// [`EVERY_TYPE`]'s registers as a [`Unit`] (bits 0..15 of both bit tables exist).
pub fn every_type_unit() -> Unit {
    let mut u = Unit::default();
    // f32 21.5 = 0x41AC0000 in ABCD, CDAB, BADC, DCBA.
    u.holding_at(0, &[0x41AC, 0, 0, 0x41AC, 0xAC41, 0, 0, 0xAC41]);
    // 4242, -2, -100000 (0xFFFE7960), 0x12345678 word-swapped.
    u.holding_at(8, &[4242, 0xFFFE, 0xFFFE, 0x7960, 0x5678, 0x1234]);
    u.holding_at(14, &[0x0102, 0x0304, 0x0506, 0x0708]);
    // -5 = 0xFFFFFFFFFFFFFFFB, bytes reversed.
    u.holding_at(18, &[0xFBFF, 0xFFFF, 0xFFFF, 0xFFFF]);
    // -1.25 = 0xBFF4000000000000.
    u.holding_at(22, &[0xBFF4, 0, 0, 0]);
    // "pump-7", NUL-padded; bit 3; 215; f32 0.0.
    u.holding_at(26, &[0x7075, 0x6D70, 0x2D37, 0, 0x0008, 215, 0, 0]);
    u.input_at(0, &[215, 6150]);
    for i in 0..16 {
        u.coils.insert(i, i == 0);
        u.discrete.insert(i, i == 5);
    }
    u
}

/// What a first poll of [`EVERY_TYPE`] publishes.
pub fn every_type_values() -> BTreeMap<String, Value> {
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

/// A socat process joining two ptys (`a`, `b`): a serial line without hardware; killed
/// (by its PID) when dropped. socat missing is a failure (tests/run.sh installs it).
pub struct Socat {
    child: Child,
    pub a: PathBuf,
    pub b: PathBuf,
    _dir: tempfile::TempDir,
}

impl Socat {
    /// Returns once both ptys exist.
    pub fn start() -> Socat {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        let child = std::process::Command::new("socat")
            .arg("-d")
            .arg("-d")
            .arg(format!("pty,raw,echo=0,link={}", a.display()))
            .arg(format!("pty,raw,echo=0,link={}", b.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("socat runs ({e}); `apt-get install socat`"));
        let socat = Socat {
            child,
            a,
            b,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + WAIT;
        while !(socat.a.exists() && socat.b.exists()) {
            assert!(
                std::time::Instant::now() < deadline,
                "socat made no ptys within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        socat
    }
}

impl Drop for Socat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tokio-modbus RTU server on the serial port `path` over `state`, in a task.
pub fn serve_rtu(path: &Path, state: Arc<State>) -> JoinHandle<()> {
    let serial = tokio_serial::SerialStream::open(&tokio_serial::new(path.to_string_lossy(), 9600))
        .expect("open the server end of the pty");
    let server = tokio_modbus::server::rtu::Server::new(serial);
    tokio::spawn(async move {
        let _ = server.serve_forever(Service(state)).await;
    })
}

/// What the fake daemon saw.
#[derive(Debug)]
pub enum Event {
    Readings(Vec<Reading>),
    Online(bool),
}

/// An adapter running in a task, with the daemon's side of its channels.
pub struct Running {
    events: mpsc::Receiver<DeviceEvent>,
    commands: mpsc::Sender<Command>,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), AdapterError>>,
}

impl Running {
    /// Run `adapter` as device `device`.
    pub fn start(mut adapter: Box<dyn Adapter>, device: &str) -> Running {
        let (events_tx, events) = mpsc::channel(64);
        let (commands, commands_rx) = mpsc::channel(8);
        let cancel = CancellationToken::new();
        let mut ctx = AdapterContext::new(
            Arc::from(device),
            Duration::from_secs(1),
            std::env::temp_dir(),
            cancel.clone(),
            events_tx,
            commands_rx,
        );
        let task = tokio::spawn(async move { adapter.run(&mut ctx).await });
        Running {
            events,
            commands,
            cancel,
            task,
        }
    }

    /// The next event; readings are acknowledged at once.
    pub async fn next(&mut self) -> Event {
        let event = timeout(WAIT, self.events.recv())
            .await
            .expect("an event within the wait")
            .expect("the adapter is running");
        match event {
            DeviceEvent::Readings { readings, ack } => {
                if let Some(ack) = ack {
                    let _ = ack.send(());
                }
                Event::Readings(readings)
            }
            DeviceEvent::Availability { online, .. } => Event::Online(online),
        }
    }

    /// The next batch of readings, skipping availability changes.
    pub async fn readings(&mut self) -> Vec<Reading> {
        loop {
            if let Event::Readings(r) = self.next().await {
                return r;
            }
        }
    }

    /// Wait until the device is said to be `online`, skipping readings.
    pub async fn until_online(&mut self, online: bool) {
        loop {
            if let Event::Online(o) = self.next().await {
                if o == online {
                    return;
                }
            }
        }
    }

    /// Events in the next `d`, without waiting for more.
    pub async fn events_for(&mut self, d: Duration) -> Vec<Event> {
        let mut out = Vec::new();
        let end = tokio::time::Instant::now() + d;
        while let Ok(Some(event)) = tokio::time::timeout_at(end, self.events.recv()).await {
            out.push(match event {
                DeviceEvent::Readings { readings, ack } => {
                    if let Some(ack) = ack {
                        let _ = ack.send(());
                    }
                    Event::Readings(readings)
                }
                DeviceEvent::Availability { online, .. } => Event::Online(online),
            });
        }
        out
    }

    /// A `/set` from MQTT.
    pub async fn set(&self, point: &str, value: serde_json::Value) {
        self.commands
            .send(Command {
                point: point.to_string(),
                value,
            })
            .await
            .expect("the adapter takes commands");
    }

    /// Cancel the run and return what `run` returned.
    pub async fn stop(mut self) -> Result<(), AdapterError> {
        self.cancel.cancel();
        // Keep draining so that a publish in progress is not stuck.
        let drain = async {
            while let Some(event) = self.events.recv().await {
                if let DeviceEvent::Readings { ack: Some(ack), .. } = event {
                    let _ = ack.send(());
                }
            }
        };
        let (result, _) = timeout(WAIT, async { tokio::join!(&mut self.task, drain) })
            .await
            .expect("run returns after the cancel");
        result.expect("the adapter task does not panic")
    }
}

/// The values of a batch, by point name.
pub fn values(readings: &[Reading]) -> BTreeMap<String, Value> {
    readings
        .iter()
        .map(|r| (r.point.to_string(), r.value.clone()))
        .collect()
}

/// The path of a file next to the crate (sample.toml).
pub fn crate_file(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}
