//! Sensors read from a folder laid out like /sys/bus/w1/devices: discovery, listed points,
//! bad readings, sensors unplugged and put back, and the device's availability.

mod common;

use std::collections::BTreeSet;

use common::{bad, build, good, Bus, Watch, A, B, C, SWITCH};
use sensorgate_api::testing::{self, Ack};
use sensorgate_api::{Quality, Value};

fn names(batch: &[sensorgate_api::Reading]) -> BTreeSet<String> {
    batch.iter().map(|r| r.point.to_string()).collect()
}

#[tokio::test]
async fn with_no_points_every_temperature_sensor_is_a_point_named_by_its_id() {
    let bus = Bus::new();
    bus.set(A, 23125);
    // B as newer kernels show it: a `temperature` file, no w1_slave.
    bus.set_temperature_file(B, -10250);
    bus.add_other(SWITCH);

    let mut adapter = build(&bus, &bus.table(""));
    let listed: Vec<String> = adapter.points().into_iter().map(|p| p.name).collect();
    assert_eq!(listed, [B, A], "points() lists what is there now, sorted");
    let info = &adapter.points()[0];
    assert_eq!(info.unit.as_deref(), Some("°C"));
    assert_eq!(info.device_class.as_deref(), Some("temperature"));
    assert_eq!(info.state_class.as_deref(), Some("measurement"));

    let run = testing::run(&mut *adapter, "temps", bus.state_dir(), 2, |_| Ack::Yes).await;
    assert!(run.result.is_ok(), "{:?}", run.result);
    assert_eq!(run.availability, [true]);
    assert!(run.batches.len() >= 2);
    for (batch, _) in &run.batches {
        assert_eq!(names(batch), BTreeSet::from([A.to_string(), B.to_string()]));
        assert_eq!(good(batch, A), Some(23.125));
        assert_eq!(good(batch, B), Some(-10.25));
        assert!(batch.iter().all(|r| r.unit.as_deref() == Some("°C")));
    }
}

#[tokio::test]
async fn sensors_plugged_in_later_are_found_at_the_next_poll() {
    let bus = Bus::new();
    bus.set(A, 20000);
    let mut w = Watch::start(build(&bus, &bus.table("")), &bus);
    let first = w.until("sensor A", |b| good(b, A).is_some()).await;
    assert_eq!(names(&first), BTreeSet::from([A.to_string()]));

    bus.set(C, 19500);
    let batch = w.until("sensor C", |b| good(b, C) == Some(19.5)).await;
    assert_eq!(good(&batch, A), Some(20.0));
    w.stop().await;
}

#[tokio::test]
async fn listed_points_read_only_their_sensors_under_their_names() {
    let bus = Bus::new();
    bus.set(A, 23125);
    bus.set(B, -10250);
    bus.set(C, 30000);
    let table = bus.table(&format!(
        r#"
        [[point]]
        name = "boiler_flow"
        sensor = "{A}"
        offset = -0.125

        [[point]]
        name = "{B}"
        unit = "°F"
        device_class = ""
        "#
    ));
    let mut adapter = build(&bus, &table);
    let points = adapter.points();
    assert_eq!(points[0].name, "boiler_flow");
    assert_eq!(points[0].source, format!("sensor {A}, offset -0.125"));
    assert_eq!(points[1].unit.as_deref(), Some("°F"));
    assert_eq!(points[1].device_class, None, "\"\" turns the default off");
    assert_eq!(points[1].state_class.as_deref(), Some("measurement"));

    let run = testing::run(&mut *adapter, "temps", bus.state_dir(), 2, |_| Ack::Yes).await;
    assert!(run.result.is_ok(), "{:?}", run.result);
    for (batch, _) in &run.batches {
        assert_eq!(
            names(batch),
            BTreeSet::from(["boiler_flow".to_string(), B.to_string()]),
            "C is not listed: not read"
        );
        assert_eq!(good(batch, "boiler_flow"), Some(23.0));
        // -10.25 °C = 13.55 °F.
        assert_eq!(good(batch, B), Some(13.55));
        let units: Vec<_> = batch.iter().map(|r| r.unit.as_deref()).collect();
        assert_eq!(units, [Some("°C"), Some("°F")]);
    }
}

#[tokio::test]
async fn a_crc_failure_and_the_power_on_value_are_not_published() {
    let bus = Bus::new();
    bus.set(A, 23125);
    bus.set(B, 20000);
    let mut w = Watch::start(build(&bus, &bus.table("")), &bus);
    w.until("A at 23.125", |b| good(b, A) == Some(23.125)).await;

    let from = w.batches.len();
    bus.set_crc_no(A, 55555);
    let batch = w
        .until("A with a CRC failure", |b| {
            bad(b, A).is_some_and(|why| why.contains("CRC"))
        })
        .await;
    assert_eq!(good(&batch, B), Some(20.0), "the other sensor goes on");
    let r = batch
        .iter()
        .find(|r| &*r.point == A)
        .expect("A in the batch");
    assert_eq!(
        r.value,
        Value::Float(55.555),
        "the bad value is kept for the log"
    );

    bus.set(A, 85000);
    w.until("A with the power-on value", |b| {
        bad(b, A).is_some_and(|why| why.contains("power-on"))
    })
    .await;
    bus.set(A, 24000);
    w.until("A at 24.0", |b| good(b, A) == Some(24.0)).await;
    for b in w.since(from) {
        assert!(
            !matches!(good(b, A), Some(v) if v == 55.555 || v == 85.0),
            "a bad value was published as good: {b:?}"
        );
    }

    // 85 °C right after a value near it is a real temperature (a hot boiler).
    bus.set(A, 84875);
    w.until("A at 84.875", |b| good(b, A) == Some(84.875)).await;
    bus.set(A, 85000);
    w.until("A at 85.0", |b| good(b, A) == Some(85.0)).await;

    assert_eq!(
        w.availability,
        [true],
        "B kept the device online throughout"
    );
    w.stop().await;
}

#[tokio::test]
async fn a_listed_sensor_unplugged_is_bad_until_it_comes_back() {
    let bus = Bus::new();
    bus.set(A, 21000);
    bus.set(B, 22000);
    let table = bus.table(&format!(
        "[[point]]\nname = \"left\"\nsensor = \"{A}\"\n[[point]]\nname = \"right\"\nsensor = \"{B}\"\n"
    ));
    let mut w = Watch::start(build(&bus, &table), &bus);
    w.until("left", |b| good(b, "left") == Some(21.0)).await;

    bus.remove(A);
    let batch = w
        .until("left gone", |b| {
            bad(b, "left").is_some_and(|why| why.contains("gone"))
        })
        .await;
    assert_eq!(good(&batch, "right"), Some(22.0));
    // Listed: it stays in every batch, bad, however long it is away (here: 5 polls,
    // more than offline_after).
    let from = w.batches.len();
    let polls = std::cell::Cell::new(0);
    w.until("five more polls", |_| {
        polls.set(polls.get() + 1);
        polls.get() >= 5
    })
    .await;
    for b in w.since(from) {
        assert!(
            bad(b, "left").is_some_and(|why| why.contains("gone")),
            "{b:?}"
        );
        assert_eq!(good(b, "right"), Some(22.0));
    }

    bus.set(A, 21500);
    w.until("left back", |b| good(b, "left") == Some(21.5))
        .await;
    assert_eq!(w.availability, [true]);
    w.stop().await;
}

#[tokio::test]
async fn a_discovered_sensor_unplugged_is_given_up_and_found_again() {
    let bus = Bus::new();
    bus.set(A, 21000);
    bus.set(B, 22000);
    let mut w = Watch::start(build(&bus, &bus.table("offline_after = 2\n")), &bus);
    w.until("A", |b| good(b, A) == Some(21.0)).await;

    bus.remove(A);
    w.until("A unreadable", |b| bad(b, A).is_some()).await;
    // After two bad reads in a row it is no longer read.
    let batch = w
        .until("batches without A", |b| !names(b).contains(A))
        .await;
    assert_eq!(good(&batch, B), Some(22.0));

    bus.set(A, 21250);
    w.until("A found again", |b| good(b, A) == Some(21.25))
        .await;
    assert_eq!(w.availability, [true]);
    w.stop().await;
}

#[tokio::test]
async fn the_device_is_offline_while_no_sensor_can_be_read() {
    let bus = Bus::new();
    bus.set(A, 18000);
    let table = bus.table(&format!("[[point]]\nname = \"room\"\nsensor = \"{A}\"\n"));
    let mut w = Watch::start(build(&bus, &table), &bus);
    w.until("room", |b| good(b, "room") == Some(18.0)).await;

    // Unplugged: offline after offline_after (3) bad reads, not at the first.
    let from = w.batches.len();
    bus.remove(A);
    w.until_online(false).await;
    let bad_batches = w
        .since(from)
        .iter()
        .filter(|b| bad(b, "room").is_some())
        .count();
    assert_eq!(
        bad_batches, 2,
        "the third bad read makes it offline, without a batch"
    );

    bus.set(A, 18500);
    w.until_online(true).await;
    w.until("room back", |b| good(b, "room") == Some(18.5))
        .await;

    // CRC failures in a row count the same.
    bus.set_crc_no(A, 18500);
    w.until_online(false).await;
    bus.set(A, 19000);
    w.until("room good again", |b| good(b, "room") == Some(19.0))
        .await;
    assert_eq!(w.availability, [true, false, true, false, true]);
    w.stop().await;
}

#[tokio::test]
async fn no_root_or_no_sensor_is_offline_until_one_appears() {
    let bus = Bus::new();
    std::fs::remove_dir_all(bus.root()).expect("remove the root");
    let mut w = Watch::start(build(&bus, &bus.table("")), &bus);
    w.until_online(false).await;

    // The bus comes up with its master only: still nothing to read.
    std::fs::create_dir_all(bus.root().join("w1_bus_master1")).expect("bus master");
    bus.add_other(SWITCH);
    // Then a sensor is plugged in.
    bus.set(A, 17250);
    let batch = w.until("A", |b| good(b, A) == Some(17.25)).await;
    assert_eq!(names(&batch), BTreeSet::from([A.to_string()]));
    assert_eq!(w.availability, [false, true]);
    w.stop().await;
}

#[tokio::test]
async fn a_read_that_hangs_times_out_and_is_not_started_twice() {
    let bus = Bus::new();
    bus.set(A, 20000);
    bus.set(B, 21000);
    let mut w = Watch::start(build(&bus, &bus.table("timeout = \"500ms\"\n")), &bus);
    w.until("A", |b| good(b, A) == Some(20.0)).await;

    // A FIFO blocks its reader until someone writes: a sensor that does not answer.
    let fifo = bus.path(A).join("w1_slave.fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(status.success());
    std::fs::rename(&fifo, bus.path(A).join("w1_slave")).expect("fifo in place");

    let batch = w
        .until("A timed out", |b| {
            bad(b, A).is_some_and(|why| why.contains("timeout"))
        })
        .await;
    assert_eq!(good(&batch, B), Some(21.0), "B is not held up by A");
    w.until("A still busy", |b| {
        bad(b, A).is_some_and(|why| why.contains("has not returned yet"))
    })
    .await;

    // Unblock the one read that hangs (a second one would make this open wait for
    // nothing), put a regular file back, and let the stale answer go.
    let path = bus.path(A).join("w1_slave");
    let good_file = bus.path(A).join("w1_slave.new");
    std::fs::write(&good_file, common::w1_slave(20500, true)).expect("new file");
    let writer = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open the fifo");
        std::fs::rename(&good_file, &path).expect("regular file back");
        w.write_all(common::w1_slave(99000, true).as_bytes())
            .expect("write the fifo");
    });
    tokio::time::timeout(sensorgate_api::testing::WAIT, writer)
        .await
        .expect("the hung read was waiting on the fifo")
        .expect("the writer does not panic");
    w.until("A good again", |b| good(b, A) == Some(20.5)).await;
    assert!(
        w.batches.iter().all(|b| good(b, A) != Some(99.0)),
        "the answer of a read that timed out is not published"
    );
    w.stop().await;
}

#[tokio::test]
async fn readings_carry_their_unit_and_bad_ones_their_reason() {
    let bus = Bus::new();
    bus.set(A, 0);
    bus.set(B, 0);
    bus.write(
        B,
        "w1_slave",
        "00 00 00 00 00 00 00 00 00 : crc=00 YES\n00 00 00 00 00 00 00 00 00 t=0\n",
    );
    let mut adapter = build(&bus, &bus.table(""));
    let run = testing::run(&mut *adapter, "temps", bus.state_dir(), 1, |_| Ack::Yes).await;
    let (batch, _) = &run.batches[0];
    assert_eq!(good(batch, A), Some(0.0));
    let b = batch.iter().find(|r| &*r.point == B).expect("B read");
    assert!(
        matches!(&b.quality, Quality::Bad(why) if why.contains("all bytes read 0")),
        "{b:?}"
    );
}

#[tokio::test]
async fn bad_readings_are_counted_by_kind() {
    use sensorgate_onewire::{OnewireAdapter, OnewireConfig};

    let bus = Bus::new();
    bus.set(A, 21000);
    bus.set_crc_no(B, 21000);
    bus.set(C, 85000);
    let spec = testing::spec("onewire", "temps", &bus.table(""), bus.state_dir());
    let config = OnewireConfig::from_spec(&spec).expect("the device builds");
    let mut adapter = OnewireAdapter::new(config);
    let run = testing::run(&mut adapter, "temps", bus.state_dir(), 3, |_| Ack::Yes).await;
    assert!(run.result.is_ok(), "{:?}", run.result);
    let polls = run.batches.len() as u64;
    assert!(polls >= 3);

    let a = adapter.sensor(A).expect("A is read");
    assert_eq!((a.good, a.bad_total()), (polls, 0));
    // Counts by kind: CRC, power-on, unreadable, invalid, timeout.
    let b = adapter.sensor(B).expect("B is read");
    assert_eq!((b.good, b.bad), (0, [polls, 0, 0, 0, 0]));
    let c = adapter.sensor(C).expect("C is read");
    assert_eq!((c.good, c.bad), (0, [0, polls, 0, 0, 0]));
    assert!(adapter.sensor(SWITCH).is_none());
}
