//! Modbus RTU over a socat pty pair: the adapter on one end, a tokio-modbus RTU server on
//! the other. Two unit ids share the line (one bus task); a silent unit goes offline
//! while the other keeps publishing; writes work over RTU too.

use std::path::Path;
use std::time::Duration;

use sensorgate_api::Value;
use serde_json::json;
use tokio_modbus::Request;

mod common;
use common::{build, serve_rtu, values, Event, Running, Socat, State, Unit};

fn rtu_device(port: &Path, unit: u8, extra: &str) -> String {
    format!(
        "transport = \"rtu\"\nport = \"{}\"\nbaud = 9600\nparity = \"N\"\nunit = {unit}\n\
         timeout = \"300ms\"\nretries = 0\ndelay_on_unit_switch = \"5ms\"\n{extra}\n\
         [[point]]\nname = \"temp\"\naddress = 0\ntype = \"f32\"\nbyte_order = \"CDAB\"\n\
         [[point]]\nname = \"count\"\naddress = 2\ntype = \"u32\"\n\
         [[point]]\nname = \"setpoint\"\naddress = 4\nscale = 0.5\nwritable = true\n\
         [[point]]\nname = \"run\"\ntable = \"coil\"\naddress = 0\nwritable = true\n",
        port.display()
    )
}

fn unit(temp_words: [u16; 2], count: u32) -> Unit {
    let mut u = Unit::default();
    u.holding_at(
        0,
        &[
            temp_words[0],
            temp_words[1],
            (count >> 16) as u16,
            count as u16,
            40,
        ],
    );
    u.coils.insert(0, false);
    u
}

#[tokio::test]
async fn two_units_share_one_line_without_overlap() {
    let socat = Socat::start();
    // 21.5 in CDAB on unit 1, -3.0 (0xC0400000) on unit 2.
    let state = State::new([
        (1, unit([0x0000, 0x41AC], 7)),
        (2, unit([0x0000, 0xC040], 70_000)),
    ]);
    let server = serve_rtu(&socat.b, state.clone());
    let poll = Duration::from_millis(30);
    let mut one = Running::start(build("one", poll, &rtu_device(&socat.a, 1, "")), "one");
    let mut two = Running::start(build("two", poll, &rtu_device(&socat.a, 2, "")), "two");
    for _ in 0..10 {
        let a = values(&one.readings().await);
        assert_eq!(a["temp"], Value::Float(21.5));
        assert_eq!(a["count"], Value::Int(7));
        assert_eq!(a["setpoint"], Value::Float(20.0));
        assert_eq!(a["run"], Value::Bool(false));
        let b = values(&two.readings().await);
        assert_eq!(b["temp"], Value::Float(-3.0));
        assert_eq!(b["count"], Value::Int(70_000));
    }
    // Any overlap on the line would have garbled frames: every request reached the server
    // whole, from both units, and no device ever went offline.
    let log = state.requests();
    assert!(log.iter().filter(|(u, _)| *u == 1).count() >= 20, "{log:?}");
    assert!(log.iter().filter(|(u, _)| *u == 2).count() >= 20, "{log:?}");
    for run in [&mut one, &mut two] {
        let events = run.events_for(Duration::from_millis(100)).await;
        assert!(
            !events.iter().any(|e| matches!(e, Event::Online(false))),
            "{events:?}"
        );
    }
    one.stop().await.expect("stop");
    two.stop().await.expect("stop");
    server.abort();
}

#[tokio::test]
async fn a_silent_unit_is_offline_while_its_neighbour_publishes() {
    let socat = Socat::start();
    let state = State::new([(1, unit([0, 0x41AC], 1)), (2, unit([0, 0x41AC], 2))]);
    let server = serve_rtu(&socat.b, state.clone());
    let poll = Duration::from_millis(50);
    let mut one = Running::start(build("one", poll, &rtu_device(&socat.a, 1, "")), "one");
    let mut two = Running::start(build("two", poll, &rtu_device(&socat.a, 2, "")), "two");
    one.until_online(true).await;
    two.until_online(true).await;

    state.with_unit(2, |u| u.silent = true);
    two.until_online(false).await;
    // Unit 1 keeps publishing on the same line while unit 2 times out.
    for _ in 0..3 {
        assert_eq!(values(&one.readings().await)["count"], Value::Int(1));
    }
    state.with_unit(2, |u| u.silent = false);
    two.until_online(true).await;
    assert_eq!(values(&two.readings().await)["count"], Value::Int(2));
    one.stop().await.expect("stop");
    two.stop().await.expect("stop");
    server.abort();
}

#[tokio::test]
async fn writes_over_rtu() {
    let socat = Socat::start();
    let state = State::new([(3, unit([0, 0], 0))]);
    let server = serve_rtu(&socat.b, state.clone());
    let hour = Duration::from_secs(3600);
    let mut dev = Running::start(build("w", hour, &rtu_device(&socat.a, 3, "")), "w");
    dev.readings().await;
    dev.set("setpoint", json!(22.5)).await;
    assert_eq!(
        values(&dev.readings().await)["setpoint"],
        Value::Float(22.5)
    );
    dev.set("run", json!(true)).await;
    assert_eq!(values(&dev.readings().await)["run"], Value::Bool(true));
    assert_eq!(
        state.writes(),
        vec![
            Request::WriteSingleRegister(4, 45),
            Request::WriteSingleCoil(0, true)
        ]
    );
    dev.stop().await.expect("stop");
    server.abort();
}
