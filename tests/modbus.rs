//! End to end with a Modbus device: the real daemon polls an in-process tokio-modbus TCP
//! server on 127.0.0.1 port 0, and a real MQTT client (rumqttc) sees the readings, writes
//! points through `<prefix>/<device>/<point>/set` and watches the device's availability
//! as the server is stopped and started again.

mod common;
/// The fake Modbus device of the plugin's own tests (std, tokio and tokio-modbus only).
#[path = "../plugins/modbus/tests/common/device.rs"]
mod device;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use device::{State, TcpDevice, Unit};
use rumqttc::QoS;
use tokio_modbus::Request;

/// Every wait is bounded by this.
const T: Duration = Duration::from_secs(10);

/// The unit id the device answers to; any other stays silent, like a wrong id on a line.
const UNIT: u8 = 1;

/// The register map of a small boiler controller, on unit [`UNIT`]. A register or bit
/// not in a map does not exist: reading or writing it is an "illegal data address"
/// exception.
fn boiler_unit() -> Unit {
    let mut u = Unit::default();
    // flow_temperature: f32 21.5 = 0x41AC0000 at 100..101 (ABCD); setpoint: i16 205 x 0.1
    // = 20.5 °C at 102, writable; firmware: u16 7 at 103, read-only.
    u.holding_at(100, &[0x41AC, 0x0000, 205, 7]);
    // outdoor: 615 x 0.1 - 40 = 21.5 °C.
    u.input_at(0, &[615]);
    // pump: a writable coil, off; alarm: a discrete input, on.
    u.coils.insert(0, false);
    u.discrete.insert(0, true);
    u
}

/// The `[[device]]` of the daemon's config: polled every `poll`, against `addr`.
fn boiler(addr: SocketAddr, poll: &str) -> String {
    format!(
        r#"
[[device]]
name = "boiler"
plugin = "modbus"
poll_interval = "{poll}"
transport = "tcp"
address = "{addr}"
unit = {UNIT}
timeout = "300ms"

[[device.point]]
name = "flow_temperature"
table = "holding"
address = 100
type = "f32"
unit = "°C"

[[device.point]]
name = "setpoint"
address = 102
type = "i16"
scale = 0.1
unit = "°C"
writable = true
min = 5
max = 30

[[device.point]]
name = "firmware"
address = 103

[[device.point]]
name = "outdoor"
table = "input"
address = 0
type = "i16"
scale = 0.1
offset = -40
unit = "°C"

[[device.point]]
name = "pump"
table = "coil"
address = 0
writable = true

[[device.point]]
name = "alarm"
table = "discrete"
address = 0
"#
    )
}

/// The daemon with the boiler against a fresh server, and a client subscribed to
/// `<prefix>/#`.
struct World {
    state: Arc<State>,
    device: Option<TcpDevice>,
    setup: Setup,
    daemon: Daemon,
    sub: Sub,
}

impl World {
    async fn start(poll: &str) -> World {
        let state = State::new([(UNIT, boiler_unit())]);
        let device = TcpDevice::start(state.clone()).await;
        let setup = Setup::new(&boiler(device.addr, poll));
        let daemon = setup.start();
        let sub = Sub::connect(setup.addr(), "watcher", &format!("{}/#", setup.prefix)).await;
        World {
            state,
            device: Some(device),
            setup,
            daemon,
            sub,
        }
    }

    fn topic(&self, rest: &str) -> String {
        format!("{}/{rest}", self.setup.prefix)
    }

    /// The next reading of `point` after the first `skip` messages: its JSON payload.
    async fn reading_after(
        &self,
        skip: usize,
        point: &str,
    ) -> serde_json::Map<String, serde_json::Value> {
        let topic = self.topic(&format!("boiler/{point}"));
        match self.sub.wait_for_after(skip, T, |m| m.topic == topic).await {
            Some(m) => reading(&m.payload),
            None => panic!(
                "no reading on {topic}; got {:?}\n{}",
                self.sub.messages(),
                self.daemon.log_text()
            ),
        }
    }

    /// Wait until the device's availability after the first `skip` messages is `want`.
    async fn availability_after(&self, skip: usize, want: &str) {
        let topic = self.topic("boiler/availability");
        let got = self
            .sub
            .wait_for_after(skip, T, |m| m.topic == topic && m.payload == want)
            .await;
        assert!(
            got.is_some(),
            "no {want:?} on {topic}; got {:?}\n{}",
            self.sub.messages(),
            self.daemon.log_text()
        );
    }

    async fn set(&self, point: &str, payload: &str) {
        self.sub
            .client
            .publish(
                self.topic(&format!("boiler/{point}/set")),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .expect("publish a /set");
    }

    /// Every write request the device got, in order.
    fn writes(&self) -> Vec<Request<'static>> {
        self.state.writes()
    }

    /// Wait until a line of the daemon's log satisfies `pred`; that line.
    async fn log_line(&self, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + T;
        loop {
            if let Some(l) = self.daemon.log_text().lines().find(|l| pred(l)) {
                return Some(l.to_string());
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) {
        let status = self.daemon.stop();
        assert!(status.success(), "{status}\n{}", self.daemon.log_text());
        if let Some(d) = self.device.take() {
            d.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_arrive_with_the_contract_payload() {
    let w = World::start("200ms").await;
    w.availability_after(0, "online").await;

    let cases: [(&str, serde_json::Value, Option<&str>); 6] = [
        ("flow_temperature", serde_json::json!(21.5), Some("°C")),
        ("setpoint", serde_json::json!(20.5), Some("°C")),
        ("firmware", serde_json::json!(7), None),
        ("outdoor", serde_json::json!(21.5), Some("°C")),
        ("pump", serde_json::json!(false), None),
        ("alarm", serde_json::json!(true), None),
    ];
    for (point, value, unit) in cases {
        let j = w.reading_after(0, point).await;
        assert_eq!(j["value"], value, "{point}: {j:?}");
        match unit {
            Some(u) => assert_eq!(j["unit"], u, "{point}: {j:?}"),
            None => assert!(!j.contains_key("unit"), "{point}: no unit: {j:?}"),
        }
        let ts = j["ts"].as_str().expect("ts is a string");
        assert!(is_contract_ts(ts), "{point}: ts {ts:?}");
        assert_eq!(j.len(), 2 + usize::from(unit.is_some()), "{point}: {j:?}");
    }
    // Integers stay integers: the u16 is a JSON integer, not 7.0.
    assert!(w.reading_after(0, "firmware").await["value"].is_u64());

    // Readings are retained: a late subscriber gets the last value at once.
    let late = Sub::connect(w.setup.addr(), "late", &w.topic("boiler/flow_temperature")).await;
    let m = late
        .wait_for(T, |m| m.retain)
        .await
        .expect("a retained reading for a late subscriber");
    assert_eq!(reading(&m.payload)["value"], serde_json::json!(21.5));

    // Polling goes on: a value changed in the device shows up.
    let seen = w.sub.messages().len();
    w.state.with_unit(UNIT, |u| u.holding.insert(103, 8));
    let topic = w.topic("boiler/firmware");
    let changed = w
        .sub
        .wait_for_after(seen, T, |m| {
            m.topic == topic && reading(&m.payload)["value"] == 8
        })
        .await;
    assert!(changed.is_some(), "{}", w.daemon.log_text());
    assert!(w.writes().is_empty(), "polling writes nothing");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_on_a_writable_point_writes_the_register_and_publishes_the_read_back() {
    // Polled once at start and then only every hour: a reading after the /set is the
    // read-back, not the next poll.
    let w = World::start("1h").await;
    let j = w.reading_after(0, "setpoint").await;
    assert_eq!(j["value"], 20.5);
    w.reading_after(0, "pump").await;

    let seen = w.sub.messages().len();
    w.set("setpoint", "22.5").await;
    let j = w.reading_after(seen, "setpoint").await;
    assert_eq!(j["value"], 22.5, "the read-back is published: {j:?}");
    assert_eq!(j["unit"], "°C");
    assert!(is_contract_ts(j["ts"].as_str().expect("ts")));
    // raw = 22.5 / 0.1 = 225, one register: function 6.
    assert_eq!(w.writes(), vec![Request::WriteSingleRegister(102, 225)]);
    assert_eq!(w.state.with_unit(UNIT, |u| u.holding[&102]), 225);

    // A coil takes true/false: function 5, and its read-back.
    let seen = w.sub.messages().len();
    w.set("pump", "true").await;
    let j = w.reading_after(seen, "pump").await;
    assert_eq!(j["value"], true, "{j:?}");
    assert!(w.state.with_unit(UNIT, |u| u.coils[&0]));
    assert_eq!(w.writes().last(), Some(&Request::WriteSingleCoil(0, true)));

    // Out of min..max: refused before anything is sent, with a warning.
    let before = w.writes().len();
    w.set("setpoint", "99").await;
    let line = w
        .log_line(|l| l.contains(" WARN ") && l.contains("setpoint") && l.contains("99"))
        .await;
    assert!(line.is_some(), "{}", w.daemon.log_text());
    assert_eq!(w.writes().len(), before, "nothing written");
    assert_eq!(w.state.with_unit(UNIT, |u| u.holding[&102]), 225);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_on_a_read_only_or_unknown_point_writes_nothing_and_warns() {
    let w = World::start("1h").await;
    w.reading_after(0, "firmware").await;

    w.set("firmware", "9").await;
    let line = w
        .log_line(|l| l.contains(" WARN ") && l.contains("firmware") && l.contains("read-only"))
        .await;
    assert!(line.is_some(), "{}", w.daemon.log_text());

    w.set("no_such_point", "1").await;
    let line = w
        .log_line(|l| l.contains(" WARN ") && l.contains("no_such_point"))
        .await;
    assert!(line.is_some(), "{}", w.daemon.log_text());

    // The input table cannot be written even when asked nicely.
    w.set("outdoor", "20").await;
    let line = w
        .log_line(|l| l.contains(" WARN ") && l.contains("outdoor") && l.contains("read-only"))
        .await;
    assert!(line.is_some(), "{}", w.daemon.log_text());

    assert!(w.writes().is_empty(), "nothing written: {:?}", w.writes());
    assert_eq!(w.state.with_unit(UNIT, |u| u.holding[&103]), 7);
    // The device is still served: a write to a writable point still goes through.
    let seen = w.sub.messages().len();
    w.set("setpoint", "21").await;
    assert_eq!(w.reading_after(seen, "setpoint").await["value"], 21.0);
    assert_eq!(w.writes(), vec![Request::WriteSingleRegister(102, 210)]);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_device_is_offline_and_online_again_when_it_is_back() {
    let mut w = World::start("200ms").await;
    w.availability_after(0, "online").await;
    w.reading_after(0, "flow_temperature").await;

    let device = w.device.take().expect("the device runs");
    let addr = device.addr;
    let seen = w.sub.messages().len();
    device.stop().await;
    w.availability_after(seen, "offline").await;
    // Retained: a client that comes now learns it at once.
    let late = Sub::connect(w.setup.addr(), "late", &w.topic("boiler/availability")).await;
    let m = late
        .wait_for(T, |m| m.retain)
        .await
        .expect("a retained availability");
    assert_eq!(m.payload, "offline");
    drop(late);

    // Back on the same address: online again, and readings flow again.
    let seen = w.sub.messages().len();
    w.state.with_unit(UNIT, |u| u.holding.insert(103, 11));
    w.device = Some(TcpDevice::start_on(addr, w.state.clone()).await);
    w.availability_after(seen, "online").await;
    let topic = w.topic("boiler/firmware");
    let fresh = w
        .sub
        .wait_for_after(seen, T, |m| {
            m.topic == topic && reading(&m.payload)["value"] == 11
        })
        .await;
    assert!(fresh.is_some(), "{}", w.daemon.log_text());
    w.stop().await;
}
