//! Request/response sensors: the adapter writes `send` every poll_interval and reads the
//! answer; a tiny responder on the peer end of a real pty plays the sensor.

use std::io::{BufRead, BufReader, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use sensorgate_api::Value;

mod common;
use common::{next_batch, online, start, table, until, values, Socat, WAIT};

/// Answers each `READ` line with `t=<n>,h=40` (n counting up) while `answer` is set.
fn responder(peer: std::fs::File, answer: Arc<AtomicBool>, queries: Arc<AtomicU64>) {
    std::thread::spawn(move || {
        let mut out = match peer.try_clone() {
            Ok(f) => f,
            Err(_) => return,
        };
        let mut lines = BufReader::new(peer);
        let mut line = String::new();
        let mut n = 0;
        loop {
            line.clear();
            // Ends when socat goes away (end of file or EIO).
            match lines.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line.trim_end() != "READ" {
                continue;
            }
            queries.fetch_add(1, Ordering::SeqCst);
            if answer.load(Ordering::SeqCst) {
                n += 1;
                if out.write_all(format!("t={n},h=40\r\n").as_bytes()).is_err() {
                    return;
                }
            }
        }
    });
}

#[tokio::test]
async fn queries_are_sent_every_poll_and_answers_published() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let socat = Socat::start(dir.path());
    let cfg = table(
        &socat.dev,
        "format = \"kv\"\nsend = \"READ\\r\\n\"\ntimeout = \"2s\"\n",
    );
    let (mut dev, stats) = start(&cfg, dir.path());
    let answer = Arc::new(AtomicBool::new(true));
    let queries = Arc::new(AtomicU64::new(0));
    responder(socat.open_peer(), answer.clone(), queries.clone());
    online(&mut dev).await;

    // Answers come in order, one batch each.
    let mut last = 0;
    for _ in 0..3 {
        let batch = next_batch(&mut dev).await;
        let Value::Int(t) = batch[0].value else {
            panic!("t is an integer: {batch:?}")
        };
        assert!(t > last, "answers in order: {t} after {last}");
        last = t;
        assert_eq!(values(&batch)[1], ("h".to_string(), Value::Int(40)));
    }
    assert!(queries.load(Ordering::SeqCst) >= 3);
    dev.stop().await.expect("stops cleanly");
    assert_eq!(stats.snapshot().malformed, 0);
}

#[tokio::test]
async fn a_sensor_that_stops_answering_goes_offline_and_comes_back() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let socat = Socat::start(dir.path());
    let cfg = table(
        &socat.dev,
        "format = \"kv\"\nsend = \"READ\\n\"\ntimeout = \"100ms\"\n",
    );
    let (mut dev, stats) = start(&cfg, dir.path());
    let answer = Arc::new(AtomicBool::new(false));
    let queries = Arc::new(AtomicU64::new(0));
    responder(socat.open_peer(), answer.clone(), queries.clone());
    online(&mut dev).await;

    // Queries go out, no answer: offline, the timeouts counted.
    assert_eq!(dev.availability(WAIT).await, Some(false), "offline");
    until(&stats, "a timeout counted", |s| s.snapshot().timeouts >= 1).await;
    assert!(queries.load(Ordering::SeqCst) >= 1);

    // The sensor answers again: online, readings flow.
    answer.store(true, Ordering::SeqCst);
    online(&mut dev).await;
    let batch = next_batch(&mut dev).await;
    assert_eq!(&*batch[0].point, "t");
    dev.stop().await.expect("stops cleanly");
}
