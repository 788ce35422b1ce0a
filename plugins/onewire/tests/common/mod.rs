//! A folder laid out like `/sys/bus/w1/devices`, and a watch over a running device.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use sensorgate_api::testing::{self, Event, Running, WAIT};
use sensorgate_api::{Adapter, Plugin, Quality, Reading, Value};
use tempfile::TempDir;

pub const A: &str = "28-0316a2794bff";
pub const B: &str = "10-000802b4ba0e";
pub const C: &str = "28-3c01d607d1a2";
/// A DS2413 switch: family 3a, not a temperature sensor.
pub const SWITCH: &str = "3a-0000001d2e3f";

/// A w1 devices folder in a temp dir, with its bus master as the kernel shows it.
pub struct Bus {
    dir: TempDir,
}

impl Bus {
    pub fn new() -> Bus {
        let dir = TempDir::new().expect("temp dir");
        let bus = Bus { dir };
        let master = bus.root().join("w1_bus_master1");
        std::fs::create_dir_all(&master).expect("bus master folder");
        std::fs::write(master.join("w1_master_slaves"), format!("{A}\n{B}\n"))
            .expect("bus master file");
        bus
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("devices")
    }

    /// The device table of a onewire device on this bus, with `extra` keys after `root`.
    pub fn table(&self, extra: &str) -> String {
        format!("root = {:?}\n{extra}", self.root().display().to_string())
    }

    /// A file of sensor `id`, replaced at once (a poll never reads half of it).
    pub fn write(&self, id: &str, file: &str, text: &str) {
        let dir = self.root().join(id);
        std::fs::create_dir_all(&dir).expect("sensor folder");
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).expect("write sensor file");
        std::fs::rename(&tmp, dir.join(file)).expect("rename sensor file");
    }

    /// Sensor `id` reads `millis` thousandths of a degree, CRC good.
    pub fn set(&self, id: &str, millis: i64) {
        self.write(id, "w1_slave", &w1_slave(millis, true));
    }

    /// Sensor `id` reads `millis`, but the kernel's CRC check says NO.
    pub fn set_crc_no(&self, id: &str, millis: i64) {
        self.write(id, "w1_slave", &w1_slave(millis, false));
    }

    /// Sensor `id` as newer kernels show it too: a `temperature` file only.
    pub fn set_temperature_file(&self, id: &str, millis: i64) {
        self.write(id, "temperature", &format!("{millis}\n"));
    }

    /// A folder of another family, with a file of its own.
    pub fn add_other(&self, id: &str) {
        self.write(id, "state", "\u{f}");
    }

    /// The sensor is unplugged: its folder goes.
    pub fn remove(&self, id: &str) {
        std::fs::remove_dir_all(self.root().join(id)).expect("remove sensor folder");
    }

    pub fn path(&self, id: &str) -> PathBuf {
        self.root().join(id)
    }

    pub fn state_dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A `w1_slave` file as the kernel writes it for a DS18B20 reading `millis`.
pub fn w1_slave(millis: i64, crc_ok: bool) -> String {
    let raw = (millis * 16 / 1000) as i16;
    let [lo, hi] = raw.to_le_bytes();
    let bytes = format!("{lo:02x} {hi:02x} 4b 46 7f ff 0c 10 5a");
    let verdict = if crc_ok { "YES" } else { "NO" };
    format!("{bytes} : crc=5a {verdict}\n{bytes} t={millis}\n")
}

/// Build a onewire device from `table`.
pub fn build(bus: &Bus, table: &str) -> Box<dyn Adapter> {
    sensorgate_onewire::PLUGIN
        .build(&testing::spec("onewire", "temps", table, bus.state_dir()))
        .unwrap_or_else(|e| panic!("the device builds: {e:?}\n{table}"))
}

/// The value of `point` in `batch` when it is a good reading.
pub fn good(batch: &[Reading], point: &str) -> Option<f64> {
    batch
        .iter()
        .find(|r| &*r.point == point && r.quality == Quality::Good)
        .map(|r| match r.value {
            Value::Float(f) => f,
            ref v => panic!("{point} is a Float, got {v:?}"),
        })
}

/// Why `point` in `batch` is bad, when it is a bad reading.
pub fn bad(batch: &[Reading], point: &str) -> Option<String> {
    batch
        .iter()
        .find(|r| &*r.point == point)
        .and_then(|r| match &r.quality {
            Quality::Bad(why) => Some(why.clone()),
            _ => None,
        })
}

/// A running device and everything it said so far.
pub struct Watch {
    pub running: Running,
    pub batches: Vec<Vec<Reading>>,
    pub availability: Vec<bool>,
}

impl Watch {
    pub fn start(adapter: Box<dyn Adapter>, bus: &Bus) -> Watch {
        Watch {
            running: testing::start(adapter, "temps", bus.state_dir()),
            batches: Vec::new(),
            availability: Vec::new(),
        }
    }

    /// Events until a batch satisfies `want`, within [`WAIT`]: that batch.
    pub async fn until(&mut self, what: &str, want: impl Fn(&[Reading]) -> bool) -> Vec<Reading> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.running.next(left).await {
                Some(Event::Readings(r)) => {
                    self.batches.push(r.clone());
                    if want(&r) {
                        return r;
                    }
                }
                Some(Event::Availability(online)) => self.availability.push(online),
                None => panic!(
                    "no batch with {what} within {WAIT:?}; last batches: {:#?}; availability: {:?}",
                    self.batches.iter().rev().take(2).collect::<Vec<_>>(),
                    self.availability
                ),
            }
        }
    }

    /// Events until the device says `online`, within [`WAIT`].
    pub async fn until_online(&mut self, online: bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.running.next(left).await {
                Some(Event::Readings(r)) => self.batches.push(r),
                Some(Event::Availability(o)) => {
                    self.availability.push(o);
                    if o == online {
                        return;
                    }
                }
                None => panic!(
                    "the device did not go {} within {WAIT:?}; availability: {:?}",
                    if online { "online" } else { "offline" },
                    self.availability
                ),
            }
        }
    }

    /// The batches since number `from`.
    pub fn since(&self, from: usize) -> &[Vec<Reading>] {
        &self.batches[from.min(self.batches.len())..]
    }

    pub async fn stop(self) {
        let r = self.running.stop().await;
        assert!(r.is_ok(), "run ends cleanly: {r:?}");
    }
}

/// Short waits for what must not come.
pub const SHORT: Duration = Duration::from_millis(200);
