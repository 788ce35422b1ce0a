//! Persistent sessions of the embedded broker with real clients (mosquitto_sub/pub,
//! paho 3.1.1 and 5): what an offline session collects within `max_queued_messages`
//! and `message_expiry`, what a clean reconnect discards, redelivery of what was in
//! flight, MQTT 5 session expiry, and the will of a client that vanished.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{paho, paho_async, paho_get, paho_topics, Setup, Sub};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

/// `mosquitto_pub` each message at QoS 1 (each run waits for its PUBACK).
fn publish(s: &Setup, messages: &[(&str, &str)]) {
    for (topic, payload) in messages {
        let st = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &s.port.to_string(), "-q", "1"])
            .args(["-t", topic, "-m", payload])
            .status()
            .expect("mosquitto_pub (package mosquitto-clients)");
        assert!(st.success(), "mosquitto_pub {topic}");
    }
}

/// A persistent mosquitto_sub session (`-c -i id -q 1`): subscribe `filter` (None: no
/// subscription of its own, for a returning session) and print what arrives within
/// `wait` seconds, as `topic payload` lines.
fn mosquitto_sub(s: &Setup, id: &str, filter: &str, extra: &[&str]) -> Vec<String> {
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &s.port.to_string(), "-c", "-i", id])
        .args(["-q", "1", "-v", "-t", filter])
        .args(extra)
        .output()
        .expect("mosquitto_sub (package mosquitto-clients)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Wait until a subscriber of `filter` has seen `payload` (mosquitto_pub is done
/// once its PUBACK is in, which rumqttd sends before it delivers).
async fn seen(probe: &Sub, payload: &str) {
    assert!(
        probe
            .wait_for(WAIT, |m| m.payload == payload)
            .await
            .is_some(),
        "{payload} never arrived"
    );
    // The offline session reads the same delivery from its own connection.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

fn session_present(lines: &[Value]) -> Option<bool> {
    lines
        .iter()
        .find_map(|l| l.get("session_present"))
        .and_then(Value::as_bool)
}

fn publish_all(s: &Setup, prefix: &str, n: usize) {
    let msgs: Vec<(String, String)> = (0..n)
        .map(|i| (format!("{prefix}/{i}"), format!("m{i}")))
        .collect();
    let refs: Vec<(&str, &str)> = msgs.iter().map(|(t, p)| (t.as_str(), p.as_str())).collect();
    tokio::task::block_in_place(|| publish(s, &refs));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_offline_session_keeps_the_oldest_max_queued_messages() {
    let s = Setup::new("max_queued_messages = 5\n");
    let _d = s.start();
    // Subscribe, and leave at once: the session stays.
    let lines = tokio::task::block_in_place(|| mosquitto_sub(&s, "keeper", "q/#", &["-E"]));
    assert!(lines.is_empty(), "{lines:?}");
    let probe = Sub::connect(s.addr(), "probe", "q/#").await;
    publish_all(&s, "q", 8);
    seen(&probe, "m7").await;

    // Back: the five oldest, in order, and nothing more.
    let lines = tokio::task::block_in_place(|| mosquitto_sub(&s, "keeper", "q/#", &["-W", "3"]));
    assert_eq!(
        lines,
        ["q/0 m0", "q/1 m1", "q/2 m2", "q/3 m3", "q/4 m4"],
        "what the returning session got"
    );
    // The queue was emptied; the subscription stays for live messages.
    publish(&s, &[("q/live", "now")]);
    seen(&probe, "now").await;
    let lines = tokio::task::block_in_place(|| mosquitto_sub(&s, "keeper", "q/#", &["-W", "2"]));
    assert_eq!(lines, ["q/live now"]);
    let log = std::fs::read_to_string(&_d.log).unwrap_or_default();
    assert!(log.contains("3 queued message(s) dropped"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn queued_messages_older_than_message_expiry_are_dropped() {
    let s = Setup::new("message_expiry = \"2s\"\n");
    let _d = s.start();
    tokio::task::block_in_place(|| mosquitto_sub(&s, "keeper", "e/#", &["-E"]));
    let probe = Sub::connect(s.addr(), "probe", "e/#").await;
    publish(&s, &[("e/old", "old")]);
    seen(&probe, "old").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    publish(&s, &[("e/new", "new")]);
    seen(&probe, "new").await;
    let lines = tokio::task::block_in_place(|| mosquitto_sub(&s, "keeper", "e/#", &["-W", "2"]));
    assert_eq!(lines, ["e/new new"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clean_reconnect_ends_the_session() {
    let s = Setup::new("");
    let _d = s.start();
    let a = s.addr();
    let first = tokio::task::spawn_blocking(move || {
        paho(
            a,
            &[
                "--id",
                "c1",
                "--persistent",
                "--sub",
                "c/#",
                "--qos",
                "1",
                "--wait",
                "0",
            ],
        )
    })
    .await
    .expect("paho");
    assert_eq!(session_present(&first), Some(false));
    let probe = Sub::connect(s.addr(), "probe", "c/#").await;
    publish(&s, &[("c/one", "one")]);
    seen(&probe, "one").await;
    let back = tokio::task::spawn_blocking(move || {
        paho(
            a,
            &["--id", "c1", "--persistent", "--qos", "1", "--wait", "2"],
        )
    })
    .await
    .expect("paho");
    assert_eq!(session_present(&back), Some(true));
    assert_eq!(paho_topics(&back), ["c/one"]);

    // Leave again, then come back clean: no session, nothing queued, no subscription.
    publish(&s, &[("c/two", "two")]);
    seen(&probe, "two").await;
    let clean = tokio::task::spawn_blocking(move || paho(a, &["--id", "c1", "--wait", "1"]))
        .await
        .expect("paho");
    assert_eq!(session_present(&clean), Some(false));
    assert!(paho_topics(&clean).is_empty(), "{clean:?}");
    publish(&s, &[("c/three", "three")]);
    seen(&probe, "three").await;
    let after = tokio::task::spawn_blocking(move || {
        paho(
            a,
            &["--id", "c1", "--persistent", "--qos", "1", "--wait", "1"],
        )
    })
    .await
    .expect("paho");
    assert_eq!(session_present(&after), Some(false));
    assert!(paho_topics(&after).is_empty(), "{after:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unacknowledged_messages_come_again_and_the_will_is_sent() {
    let s = Setup::new("");
    let _d = s.start();
    let a = s.addr();
    let watcher = Sub::connect(s.addr(), "watcher", "will/#").await;
    // Subscribes, receives without acknowledging, and vanishes without DISCONNECT.
    let first = tokio::task::spawn_blocking(move || {
        paho(
            a,
            &[
                "--id",
                "flaky",
                "--persistent",
                "--sub",
                "f/#",
                "--qos",
                "1",
                "--pub",
                "f/1",
                "one",
                "--no-ack",
                "--wait",
                "1",
                "--drop",
                "--will",
                "will/flaky",
                "gone",
                "--will-retain",
            ],
        )
    })
    .await
    .expect("paho");
    assert_eq!(paho_topics(&first), ["f/1"]);
    assert!(watcher
        .wait_for(WAIT, |m| m.topic == "will/flaky" && m.payload == "gone")
        .await
        .is_some());
    // The will was retained: a late subscriber gets it too.
    let late = Sub::connect(s.addr(), "late", "will/#").await;
    assert!(late
        .wait_for(WAIT, |m| m.retain && m.payload == "gone")
        .await
        .is_some());

    let back = tokio::task::spawn_blocking(move || {
        paho(
            a,
            &["--id", "flaky", "--persistent", "--qos", "1", "--wait", "2"],
        )
    })
    .await
    .expect("paho");
    assert_eq!(session_present(&back), Some(true));
    assert_eq!(paho_topics(&back), ["f/1"], "{back:?}");
    // Acknowledged this time: not again. A normal DISCONNECT sends no will.
    let n = watcher.messages().len();
    let again = tokio::task::spawn_blocking(move || {
        paho(
            a,
            &["--id", "flaky", "--persistent", "--qos", "1", "--wait", "1"],
        )
    })
    .await
    .expect("paho");
    assert!(paho_topics(&again).is_empty(), "{again:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(watcher.messages().len(), n);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_mqtt5_session_ends_after_its_expiry_interval() {
    let s = Setup::new("");
    let _d = s.start();
    let a = s.addr();
    let sub = |extra: &'static [&'static str]| {
        let mut args = vec!["--v5", "--id", "v5c", "--persistent", "--qos", "1"];
        args.extend_from_slice(extra);
        tokio::task::spawn_blocking(move || paho(a, &args))
    };
    let first = sub(&["--expiry", "2", "--sub", "v/#", "--wait", "0"])
        .await
        .expect("paho");
    assert_eq!(paho_get(&first, "connack"), Some(&json!(0)));
    let probe = Sub::connect(s.addr(), "probe", "v/#").await;
    publish(&s, &[("v/1", "one")]);
    seen(&probe, "one").await;
    // Within the interval: resumed with the message.
    let back = sub(&["--expiry", "1", "--wait", "1"]).await.expect("paho");
    assert_eq!(session_present(&back), Some(true));
    assert_eq!(paho_topics(&back), ["v/1"]);
    // After it (1 s now): gone.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let late = sub(&["--wait", "1"]).await.expect("paho");
    assert_eq!(session_present(&late), Some(false));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_connection_takes_the_session_over() {
    let s = Setup::new("");
    let _d = s.start();
    let a = s.addr();
    let first = tokio::task::spawn_blocking(move || {
        paho(
            a,
            &[
                "--id",
                "twin",
                "--persistent",
                "--sub",
                "t/#",
                "--qos",
                "1",
                "--wait",
                "8",
            ],
        )
    });
    let probe = Sub::connect(s.addr(), "probe", "t/#").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = tokio::task::spawn_blocking(move || {
        paho(
            a,
            &[
                "--id",
                "twin",
                "--persistent",
                "--qos",
                "1",
                "--wait",
                "2",
                "--pub",
                "t/x",
                "x",
            ],
        )
    })
    .await
    .expect("paho");
    // The session (with its subscription) moved to the second connection.
    assert_eq!(session_present(&second), Some(true));
    assert!(
        paho_topics(&second).contains(&"t/x".to_string()),
        "{second:?}"
    );
    assert!(probe.wait_for(WAIT, |m| m.payload == "x").await.is_some());
    let first = first.await.expect("paho");
    assert!(
        paho_get(&first, "closed").is_some(),
        "the first was not closed: {first:?}"
    );
}

/// rumqttd only ever sees ids of the front's own, so the front closes the older of two
/// connections with one client id; the older one's will goes out (it did not
/// DISCONNECT), and quick same-id reconnects over MQTT 5 leave the broker working.
#[tokio::test(flavor = "multi_thread")]
async fn a_clean_client_id_taken_over_closes_the_older_connection() {
    let s = Setup::new("");
    let _d = s.start();
    let a = s.addr();
    let watcher = Sub::connect(s.addr(), "watcher", "will/#").await;
    let first = tokio::task::spawn_blocking(move || {
        paho(
            a,
            &[
                "--v5",
                "--id",
                "same",
                "--wait",
                "8",
                "--will",
                "will/same",
                "bye",
            ],
        )
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = tokio::task::spawn_blocking(move || {
        paho(
            a,
            &[
                "--v5", "--id", "same", "--sub", "x/#", "--pub", "x/1", "one", "--wait", "1",
            ],
        )
    })
    .await
    .expect("paho");
    assert_eq!(session_present(&second), Some(false));
    assert_eq!(paho_topics(&second), ["x/1"]);
    let first = first.await.expect("paho");
    // MQTT 5 DISCONNECT 0x8E: session taken over.
    assert_eq!(paho_get(&first, "closed"), Some(&json!(142)), "{first:?}");
    assert!(watcher
        .wait_for(WAIT, |m| m.topic == "will/same" && m.payload == "bye")
        .await
        .is_some());

    // Ids rumqttd itself refuses are fine (mosquitto takes them too).
    let lines = tokio::task::spawn_blocking(move || paho(a, &["--id", "room/1#+$", "--wait", "0"]))
        .await
        .expect("paho");
    assert_eq!(paho_get(&lines, "connack"), Some(&json!(0)));
    for _ in 0..20 {
        let lines =
            tokio::task::spawn_blocking(move || paho(a, &["--v5", "--id", "again", "--wait", "0"]))
                .await
                .expect("paho");
        assert_eq!(paho_get(&lines, "connack"), Some(&json!(0)));
    }
}

/// The wills of clean sessions are the front's to send too (rumqttd's router holds
/// none): a client that vanishes, and an MQTT 5 client that disconnects "with will
/// message" (0x04), have theirs published; clients that disconnect normally do not.
#[tokio::test(flavor = "multi_thread")]
async fn clean_sessions_get_their_wills_sent_only_when_they_should() {
    let s = Setup::new("");
    let _d = s.start();
    let a = s.addr();
    let watcher = Sub::connect(a, "watcher", "will/#").await;
    for args in [
        &[
            "--id",
            "normal",
            "--wait",
            "0",
            "--will",
            "will/normal",
            "x",
        ][..],
        &[
            "--v5",
            "--id",
            "normal5",
            "--wait",
            "0",
            "--will",
            "will/normal5",
            "x",
        ],
        &[
            "--id",
            "dropped",
            "--wait",
            "0",
            "--drop",
            "--will",
            "will/dropped",
            "gone",
        ],
        &[
            "--v5",
            "--id",
            "asked",
            "--wait",
            "0",
            "--disconnect-with-will",
            "--will",
            "will/asked",
            "bye",
        ],
    ] {
        let lines = paho_async(a, args).await;
        assert_eq!(paho_get(&lines, "connack"), Some(&json!(0)), "{lines:?}");
    }
    for (topic, payload) in [("will/dropped", "gone"), ("will/asked", "bye")] {
        assert!(
            watcher
                .wait_for(WAIT, |m| m.topic == topic && m.payload == payload)
                .await
                .is_some(),
            "no will on {topic}: {:?}",
            watcher.messages()
        );
    }
    // The normal disconnects came first: a will of theirs would be here by now.
    let topics: Vec<String> = watcher.messages().into_iter().map(|m| m.topic).collect();
    assert!(
        !topics.iter().any(|t| t.starts_with("will/normal")),
        "{topics:?}"
    );
}
