//! The adapter against a real Modbus TCP device on 127.0.0.1 port 0: every type and byte
//! order end to end (the map pymodbus serves too: `common::EVERY_TYPE`), merged reads, exceptions, timeouts and reconnects, writes.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sensorgate_api::Value;
use serde_json::json;
use tokio_modbus::Request;

mod common;
use common::{
    build, every_type_unit, every_type_values, values, Event, Running, State, TcpDevice, Unit,
    EVERY_TYPE,
};

const HOUR: Duration = Duration::from_secs(3600);

fn tcp_device(addr: std::net::SocketAddr, extra: &str, points: &str) -> String {
    format!("transport = \"tcp\"\naddress = \"{addr}\"\nunit = 1\n{extra}\n{points}")
}

#[tokio::test]
async fn every_type_and_byte_order_end_to_end() {
    let state = State::new([(1, every_type_unit())]);
    let dev = TcpDevice::start(state.clone()).await;
    let adapter = build("plc", HOUR, &tcp_device(dev.addr, "", EVERY_TYPE));
    let mut run = Running::start(adapter, "plc");
    let readings = run.readings().await;
    assert_eq!(values(&readings), every_type_values());
    let temp = readings.iter().find(|r| &*r.point == "temp").expect("temp");
    assert_eq!(temp.unit.as_deref(), Some("°C"));
    // 21 points in 4 requests: holding 0..33, input 0..1, coils 0..1, discrete 5.
    let requests = state.request_list();
    assert_eq!(
        requests,
        vec![
            Request::ReadCoils(0, 2),
            Request::ReadDiscreteInputs(5, 1),
            Request::ReadHoldingRegisters(0, 34),
            Request::ReadInputRegisters(0, 2),
        ]
    );
    run.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn merged_reads_respect_gap_and_size_limits() {
    let mut unit = Unit::default();
    unit.holding_at(0, &[7; 200]);
    let state = State::new([(1, unit)]);
    let dev = TcpDevice::start(state.clone()).await;
    // 20 points, every 5th register from 0 to 95, and one at 130 (a gap of 34).
    let mut points = String::new();
    for i in 0..20 {
        points.push_str(&format!(
            "[[point]]\nname = \"p{i}\"\naddress = {}\n",
            i * 5
        ));
    }
    points.push_str("[[point]]\nname = \"far\"\naddress = 130\n");

    let adapter = build("a", HOUR, &tcp_device(dev.addr, "", &points));
    let plan = adapter.describe();
    assert!(
        plan.iter()
            .any(|l| l.starts_with("read plan: 2 request(s)")),
        "{plan:?}"
    );
    assert_eq!(
        one_poll(adapter, &state, 21).await,
        vec![
            Request::ReadHoldingRegisters(0, 96),
            Request::ReadHoldingRegisters(130, 1)
        ]
    );

    // A device that takes 32 registers at most, and no gaps.
    let limits = "max_registers_per_read = 32\nmax_gap = 4";
    let adapter = build("b", HOUR, &tcp_device(dev.addr, limits, &points));
    assert_eq!(
        one_poll(adapter, &state, 21).await,
        vec![
            Request::ReadHoldingRegisters(0, 31),
            Request::ReadHoldingRegisters(35, 31),
            Request::ReadHoldingRegisters(70, 26),
            Request::ReadHoldingRegisters(130, 1),
        ]
    );
}

/// Run `adapter` until its first batch (of `readings` readings): the requests it made.
async fn one_poll(
    adapter: Box<dyn sensorgate_api::Adapter>,
    state: &State,
    readings: usize,
) -> Vec<Request<'static>> {
    state.clear_log();
    let mut run = Running::start(adapter, "d");
    assert_eq!(run.readings().await.len(), readings);
    run.stop().await.expect("stop");
    state.request_list()
}

#[tokio::test]
async fn an_exception_is_the_points_problem_and_the_others_publish() {
    let mut unit = Unit::default();
    // 0 and 3 exist, 1 and 2 do not: a merged read 0..3 fails.
    unit.holding_at(0, &[11])
        .holding_at(3, &[33])
        .holding_at(10, &[20]);
    let state = State::new([(1, unit)]);
    let dev = TcpDevice::start(state.clone()).await;
    let points = r#"
[[point]]
name = "a"
address = 0
[[point]]
name = "b"
address = 3
[[point]]
name = "c"
address = 10
[[point]]
name = "missing"
address = 50
"#;
    let adapter = build(
        "x",
        Duration::from_millis(200),
        &tcp_device(dev.addr, "", points),
    );
    let mut run = Running::start(adapter, "x");
    for cycle in 0..2 {
        let got = values(&run.readings().await);
        let want: BTreeMap<String, Value> = [("a", 11), ("b", 33), ("c", 20)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::Int(v)))
            .collect();
        assert_eq!(got, want, "cycle {cycle}: the good points publish");
    }
    run.stop().await.expect("stop");
    let requests = state.request_list();
    // Cycle 1: the merged read fails, its points are read alone; the missing point fails.
    assert_eq!(
        requests[..5],
        [
            Request::ReadHoldingRegisters(0, 11),
            Request::ReadHoldingRegisters(0, 1),
            Request::ReadHoldingRegisters(3, 1),
            Request::ReadHoldingRegisters(10, 1),
            Request::ReadHoldingRegisters(50, 1),
        ]
    );
    // From then on the refused points are read alone, without the failed merged read.
    assert_eq!(
        requests[5..9],
        [
            Request::ReadHoldingRegisters(0, 1),
            Request::ReadHoldingRegisters(3, 1),
            Request::ReadHoldingRegisters(10, 1),
            Request::ReadHoldingRegisters(50, 1),
        ]
    );
}

#[tokio::test]
async fn a_silent_unit_goes_offline_and_comes_back() {
    let mut unit = Unit::default();
    unit.holding_at(0, &[1]);
    let state = State::new([(1, unit)]);
    let dev = TcpDevice::start(state.clone()).await;
    let adapter = build(
        "s",
        Duration::from_millis(100),
        &tcp_device(
            dev.addr,
            "timeout = \"150ms\"\nretries = 1",
            "[[point]]\nname = \"v\"\naddress = 0\n",
        ),
    );
    let mut run = Running::start(adapter, "s");
    run.until_online(true).await;
    assert_eq!(values(&run.readings().await)["v"], Value::Int(1));

    state.with_unit(1, |u| u.silent = true);
    run.until_online(false).await;
    let before = state.connections.load(Ordering::SeqCst);
    state.with_unit(1, |u| {
        u.silent = false;
        u.holding.insert(0, 2);
    });
    run.until_online(true).await;
    assert_eq!(values(&run.readings().await)["v"], Value::Int(2));
    // After a timeout the TCP connection is opened afresh.
    assert!(state.connections.load(Ordering::SeqCst) > before);
    run.stop().await.expect("stop");
}

#[tokio::test]
async fn a_stopped_device_is_reconnected_when_it_comes_back() {
    let mut unit = Unit::default();
    unit.holding_at(0, &[5]);
    let state = State::new([(1, unit)]);
    let dev = TcpDevice::start(state.clone()).await;
    let addr = dev.addr;
    let adapter = build(
        "r",
        Duration::from_millis(100),
        &tcp_device(
            addr,
            "timeout = \"200ms\"",
            "[[point]]\nname = \"v\"\naddress = 0\n",
        ),
    );
    let mut run = Running::start(adapter, "r");
    assert_eq!(values(&run.readings().await)["v"], Value::Int(5));
    dev.stop().await;
    run.until_online(false).await;
    let dev = TcpDevice::start_on(addr, state.clone()).await;
    run.until_online(true).await;
    assert_eq!(values(&run.readings().await)["v"], Value::Int(5));
    run.stop().await.expect("stop");
    drop(dev);
}

#[tokio::test]
async fn points_have_their_own_poll_interval() {
    let mut unit = Unit::default();
    unit.holding_at(0, &[1, 2]);
    let state = State::new([(1, unit)]);
    let dev = TcpDevice::start(state.clone()).await;
    let points = r#"
[[point]]
name = "fast"
address = 0
[[point]]
name = "slow"
address = 1
poll_interval = "1h"
"#;
    let adapter = build(
        "i",
        Duration::from_millis(50),
        &tcp_device(dev.addr, "", points),
    );
    let mut run = Running::start(adapter, "i");
    // At start: both; then only the fast one.
    assert_eq!(run.readings().await.len(), 2);
    for _ in 0..3 {
        let r = run.readings().await;
        assert_eq!(r.len(), 1);
        assert_eq!(&*r[0].point, "fast");
    }
    run.stop().await.expect("stop");
}

const WRITABLE: &str = r#"
[[point]]
name = "setpoint"
address = 0
type = "i16"
scale = 0.1
offset = 5
writable = true
min = 5
max = 30
[[point]]
name = "power"
address = 2
type = "f32"
byte_order = "CDAB"
writable = true
[[point]]
name = "mode"
address = 4
bit = 2
writable = true
[[point]]
name = "readonly"
address = 5
[[point]]
name = "pump"
table = "coil"
address = 0
writable = true
"#;

/// A device with [`WRITABLE`]'s points against a server holding `mode` in register 4,
/// after its first poll, with the request log cleared.
async fn writable(mode: u16) -> (std::sync::Arc<State>, TcpDevice, Running) {
    let mut unit = Unit::default();
    unit.holding_at(0, &[0, 0, 0, 0, mode, 9]);
    unit.coils.insert(0, false);
    let state = State::new([(1, unit)]);
    let dev = TcpDevice::start(state.clone()).await;
    let adapter = build("w", HOUR, &tcp_device(dev.addr, "", WRITABLE));
    let mut run = Running::start(adapter, "w");
    run.readings().await;
    state.clear_log();
    (state, dev, run)
}

#[tokio::test]
async fn writes_go_through_scale_and_are_read_back() {
    let (state, _dev, mut run) = writable(0x0001).await;

    // 21.5 = raw * 0.1 + 5: raw 165, function 6; then read back and published.
    run.set("setpoint", json!(21.5)).await;
    let r = run.readings().await;
    assert_eq!(
        values(&r),
        [("setpoint".to_string(), Value::Float(21.5))].into()
    );
    assert_eq!(state.with_unit(1, |u| u.holding[&0]), 165);

    // f32 in two registers: function 16, CDAB.
    run.set("power", json!(21.5)).await;
    assert_eq!(values(&run.readings().await)["power"], Value::Float(21.5));
    assert_eq!(
        state.with_unit(1, |u| (u.holding[&2], u.holding[&3])),
        (0, 0x41AC)
    );

    // A bit of a register: read, set the bit, write the register; the others stay.
    run.set("mode", json!(true)).await;
    assert_eq!(values(&run.readings().await)["mode"], Value::Bool(true));
    assert_eq!(state.with_unit(1, |u| u.holding[&4]), 0x0005);

    // A coil: function 5, with 1/0 or true/false.
    run.set("pump", json!(1)).await;
    assert_eq!(values(&run.readings().await)["pump"], Value::Bool(true));
    assert!(state.with_unit(1, |u| u.coils[&0]));

    assert_eq!(
        state.writes(),
        vec![
            Request::WriteSingleRegister(0, 165),
            Request::WriteMultipleRegisters(2, vec![0, 0x41AC].into()),
            Request::WriteSingleRegister(4, 5),
            Request::WriteSingleCoil(0, true),
        ]
    );
    run.stop().await.expect("stop");
}

#[tokio::test]
async fn refused_writes_write_nothing() {
    let (state, _dev, mut run) = writable(0).await;

    run.set("setpoint", json!(30.5)).await; // over max
    run.set("setpoint", json!(4)).await; // under min
    run.set("setpoint", json!("warm")).await; // not a number
    run.set("readonly", json!(1)).await; // writable = false
    run.set("nosuch", json!(1)).await; // no such point
    run.set("pump", json!(2)).await; // not a bool
                                     // Nothing is published for any of them, and nothing reaches the device.
    let events = run.events_for(Duration::from_millis(300)).await;
    assert!(
        events.iter().all(|e| !matches!(e, Event::Readings(_))),
        "{events:?}"
    );
    assert_eq!(state.requests(), vec![]);
    // A good one still goes through afterwards.
    run.set("setpoint", json!(30)).await;
    assert_eq!(
        values(&run.readings().await)["setpoint"],
        Value::Float(30.0)
    );
    run.stop().await.expect("stop");
}

#[tokio::test]
async fn an_exception_on_write_is_logged_not_fatal() {
    // The device refuses writes to register 0 (it is not there to write), reads work.
    let mut unit = Unit::default();
    unit.input_at(0, &[1]);
    unit.holding_at(1, &[2]);
    let state = State::new([(1, unit)]);
    let dev = TcpDevice::start(state.clone()).await;
    let points = "[[point]]\nname = \"ghost\"\naddress = 0\nwritable = true\n\
                  [[point]]\nname = \"real\"\naddress = 1\n";
    let adapter = build(
        "e",
        Duration::from_millis(100),
        &tcp_device(dev.addr, "", points),
    );
    let mut run = Running::start(adapter, "e");
    assert_eq!(values(&run.readings().await)["real"], Value::Int(2));
    run.set("ghost", json!(3)).await;
    // Polling goes on.
    assert_eq!(values(&run.readings().await)["real"], Value::Int(2));
    assert_eq!(values(&run.readings().await)["real"], Value::Int(2));
    run.stop().await.expect("stop");
}

#[tokio::test]
async fn devices_on_one_address_share_one_connection_and_never_overlap() {
    let mut one = Unit::default();
    one.holding_at(0, &[1]);
    let mut two = Unit::default();
    two.holding_at(0, &[2]);
    let state = State::new([(1, one), (2, two)]);
    *state.answer_time.lock().expect("lock") = Duration::from_millis(5);
    let dev = TcpDevice::start(state.clone()).await;
    let device = |unit: u8| {
        format!(
            "address = \"{}\"\nunit = {unit}\ndelay_on_unit_switch = \"2ms\"\n\
             [[point]]\nname = \"v\"\naddress = 0\n",
            dev.addr
        )
    };
    let mut a = Running::start(build("a", Duration::from_millis(20), &device(1)), "a");
    let mut b = Running::start(build("b", Duration::from_millis(20), &device(2)), "b");
    for _ in 0..10 {
        assert_eq!(values(&a.readings().await)["v"], Value::Int(1));
        assert_eq!(values(&b.readings().await)["v"], Value::Int(2));
    }
    a.stop().await.expect("stop");
    b.stop().await.expect("stop");
    assert_eq!(
        state.connections.load(Ordering::SeqCst),
        1,
        "one connection"
    );
    assert_eq!(
        state.max_in_flight.load(Ordering::SeqCst),
        1,
        "one at a time"
    );
}
