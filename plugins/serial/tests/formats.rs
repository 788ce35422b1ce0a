//! Each line format over a real pty (socat): the test prints lines on the peer end as a
//! sensor would, the adapter publishes one batch per line.

use std::time::{Duration, SystemTime};

use sensorgate_api::{Quality, Value};

mod common;
use common::{next_batch, online, print, start, table, values, Socat};

fn v(point: &str, value: Value) -> (String, Value) {
    (point.to_string(), value)
}

#[tokio::test]
async fn json_lines_become_readings() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let socat = Socat::start(dir.path());
    let (mut dev, stats) = start(&table(&socat.dev, "baud = 115200\n"), dir.path());
    online(&mut dev).await;
    let mut peer = socat.open_peer();

    let before = SystemTime::now();
    print(
        &mut peer,
        "{\"temp\": 21.5, \"hum\": 40, \"ok\": true, \"fw\": \"1.2\", \"wind\": {\"speed\": 3.5}, \"x\": null}\r\n",
    );
    let batch = next_batch(&mut dev).await;
    // serde_json's map is sorted by key.
    assert_eq!(
        values(&batch),
        [
            v("fw", Value::Text("1.2".into())),
            v("hum", Value::Int(40)),
            v("ok", Value::Bool(true)),
            v("temp", Value::Float(21.5)),
            v("wind_speed", Value::Float(3.5)),
        ]
    );
    let after = SystemTime::now();
    for r in &batch {
        assert_eq!(&*r.device, "station");
        assert_eq!(r.quality, Quality::Good);
        assert!(
            r.ts >= before && r.ts <= after,
            "ts is the time the line was read"
        );
        assert_eq!(r.ts, batch[0].ts, "one line, one ts");
    }
    assert_eq!(stats.snapshot().skipped_keys, 1, "the null was skipped");

    // Keys are lower-cased into point names.
    print(&mut peer, "{\"Temp Out\": -2}\n");
    assert_eq!(
        values(&next_batch(&mut dev).await),
        [v("temp_out", Value::Int(-2))]
    );
    dev.stop().await.expect("stops cleanly");
}

#[tokio::test]
async fn kv_lines_with_points_rename_scale_and_unit() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let socat = Socat::start(dir.path());
    let cfg = table(
        &socat.dev,
        r#"
format = "kv"
[[point]]
name = "temperature"
key = "t"
unit = "°C"
device_class = "temperature"
[[point]]
name = "pressure"
key = "p"
scale = 0.1
offset = 1.0
unit = "hPa"
"#,
    );
    let (mut dev, _stats) = start(&cfg, dir.path());
    online(&mut dev).await;
    let mut peer = socat.open_peer();

    print(&mut peer, "t=21.5, h:40 ,p=10000,state=idle,time=12:30\n");
    let batch = next_batch(&mut dev).await;
    assert_eq!(
        values(&batch),
        [
            v("temperature", Value::Float(21.5)),
            v("h", Value::Int(40)),
            v("pressure", Value::Float(1001.0)),
            v("state", Value::Text("idle".into())),
            v("time", Value::Text("12:30".into())),
        ]
    );
    assert_eq!(batch[0].unit.as_deref(), Some("°C"));
    assert_eq!(batch[1].unit, None);
    assert_eq!(batch[2].unit.as_deref(), Some("hPa"));

    // A scaled point whose value is no number: kept out as a bad reading.
    print(&mut peer, "p=high\n");
    let batch = next_batch(&mut dev).await;
    assert!(
        matches!(batch[0].quality, Quality::Bad(_)),
        "{:?}",
        batch[0]
    );
    dev.stop().await.expect("stops cleanly");
}

#[tokio::test]
async fn kv_with_whitespace_separator_and_only_listed() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let socat = Socat::start(dir.path());
    let cfg = table(
        &socat.dev,
        r#"
format = "kv"
separator = " "
only_listed = true
[[point]]
name = "temp"
"#,
    );
    let (mut dev, _stats) = start(&cfg, dir.path());
    online(&mut dev).await;
    let mut peer = socat.open_peer();
    print(&mut peer, "TEMP=20   hum=41\n");
    assert_eq!(
        values(&next_batch(&mut dev).await),
        [v("temp", Value::Int(20))]
    );
    dev.stop().await.expect("stops cleanly");
}

#[tokio::test]
async fn csv_lines_by_columns() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let socat = Socat::start(dir.path());
    let cfg = table(
        &socat.dev,
        r#"
format = "csv"
separator = ";"
columns = ["_", "temp", "", "hum", "rain"]
delimiter = "\r\n"
"#,
    );
    let (mut dev, stats) = start(&cfg, dir.path());
    online(&mut dev).await;
    let mut peer = socat.open_peer();
    print(&mut peer, "2026-11-22T10:00;21.5;x;40;\r\n");
    assert_eq!(
        values(&next_batch(&mut dev).await),
        [v("temp", Value::Float(21.5)), v("hum", Value::Int(40))],
        "skipped columns and the empty field give nothing"
    );
    // Too few fields: malformed; the next good line still comes.
    print(&mut peer, "1;2\r\n2026-11-22T10:01;22;x;41;0.2\r\n");
    assert_eq!(
        values(&next_batch(&mut dev).await),
        [
            v("temp", Value::Int(22)),
            v("hum", Value::Int(41)),
            v("rain", Value::Float(0.2))
        ]
    );
    assert_eq!(stats.snapshot().malformed, 1);
    dev.stop().await.expect("stops cleanly");
}

#[tokio::test]
async fn regex_named_groups_are_points() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let socat = Socat::start(dir.path());
    let cfg = table(
        &socat.dev,
        r#"
format = "regex"
regex = 'T=(?P<temp>-?[0-9.]+)C H=(?P<hum>[0-9]+)%( W=(?P<wind>[0-9.]+))?'
[[point]]
name = "temp"
unit = "°C"
"#,
    );
    let (mut dev, stats) = start(&cfg, dir.path());
    online(&mut dev).await;
    let mut peer = socat.open_peer();
    print(&mut peer, "WS1 T=-3.5C H=80%\n");
    let batch = next_batch(&mut dev).await;
    assert_eq!(
        values(&batch),
        [v("temp", Value::Float(-3.5)), v("hum", Value::Int(80))],
        "a group that did not take part gives nothing"
    );
    assert_eq!(batch[0].unit.as_deref(), Some("°C"));
    print(&mut peer, "garbage\nWS1 T=1C H=2% W=3.5\n");
    assert_eq!(
        values(&next_batch(&mut dev).await),
        [
            v("temp", Value::Int(1)),
            v("hum", Value::Int(2)),
            v("wind", Value::Float(3.5))
        ]
    );
    assert_eq!(stats.snapshot().malformed, 1);
    assert_eq!(stats.snapshot().parsed, 2);
    // Shutdown is prompt and clean even with a partial line pending.
    print(&mut peer, "WS1 T=");
    tokio::time::sleep(Duration::from_millis(50)).await;
    dev.stop().await.expect("stops cleanly");
}

#[tokio::test]
async fn the_default_format_reads_json_and_kv_lines() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let socat = Socat::start(dir.path());
    let (mut dev, stats) = start(&table(&socat.dev, ""), dir.path());
    online(&mut dev).await;
    let mut peer = socat.open_peer();
    print(
        &mut peer,
        "temp=21.5,hum=40\n{\"temp\": 22}\nnot a reading\n",
    );
    assert_eq!(
        values(&next_batch(&mut dev).await),
        [v("temp", Value::Float(21.5)), v("hum", Value::Int(40))]
    );
    assert_eq!(
        values(&next_batch(&mut dev).await),
        [v("temp", Value::Int(22))]
    );
    common::until(&stats, "the third line counted as malformed", |s| {
        s.snapshot().malformed == 1
    })
    .await;
    dev.stop().await.expect("stops cleanly");
}
