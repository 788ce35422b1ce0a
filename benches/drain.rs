//! Helper of benches/drain-vs-rumqttc.sh (not a benchmark by itself; `cargo bench` runs it
//! without arguments and it only prints its usage):
//!
//! - `fill STATE_DIR`: append `--count` messages through `sensorgate::buffer::Outbox` to
//!   `STATE_DIR/buffer.db` (the backlog the daemon drains at its next start);
//! - `publish`: a plain rumqttc client that publishes `--count` QoS 1 messages to
//!   `127.0.0.1:--port` with `--inflight` unacknowledged at most (sensorgate's own window
//!   is 100), waits for every PUBACK, disconnects, and prints one JSON line.
//!
//! Both write the same messages: `--size` bytes of reading-like JSON (70) on
//! `<--topic>/<n % 10>` (`bench/drain`).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use sensorgate::buffer::{NewMessage, Outbox};
use sensorgate::config::BufferConfig;

const USAGE: &str = "usage: drain fill STATE_DIR [--count N] [--size B] [--topic T]\n       \
drain publish --port P [--count N] [--size B] [--topic T] [--inflight W] [--timeout S]";

struct Args {
    mode: String,
    dir: Option<String>,
    port: u16,
    count: usize,
    size: usize,
    topic: String,
    inflight: u16,
    timeout: f64,
}

fn parse_args() -> Option<Args> {
    let mut a = Args {
        mode: String::new(),
        dir: None,
        port: 0,
        count: 100_000,
        size: 70,
        topic: "bench/drain".into(),
        inflight: 100,
        timeout: 120.0,
    };
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    a.mode = it.next()?;
    let num = |v: Option<String>, name: &str| -> f64 {
        v.and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{name} needs a number\n{USAGE}"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--count" => a.count = num(it.next(), "--count") as usize,
            "--size" => a.size = num(it.next(), "--size") as usize,
            "--port" => a.port = num(it.next(), "--port") as u16,
            "--inflight" => a.inflight = num(it.next(), "--inflight") as u16,
            "--timeout" => a.timeout = num(it.next(), "--timeout"),
            "--topic" => a.topic = it.next().expect("--topic needs a value"),
            "-h" | "--help" => return None,
            other if !other.starts_with('-') && a.dir.is_none() => a.dir = Some(other.into()),
            other => panic!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Some(a)
}

/// A reading-like JSON payload of exactly `size` bytes (spaces pad the object).
fn payload(i: usize, size: usize) -> Vec<u8> {
    let body = format!("{{\"value\":{i},\"unit\":\"°C\",\"ts\":\"2026-11-22T02:46:03.123Z\"");
    let mut p = body.into_bytes();
    while p.len() + 1 < size {
        p.push(b' ');
    }
    p.push(b'}');
    p
}

fn topic(prefix: &str, i: usize) -> String {
    format!("{prefix}/{}", i % 10)
}

fn epoch_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

async fn fill(dir: &Path, a: &Args) {
    std::fs::create_dir_all(dir).expect("state dir");
    let cfg = BufferConfig {
        max_bytes: 4 * 1024 * 1024 * 1024,
        ..BufferConfig::default()
    };
    let outbox = Outbox::open(dir, &cfg).await.expect("open the outbox");
    let t0 = Instant::now();
    let mut i = 0;
    while i < a.count {
        let n = (a.count - i).min(1000);
        let batch: Vec<NewMessage> = (i..i + n)
            .map(|k| NewMessage {
                topic: topic(&a.topic, k),
                payload: payload(k, a.size),
                qos: 1,
                retain: false,
            })
            .collect();
        let r = outbox.append(batch).await.expect("append");
        assert_eq!(r.stored, n, "the buffer refused messages: {r:?}");
        i += n;
    }
    let stats = outbox.stats().await.expect("stats");
    outbox.close().await;
    eprintln!(
        "filled {}: {} message(s), {} bytes, in {:.2} s",
        dir.join(sensorgate::buffer::FILE_NAME).display(),
        stats.count,
        stats.bytes,
        t0.elapsed().as_secs_f64()
    );
}

/// Publish `count` QoS 1 messages, at most `inflight` unacknowledged, until every PUBACK
/// is in; one JSON line on stdout.
async fn publish(a: &Args) -> Result<(), String> {
    let started = epoch_s();
    let mut o = MqttOptions::new(
        format!("drain-pub-{}", std::process::id()),
        "127.0.0.1",
        a.port,
    );
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(a.inflight);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(o, usize::from(a.inflight) * 2 + 16);
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(a.timeout);
    // CONNACK first.
    loop {
        match tokio::time::timeout_at(deadline, events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("connect to 127.0.0.1:{}: {e}", a.port)),
            Err(_) => return Err("timeout waiting for CONNACK".into()),
        }
    }
    let connected = epoch_s();
    let (count, size, prefix) = (a.count, a.size, a.topic.clone());
    let sender = client.clone();
    tokio::spawn(async move {
        for i in 0..count {
            if sender
                .publish(topic(&prefix, i), QoS::AtLeastOnce, false, payload(i, size))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let t0 = Instant::now();
    let mut acked = 0usize;
    let mut sent = 0usize;
    while acked < a.count {
        match tokio::time::timeout_at(deadline, events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(Event::Outgoing(Outgoing::Publish(_)))) => sent += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("connection lost after {acked} PUBACKs: {e}")),
            Err(_) => return Err(format!("timeout: {acked} of {} PUBACKs", a.count)),
        }
    }
    let publish_s = t0.elapsed().as_secs_f64();
    let done = epoch_s();
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match events.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    println!(
        "{{\"sent\":{sent},\"acked\":{acked},\"started\":{started:.6},\"connected\":{connected:.6},\
         \"done\":{done:.6},\"publish_s\":{publish_s:.4},\"msgs_per_s\":{:.0}}}",
        acked as f64 / publish_s
    );
    Ok(())
}

fn main() {
    let Some(a) = parse_args() else {
        println!("{USAGE}\n(a helper of benches/drain-vs-rumqttc.sh)");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match a.mode.as_str() {
        "fill" => {
            let dir = a.dir.clone().unwrap_or_else(|| panic!("{USAGE}"));
            rt.block_on(fill(Path::new(&dir), &a));
        }
        "publish" => {
            assert!(a.port != 0, "--port is needed\n{USAGE}");
            if let Err(e) = rt.block_on(publish(&a)) {
                eprintln!("drain publish: {e}");
                std::process::exit(1);
            }
        }
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}
