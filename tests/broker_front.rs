//! The broker front against real clients (paho-mqtt, mosquitto_sub/pub, rumqttc): the
//! password file and allow_anonymous, every CONNACK code the front sends, and each limit
//! with a second client that keeps working.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::{mosquitto_passwd, paho, paho_async, paho_get, paho_topics, Setup, Sub};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

fn passwd(s: &Setup) -> String {
    let path = s.dir.path().join("passwd");
    mosquitto_passwd(&path, &[("alice", "secret"), ("bob", "hunter2")]);
    path.display().to_string()
}

fn connack(lines: &[serde_json::Value]) -> Option<i64> {
    paho_get(lines, "connack").and_then(|c| c.as_i64())
}

#[test]
fn logins_get_connack_codes_never_a_bare_close() {
    let s = Setup::new("");
    let file = passwd(&s);
    s.write(&format!("password_file = \"{file}\"\n"));
    let _d = s.start();
    let a = s.addr();
    let login = |v5: bool, user: Option<(&str, &str)>| {
        let mut args = vec![];
        if v5 {
            args.push("--v5");
        }
        if let Some((u, p)) = user {
            args.extend(["--user", u, "--password", p]);
        }
        args.extend(["--wait", "0"]);
        connack(&paho(a, &args))
    };
    assert_eq!(login(false, Some(("alice", "secret"))), Some(0));
    assert_eq!(login(true, Some(("bob", "hunter2"))), Some(0));
    assert_eq!(login(false, Some(("alice", "wrong"))), Some(5));
    assert_eq!(login(true, Some(("alice", "wrong"))), Some(0x87));
    assert_eq!(login(false, Some(("mallory", "secret"))), Some(5));
    // With a password file, anonymous clients are refused by default.
    assert_eq!(login(false, None), Some(5));
    assert_eq!(login(true, None), Some(0x87));

    // mosquitto's own client sees "not authorised", not a dropped connection.
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &s.port.to_string(), "-t", "x"])
        .args(["-u", "alice", "-P", "wrong", "-C", "1", "-W", "5"])
        .output()
        .expect("mosquitto_sub");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not authori"), "{err}");

    // A logged-in client publishes and receives.
    let lines = paho(
        a,
        &[
            "--user",
            "alice",
            "--password",
            "secret",
            "--sub",
            "a/b",
            "--pub",
            "a/b",
            "hi",
            "--count",
            "1",
        ],
    );
    assert_eq!(paho_topics(&lines), vec!["a/b"], "{lines:?}");
}

#[test]
fn allow_anonymous_lets_clients_without_a_username_in_beside_the_password_file() {
    let s = Setup::new("");
    let file = passwd(&s);
    s.write(&format!(
        "password_file = \"{file}\"\nallow_anonymous = true\n"
    ));
    let _d = s.start();
    let a = s.addr();
    assert_eq!(connack(&paho(a, &["--wait", "0"])), Some(0));
    assert_eq!(connack(&paho(a, &["--v5", "--wait", "0"])), Some(0));
    // A wrong password is still refused.
    let lines = paho(a, &["--user", "bob", "--password", "x", "--wait", "0"]);
    assert_eq!(connack(&lines), Some(5));
}

#[test]
fn anonymous_can_be_refused_without_a_password_file() {
    let s = Setup::new("allow_anonymous = false\n");
    let _d = s.start();
    assert_eq!(connack(&paho(s.addr(), &["--wait", "0"])), Some(5));
}

/// A raw CONNECT of MQTT 3.1 ("MQIsdp", level 3): the front speaks 3.1.1 and 5 only.
#[test]
fn mqtt_3_1_gets_unacceptable_protocol_version() {
    let s = Setup::new("");
    let _d = s.start();
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &s.port.to_string(), "-t", "x"])
        .args(["-V", "mqttv31", "-C", "1", "-W", "5"])
        .output()
        .expect("mosquitto_sub");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unacceptable protocol version"), "{err}");
}

#[test]
fn keepalive_zero_is_accepted_and_too_long_a_keepalive_is_refused_or_capped() {
    let s = Setup::new("max_keepalive = \"60s\"\n");
    let _d = s.start();
    let a = s.addr();
    for v5 in [false, true] {
        let mut args = vec![
            "--keepalive",
            "0",
            "--sub",
            "k/0",
            "--pub",
            "k/0",
            "x",
            "--count",
            "1",
        ];
        if v5 {
            args.push("--v5");
        }
        let lines = paho(a, &args);
        assert_eq!(connack(&lines), Some(0), "{lines:?}");
        assert_eq!(paho_topics(&lines), vec!["k/0"], "{lines:?}");
    }
    // 3.1.1 has no way to tell the client a shorter keepalive: identifier rejected.
    assert_eq!(
        connack(&paho(a, &["--keepalive", "120", "--wait", "0"])),
        Some(2)
    );
    // v5: accepted with the server's keepalive.
    assert_eq!(
        connack(&paho(a, &["--v5", "--keepalive", "120", "--wait", "0"])),
        Some(0)
    );
}

#[tokio::test]
async fn max_connections_answers_server_unavailable_and_the_others_keep_working() {
    let s = Setup::new("max_connections = 2\n");
    let _d = s.start();
    let a = s.addr();
    let first = Sub::connect(a, "first", "m/#").await;
    let second = Sub::connect_only(a, "second").await;
    assert!(second.connected());
    let lines = tokio::task::spawn_blocking(move || paho(a, &["--wait", "0"]))
        .await
        .expect("paho");
    assert_eq!(connack(&lines), Some(3), "{lines:?}");
    let lines = tokio::task::spawn_blocking(move || paho(a, &["--v5", "--wait", "0"]))
        .await
        .expect("paho");
    assert_eq!(connack(&lines), Some(0x88), "{lines:?}");
    second
        .client
        .publish("m/1", rumqttc::QoS::AtLeastOnce, false, "still here")
        .await
        .expect("publish");
    assert!(first.wait_for(WAIT, |m| m.topic == "m/1").await.is_some());
    // A place freed is a place for the next client.
    drop(second);
    let mut ok = false;
    for _ in 0..50 {
        let lines = tokio::task::spawn_blocking(move || paho(a, &["--wait", "0"]))
            .await
            .expect("paho");
        if connack(&lines) == Some(0) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "no connection after one closed");
}

#[test]
fn one_subscription_over_the_limit_gets_0x80_and_the_rest_work() {
    let s = Setup::new("max_subscriptions_per_client = 2\n");
    let _d = s.start();
    let a = s.addr();
    for v5 in [false, true] {
        let mut args = vec![
            "--sub", "s/a", "--sub", "s/b", "--sub", "s/c", "--pub", "s/a", "1", "--pub", "s/c",
            "2", "--count", "1", "--wait", "1",
        ];
        if v5 {
            args.push("--v5");
        }
        let lines = paho(a, &args);
        assert_eq!(
            paho_get(&lines, "suback"),
            Some(&json!([0, 0, 0x80])),
            "{lines:?}"
        );
        assert_eq!(paho_topics(&lines), vec!["s/a"], "{lines:?}");
    }
    // Only new filters count: subscribing to one already held is fine, and every filter
    // over the limit alone gets the SUBACK from the front.
    let lines = paho(
        a,
        &[
            "--sub", "s/a", "--sub", "s/b", "--sub", "s/a", "--wait", "0",
        ],
    );
    assert_eq!(
        paho_get(&lines, "suback"),
        Some(&json!([0, 0, 0])),
        "{lines:?}"
    );
}

#[tokio::test]
async fn a_payload_over_max_payload_size_disconnects_that_client_only() {
    let s = Setup::new("max_payload_size = \"1 KiB\"\n");
    let _d = s.start();
    let a = s.addr();
    let watcher = Sub::connect(a, "watcher", "p/#").await;
    let big = "x".repeat(2000);
    for v5 in [false, true] {
        let mut args = vec!["--pub", "p/big", big.as_str(), "--wait", "5"];
        if v5 {
            args.push("--v5");
        }
        let lines = paho_async(a, &args).await;
        assert_eq!(connack(&lines), Some(0));
        assert!(paho_get(&lines, "closed").is_some(), "{lines:?}");
    }
    let lines =
        tokio::task::spawn_blocking(move || paho(a, &["--pub", "p/small", "ok", "--wait", "0"]))
            .await
            .expect("paho");
    assert_eq!(connack(&lines), Some(0));
    assert!(watcher
        .wait_for(WAIT, |m| m.topic == "p/small")
        .await
        .is_some());
    assert!(watcher.messages().iter().all(|m| m.topic != "p/big"));
    assert!(watcher.connected());
}

/// A raw MQTT 3.1.1 CONNECT from `source`; the CONNACK's return code.
fn raw_connect(source: &str, to: SocketAddr) -> Option<u8> {
    let sock = tokio::net::TcpSocket::new_v4().ok()?;
    sock.bind(format!("{source}:0").parse().ok()?).ok()?;
    let std_sock = {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(sock.connect(to)).ok()?.into_std().ok()?
    };
    let mut s = std_sock;
    s.set_nonblocking(false).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let id = b"rate";
    let mut body = vec![
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        4,
        0x02,
        0,
        30,
        0,
        id.len() as u8,
    ];
    body.extend_from_slice(id);
    let mut pkt = vec![0x10, body.len() as u8];
    pkt.extend_from_slice(&body);
    s.write_all(&pkt).ok()?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).ok()?;
    (ack[0] == 0x20).then_some(ack[3])
}

#[test]
fn a_client_connecting_in_a_loop_is_slowed_down_and_others_are_not() {
    let s = Setup::new("");
    let _d = s.start();
    let a = s.addr();
    let mut refused = None;
    for i in 0..2000 {
        match raw_connect("127.0.0.1", a) {
            Some(0) => {}
            other => {
                refused = Some((i, other));
                break;
            }
        }
    }
    let (i, code) = refused.expect("a looping client is never refused");
    assert_eq!(code, Some(3), "after {i} connects");
    // Another source address is not affected.
    assert_eq!(raw_connect("127.0.0.2", a), Some(0));
}

#[tokio::test]
async fn a_client_silent_past_its_keepalive_is_disconnected_and_its_will_sent() {
    let s = Setup::new("");
    let _d = s.start();
    let a = s.addr();
    let watcher = Sub::connect(a, "watcher", "will/#").await;
    // CONNECT, keepalive 1 s, will "will/quiet" = "gone", then silence.
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x06, 0, 1, 0, 5];
    body.extend_from_slice(b"quiet");
    body.extend_from_slice(&[0, 10]);
    body.extend_from_slice(b"will/quiet");
    body.extend_from_slice(&[0, 4]);
    body.extend_from_slice(b"gone");
    let mut pkt = vec![0x10, body.len() as u8];
    pkt.extend_from_slice(&body);
    let quiet = tokio::task::spawn_blocking(move || {
        let mut c = std::net::TcpStream::connect(a).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        c.write_all(&pkt).expect("CONNECT");
        let mut ack = [0u8; 4];
        c.read_exact(&mut ack).expect("CONNACK");
        assert_eq!(ack, [0x20, 2, 0, 0]);
        let mut rest = [0u8; 1];
        // The front closes the connection (EOF), rather than the read timing out.
        c.read(&mut rest).expect("closed, not timed out")
    })
    .await
    .expect("quiet client");
    assert_eq!(quiet, 0);
    let will = watcher.wait_for(WAIT, |m| m.topic == "will/quiet").await;
    assert_eq!(will.map(|m| m.payload), Some("gone".to_string()));
}

#[test]
fn tail_logs_in_with_username_and_sensorgate_password() {
    let s = Setup::new("");
    let file = passwd(&s);
    s.write(&format!(
        "password_file = \"{file}\"\n\n[[device]]\nname = \"d\"\nplugin = \"sim\"\n\
         poll_interval = \"100ms\"\n[[device.point]]\nname = \"n\"\nsignal = \"counter\"\n"
    ));
    let _d = s.start();
    let config = s.config().display().to_string();
    let tail = |user: Option<(&str, &str)>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sensorgate"));
        cmd.args(["tail", "--config", &config, "-n", "1", "--timeout", "10s"])
            .env_remove("SENSORGATE_USERNAME")
            .env_remove("SENSORGATE_PASSWORD");
        if let Some((u, p)) = user {
            cmd.args(["--username", u]).env("SENSORGATE_PASSWORD", p);
        }
        cmd.output().expect("sensorgate tail")
    };
    let anonymous = tail(None);
    assert!(!anonymous.status.success());
    let err = String::from_utf8_lossy(&anonymous.stderr);
    assert!(
        err.contains("refused the login") && err.contains("--username"),
        "{err}"
    );

    let wrong = tail(Some(("alice", "wrong")));
    assert!(!wrong.status.success());

    let ok = tail(Some(("alice", "secret")));
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(out.starts_with(&format!("{}/", s.prefix)), "{out}");
}

/// Publish `r/0` … `r/299` retained (QoS 1) and wait until the last one is routed (a
/// subscriber sees it live); returns the publisher and that subscriber.
async fn retain_300(s: &Setup, d: &common::Daemon) -> (Sub, Sub) {
    let publisher = Sub::connect_only(s.addr(), "retainer").await;
    assert!(publisher.connected(), "{}", d.log_text());
    for i in 0..300 {
        publisher
            .client
            .publish(
                format!("r/{i}"),
                rumqttc::QoS::AtLeastOnce,
                true,
                i.to_string(),
            )
            .await
            .expect("publish");
    }
    let probe = Sub::connect(s.addr(), "probe", "r/299").await;
    assert!(probe.wait_for(WAIT, |m| m.topic == "r/299").await.is_some());
    (publisher, probe)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos0_wildcard_subscriber_gets_all_300_retained_messages() {
    let s = Setup::new("");
    let d = s.start();
    let (_publisher, _probe) = retain_300(&s, &d).await;

    let sub = Sub::connect(s.addr(), "late", "r/#").await;
    assert!(
        sub.wait_more_than(299, WAIT).await,
        "{} retained",
        sub.messages().len()
    );
    let mut topics: Vec<String> = sub.messages().into_iter().map(|m| m.topic).collect();
    topics.sort();
    topics.dedup();
    assert_eq!(topics.len(), 300);
    assert!(sub.messages().iter().all(|m| m.retain));
}

/// What Home Assistant does: a QoS 1 subscription to `#` gets every retained message
/// (rumqttd alone hands out its 100 in flight and drops the rest), then live messages.
#[tokio::test(flavor = "multi_thread")]
async fn a_qos1_hash_subscriber_gets_all_300_retained_messages_then_live_ones() {
    let s = Setup::new("");
    let d = s.start();
    let (publisher, probe) = retain_300(&s, &d).await;

    let a = s.addr();
    for v5 in [false, true] {
        let mut args = vec!["--sub", "#", "--qos", "1", "--wait", "4"];
        args.extend(["--pub", "live/x", "after"]);
        if v5 {
            args.push("--v5");
        }
        let lines = tokio::task::spawn_blocking(move || paho(a, &args))
            .await
            .expect("paho");
        let retained: std::collections::BTreeSet<String> = lines
            .iter()
            .filter(|l| l["retain"] == json!(true))
            .filter_map(|l| l["msg"].as_str())
            .filter(|t| t.starts_with("r/"))
            .map(str::to_string)
            .collect();
        assert_eq!(
            retained.len(),
            300,
            "v5 {v5}: {} retained r/ topics",
            retained.len()
        );
        let one = lines
            .iter()
            .find(|l| l["msg"] == json!("r/7"))
            .expect("r/7");
        assert_eq!(one["payload"], json!("7"));
        // Its own QoS 1 publish comes back live, after the front's deliveries and acks.
        assert!(
            lines
                .iter()
                .any(|l| l["msg"] == json!("live/x") && l["retain"] == json!(false)),
            "v5 {v5}: no live message after the retained ones"
        );
    }

    // MQTT 5 retain handling 2: no retained messages at all.
    let lines = tokio::task::spawn_blocking(move || {
        paho(
            a,
            &[
                "--v5", "--sub", "r/#", "--qos", "1", "--rh", "2", "--wait", "1",
            ],
        )
    })
    .await
    .expect("paho");
    assert_eq!(paho_get(&lines, "suback"), Some(&json!([1])));
    assert!(paho_topics(&lines).is_empty(), "{lines:?}");

    // An empty retained payload deletes the topic's retained message.
    for (topic, payload) in [("r/5", ""), ("r/299", "again")] {
        publisher
            .client
            .publish(topic, rumqttc::QoS::AtLeastOnce, true, payload)
            .await
            .expect("publish");
    }
    // Same connection, in order: once "again" is through, so is the delete.
    assert!(probe
        .wait_for(WAIT, |m| m.payload == "again")
        .await
        .is_some());
    let lines = tokio::task::spawn_blocking(move || {
        paho(
            a,
            &["--sub", "r/5", "--sub", "r/6", "--qos", "1", "--wait", "1"],
        )
    })
    .await
    .expect("paho");
    assert_eq!(paho_topics(&lines), ["r/6"]);
}

/// `max_inflight`: a client that acknowledges nothing gets that many QoS 1 messages
/// and no more; one that acknowledges gets them all, through the same small window.
#[tokio::test(flavor = "multi_thread")]
async fn max_inflight_holds_deliveries_until_the_client_acknowledges() {
    let s = Setup::new("max_inflight = 3\n");
    let _d = s.start();
    let a = s.addr();
    let publisher = Sub::connect_only(s.addr(), "pub").await;
    let run = |ack: bool| {
        tokio::task::spawn_blocking(move || {
            let mut args = vec!["--sub", "w/#", "--qos", "1", "--wait", "3"];
            if !ack {
                args.push("--no-ack");
            }
            paho(a, &args)
        })
    };
    for ack in [false, true] {
        let client = run(ack);
        // Its SUBACK is in well before this.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        for i in 0..10 {
            publisher
                .client
                .publish(format!("w/{i}"), rumqttc::QoS::AtLeastOnce, false, "x")
                .await
                .expect("publish");
        }
        let lines = client.await.expect("paho");
        let got = paho_topics(&lines);
        if ack {
            assert_eq!(got.len(), 10, "{got:?}");
        } else {
            assert_eq!(got, ["w/0", "w/1", "w/2"]);
        }
    }
}

/// Retained messages outlive a clean restart (saved in the state directory at the
/// stop, like mosquitto's `persistence true`); a deleted one stays deleted.
#[tokio::test(flavor = "multi_thread")]
async fn retained_messages_survive_a_clean_restart() {
    let s = Setup::new("");
    let mut d = s.start();
    let publisher = Sub::connect_only(s.addr(), "keeper").await;
    for (topic, payload) in [("keep/a", "1"), ("keep/b", "2"), ("keep/b", "")] {
        publisher
            .client
            .publish(topic, rumqttc::QoS::AtLeastOnce, true, payload)
            .await
            .expect("publish");
    }
    let probe = Sub::connect(s.addr(), "probe", "keep/#").await;
    assert!(probe
        .wait_for(WAIT, |m| m.topic == "keep/a")
        .await
        .is_some());
    // The delete of keep/b went first on the same connection.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(publisher);
    drop(probe);
    assert!(d.stop().success());
    assert!(s.state_dir().join("retained.bin").exists());

    let _d = s.start();
    let late = Sub::connect(s.addr(), "late", "keep/#").await;
    let got = late.wait_for(WAIT, |m| m.topic == "keep/a").await;
    assert_eq!(got.map(|m| (m.payload, m.retain)), Some(("1".into(), true)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        late.messages().iter().all(|m| m.topic != "keep/b"),
        "{:?}",
        late.messages()
    );
}

/// An MQTT 5 client that allows topic aliases gets every message of a wildcard
/// subscription under its own topic (rumqttd alone would alias them all to the first).
#[tokio::test(flavor = "multi_thread")]
async fn a_v5_client_allowing_topic_aliases_sees_the_right_topics() {
    let s = Setup::new("");
    let _d = s.start();
    let a = s.addr();
    let lines = tokio::task::spawn_blocking(move || {
        paho(
            a,
            &[
                "--v5",
                "--alias-max",
                "10",
                "--sub",
                "al/#",
                "--pub",
                "al/1",
                "x",
                "--pub",
                "al/2",
                "y",
                "--pub",
                "al/3",
                "z",
                "--count",
                "3",
            ],
        )
    })
    .await
    .expect("paho");
    assert_eq!(paho_topics(&lines), ["al/1", "al/2", "al/3"], "{lines:?}");
}
