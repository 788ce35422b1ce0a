//! What a real line does to a device: garbage between good lines, a line without end, the
//! USB adapter pulled out and put back, a port that is not there at start.

use sensorgate_api::Value;

mod common;
use common::{next_batch, online, print, start, table, until, values, Socat, WAIT};

#[tokio::test]
async fn malformed_lines_are_counted_and_skipped_while_good_lines_flow() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let socat = Socat::start(dir.path());
    let (mut dev, stats) = start(&table(&socat.dev, "format = \"json\"\n"), dir.path());
    online(&mut dev).await;
    let mut peer = socat.open_peer();

    for i in 0..20 {
        print(&mut peer, &format!("{{\"n\": {i}}}\n"));
        // Not JSON, not an object, invalid UTF-8, an object without values: all malformed.
        print(&mut peer, "{\"n\": \n");
        print(&mut peer, "[1, 2]\n");
        peer_bytes(&mut peer, b"\xff\xfe{}\n");
        print(&mut peer, "{}\n");
        // A blank line is neither.
        print(&mut peer, "\r\n");
    }
    for i in 0..20 {
        let batch = next_batch(&mut dev).await;
        assert_eq!(values(&batch), [("n".to_string(), Value::Int(i))]);
    }
    until(&stats, "80 malformed lines counted", |s| {
        s.snapshot().malformed == 80
    })
    .await;
    let s = stats.snapshot();
    assert_eq!(s.parsed, 20);
    assert_eq!(s.lines, 120);
    dev.stop().await.expect("stops cleanly");
}

fn peer_bytes(peer: &mut std::fs::File, b: &[u8]) {
    use std::io::Write;
    peer.write_all(b).expect("write to the peer");
}

#[tokio::test]
async fn a_too_long_line_is_dropped_up_to_the_next_delimiter() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let socat = Socat::start(dir.path());
    let cfg = table(&socat.dev, "format = \"kv\"\nmax_line_length = 64\n");
    let (mut dev, stats) = start(&cfg, dir.path());
    online(&mut dev).await;
    let mut peer = socat.open_peer();

    // 10 kB without a delimiter, in pieces, then its end, then a good line.
    let long = format!("a={}", "9".repeat(1000));
    for _ in 0..10 {
        print(&mut peer, &long);
    }
    print(&mut peer, ",b=1\nt=2\n");
    let batch = next_batch(&mut dev).await;
    assert_eq!(values(&batch), [("t".to_string(), Value::Int(2))]);
    let s = stats.snapshot();
    assert_eq!(s.too_long, 1, "one long line, counted once: {s:?}");
    assert_eq!(s.malformed, 0);
    // Just at the limit is fine.
    let at_limit = format!("x={}", "1".repeat(62));
    assert_eq!(at_limit.len(), 64);
    print(&mut peer, &format!("{at_limit}\r\n"));
    let batch = next_batch(&mut dev).await;
    assert_eq!(&*batch[0].point, "x");
    dev.stop().await.expect("stops cleanly");
}

#[tokio::test]
async fn unplugged_port_goes_offline_and_comes_back() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let mut socat = Socat::start(dir.path());
    let (mut dev, stats) = start(&table(&socat.dev, "format = \"kv\"\n"), dir.path());
    online(&mut dev).await;
    let mut peer = socat.open_peer();
    print(&mut peer, "t=1\n");
    assert_eq!(
        values(&next_batch(&mut dev).await),
        [("t".to_string(), Value::Int(1))]
    );
    drop(peer);

    socat.unplug();
    assert_eq!(dev.availability(WAIT).await, Some(false), "offline");
    // Gone for a while: several tries to reopen fail, the device stays offline.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;

    socat.restart();
    online(&mut dev).await;
    let mut peer = socat.open_peer();
    print(&mut peer, "t=2\n");
    assert_eq!(
        values(&next_batch(&mut dev).await),
        [("t".to_string(), Value::Int(2))]
    );
    assert_eq!(stats.snapshot().opens, 2);

    // Unplugged again: the same once more.
    drop(peer);
    socat.unplug();
    assert_eq!(dev.availability(WAIT).await, Some(false), "offline again");
    socat.restart();
    online(&mut dev).await;
    let mut peer = socat.open_peer();
    print(&mut peer, "t=3\n");
    assert_eq!(
        values(&next_batch(&mut dev).await),
        [("t".to_string(), Value::Int(3))]
    );
    dev.stop().await.expect("stops cleanly");
}

#[tokio::test]
async fn a_port_missing_at_start_is_waited_for() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let port = dir.path().join("dev");
    let (mut dev, stats) = start(&table(&port, "format = \"kv\"\n"), dir.path());
    assert_eq!(
        dev.availability(WAIT).await,
        Some(false),
        "offline, not crashed"
    );
    assert_eq!(stats.snapshot().opens, 0);

    let socat = Socat::start(dir.path());
    online(&mut dev).await;
    let mut peer = socat.open_peer();
    print(&mut peer, "t=5\n");
    assert_eq!(
        values(&next_batch(&mut dev).await),
        [("t".to_string(), Value::Int(5))]
    );
    dev.stop().await.expect("stops cleanly");
}

#[tokio::test]
async fn shutdown_while_waiting_for_a_missing_port() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let port = dir.path().join("nothing-here");
    let (mut dev, _stats) = start(&table(&port, ""), dir.path());
    assert_eq!(dev.availability(WAIT).await, Some(false));
    dev.stop().await.expect("Ok(()) on cancel");
}

#[tokio::test]
async fn writes_are_refused_and_reading_goes_on() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let socat = Socat::start(dir.path());
    let (mut dev, _stats) = start(&table(&socat.dev, "format = \"kv\"\n"), dir.path());
    online(&mut dev).await;
    dev.commands
        .send(sensorgate_api::Command {
            point: "t".into(),
            value: serde_json::json!(1),
        })
        .await
        .expect("the adapter takes commands");
    let mut peer = socat.open_peer();
    print(&mut peer, "t=7\n");
    assert_eq!(
        values(&next_batch(&mut dev).await),
        [("t".to_string(), Value::Int(7))]
    );
    dev.stop().await.expect("stops cleanly");
}
