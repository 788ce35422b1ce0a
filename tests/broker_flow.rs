//! Flow control: publishers that outrun a subscriber wait for it, so that nothing is
//! lost (rumqttd alone keeps a 1 MiB log per filter and a subscriber further behind
//! skips the rest, QoS 1 included), and a subscriber that stops reading does not hold
//! the others back for ever.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Setup, Sub};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const PUBLISHERS: usize = 4;
const PER_PUBLISHER: usize = 1500;
/// 6 000 messages of 2 KiB: 12 MiB, six times rumqttd's log.
const SIZE: usize = 2048;

fn options(s: &Setup, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", s.port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o
}

/// (publisher, sequence number) of each message received.
type Got = Arc<Mutex<HashSet<(u8, u32)>>>;

/// A QoS 1 subscriber to `flow/#` that takes a millisecond's pause every 10 messages;
/// returns the set of (publisher, sequence) it got.
fn slow_subscriber(s: &Setup) -> (AsyncClient, Got) {
    let (client, mut events) = AsyncClient::new(options(s, "slow"), 64);
    let got: Got = Arc::default();
    let g = got.clone();
    tokio::spawn(async move {
        let mut n = 0u64;
        while let Ok(ev) = events.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = ev {
                if p.payload.len() >= 5 {
                    let seq = u32::from_le_bytes([
                        p.payload[1],
                        p.payload[2],
                        p.payload[3],
                        p.payload[4],
                    ]);
                    g.lock().unwrap().insert((p.payload[0], seq));
                }
                n += 1;
                if n.is_multiple_of(10) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    });
    (client, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_qos1_subscriber_loses_nothing() {
    slow_subscriber_loses_nothing(QoS::AtLeastOnce).await;
}

/// The same at QoS 0: a subscriber that keeps reading, however slowly, is waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_qos0_subscriber_loses_nothing() {
    slow_subscriber_loses_nothing(QoS::AtMostOnce).await;
}

async fn slow_subscriber_loses_nothing(qos: QoS) {
    let s = Setup::new("");
    let _d = s.start();
    let (sub, got) = slow_subscriber(&s);
    sub.subscribe("flow/#", qos).await.expect("subscribe");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut tasks = Vec::new();
    for id in 0..PUBLISHERS {
        let (client, mut events) = AsyncClient::new(options(&s, &format!("pub{id}")), 256);
        let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let a = acked.clone();
        tokio::spawn(async move {
            while let Ok(ev) = events.poll().await {
                if let Event::Incoming(Packet::PubAck(_)) = ev {
                    a.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        tasks.push(tokio::spawn(async move {
            for seq in 0..PER_PUBLISHER as u32 {
                let mut payload = vec![0u8; SIZE];
                payload[0] = id as u8;
                payload[1..5].copy_from_slice(&seq.to_le_bytes());
                client
                    .publish(format!("flow/{id}"), QoS::AtLeastOnce, false, payload)
                    .await
                    .expect("publish");
            }
            let deadline = Instant::now() + Duration::from_secs(120);
            while acked.load(std::sync::atomic::Ordering::Relaxed) < PER_PUBLISHER
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            acked.load(std::sync::atomic::Ordering::Relaxed)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("publisher"), PER_PUBLISHER, "PUBACKs");
    }
    // Every acknowledged message reaches the subscriber.
    let want = PUBLISHERS * PER_PUBLISHER;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.lock().unwrap().len() < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let n = got.lock().unwrap().len();
    assert_eq!(n, want, "{} of {want} acknowledged messages lost", want - n);
}

/// A QoS 1 subscriber whose client stopped reading holds publishers back at most for a
/// moment (flow::STALL); another subscriber keeps getting messages.
#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_that_stopped_reading_does_not_block_publishers() {
    let s = Setup::new("");
    let _d = s.start();
    // Subscribes at QoS 1, then never reads its socket again.
    let mut stuck = std::net::TcpStream::connect(s.addr()).expect("connect");
    use std::io::{Read, Write};
    let id = b"stuck";
    let mut connect = vec![
        0x10,
        (12 + id.len()) as u8,
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        4,
        2,
        0,
        60,
        0,
        id.len() as u8,
    ];
    connect.extend_from_slice(id);
    stuck.write_all(&connect).expect("connect");
    let mut ack = [0u8; 4];
    stuck.read_exact(&mut ack).expect("connack");
    let filter = b"flow/#";
    let mut sub = vec![
        0x82,
        (2 + 2 + filter.len() + 1) as u8,
        0,
        1,
        0,
        filter.len() as u8,
    ];
    sub.extend_from_slice(filter);
    sub.push(1);
    stuck.write_all(&sub).expect("subscribe");
    let mut suback = [0u8; 5];
    if let Err(e) = stuck.read_exact(&mut suback) {
        panic!("no SUBACK ({e}); CONNACK {ack:?}:\n{}", _d.log_text());
    }

    let watcher = Sub::connect(s.addr(), "watcher", "flow/#").await;
    let publisher = Sub::connect_only(s.addr(), "pub").await;
    let started = Instant::now();
    for i in 0..3000 {
        publisher
            .client
            .publish("flow/x", QoS::AtLeastOnce, false, vec![0u8; SIZE])
            .await
            .expect("publish");
        if i == 2999 {
            break;
        }
    }
    let last = watcher.wait_more_than(2999, Duration::from_secs(60)).await;
    assert!(
        last,
        "the watcher got {} of 3000 after {:?}",
        watcher.messages().len(),
        started.elapsed()
    );
    drop(stuck);
}
