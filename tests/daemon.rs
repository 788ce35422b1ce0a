//! End-to-end: the real daemon, real MQTT clients, real signals.

mod common;

use std::time::Duration;

use common::*;

const SIM: &str = r#"
[[device]]
name = "sim1"
plugin = "sim"
poll_interval = "200ms"

[[device.point]]
name = "count"
signal = "counter"

[[device.point]]
name = "temp"
signal = "sine"
min = 18.0
max = 24.0
unit = "°C"

[[device.point]]
name = "flag"
signal = "constant"
value = true

[[device.point]]
name = "label"
signal = "constant"
value = "hello"
"#;

const T: Duration = Duration::from_secs(10);

fn counter_values(sub: &Sub, topic: &str) -> Vec<i64> {
    sub.messages()
        .iter()
        .filter(|m| m.topic == topic)
        .filter_map(|m| reading(&m.payload).get("value").and_then(|v| v.as_i64()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_topic_of_the_contract_with_its_payload() {
    let s = Setup::new(SIM);
    let mut d = s.start();
    let p = s.prefix.clone();
    // Let a few polls happen first: what follows checks what a late subscriber gets.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let sub = Sub::connect(s.addr(), "late", &format!("{p}/#")).await;

    let status = sub
        .wait_for(T, |m| m.topic == format!("{p}/status"))
        .await
        .expect("status");
    assert_eq!(status.payload, "online");
    assert!(status.retain, "status is retained");

    let avail = sub
        .wait_for(T, |m| m.topic == format!("{p}/sim1/availability"))
        .await
        .expect("availability");
    assert_eq!(avail.payload, "online");
    assert!(avail.retain);

    let temp = sub
        .wait_for(T, |m| m.topic == format!("{p}/sim1/temp") && m.retain)
        .await
        .expect("retained temp for a late subscriber");
    let j = reading(&temp.payload);
    let keys: Vec<&str> = j.keys().map(|k| k.as_str()).collect();
    assert_eq!(keys.len(), 3, "{j:?}");
    assert!(j["value"].is_number(), "{j:?}");
    let v = j["value"].as_f64().expect("number");
    assert!((18.0..=24.0).contains(&v), "{v}");
    assert_eq!(j["unit"], "°C");
    let ts = j["ts"].as_str().expect("ts string");
    assert!(is_contract_ts(ts), "ts {ts:?}");

    let count = sub
        .wait_for(T, |m| m.topic == format!("{p}/sim1/count"))
        .await
        .expect("count");
    let j = reading(&count.payload);
    assert!(j["value"].is_i64(), "{j:?}");
    assert!(!j.contains_key("unit"), "no unit when none is set: {j:?}");

    let flag = sub
        .wait_for(T, |m| m.topic == format!("{p}/sim1/flag"))
        .await
        .expect("flag");
    assert_eq!(
        reading(&flag.payload)["value"],
        serde_json::Value::Bool(true)
    );
    let label = sub
        .wait_for(T, |m| m.topic == format!("{p}/sim1/label"))
        .await
        .expect("label");
    assert_eq!(reading(&label.payload)["value"], "hello");

    // New readings keep arriving, live (not retained).
    let topic = format!("{p}/sim1/count");
    let before = counter_values(&sub, &topic).len();
    let deadline = std::time::Instant::now() + T;
    while counter_values(&sub, &topic).len() <= before && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        counter_values(&sub, &topic).len() > before,
        "live readings keep coming"
    );
    assert!(sub.messages().iter().any(|m| m.topic == topic && !m.retain));

    assert!(d.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_publishes_offline_and_exits_zero() {
    let s = Setup::new(SIM);
    let mut d = s.start();
    let p = s.prefix.clone();
    let sub = Sub::connect(s.addr(), "watcher", &format!("{p}/#")).await;
    sub.wait_for(T, |m| {
        m.topic == format!("{p}/sim1/availability") && m.payload == "online"
    })
    .await
    .expect("device online");

    d.signal(libc::SIGTERM);
    let offline = sub
        .wait_for(T, |m| {
            m.topic == format!("{p}/status") && m.payload == "offline"
        })
        .await;
    let dev_offline = sub
        .wait_for(T, |m| {
            m.topic == format!("{p}/sim1/availability") && m.payload == "offline"
        })
        .await;
    let status = d.wait(Duration::from_secs(10)).expect("exits within 10 s");
    assert!(offline.is_some(), "gateway offline:\n{}", d.log_text());
    assert!(dev_offline.is_some(), "device offline:\n{}", d.log_text());
    assert!(status.success(), "exit 0 on SIGTERM, got {status}");
    assert!(!d.log_text().contains(" ERROR "), "{}", d.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_cleanly_too() {
    let s = Setup::new(SIM);
    let mut d = s.start();
    d.signal(libc::SIGINT);
    let status = d.wait(Duration::from_secs(10)).expect("exits on SIGINT");
    assert!(status.success(), "{status}");
}

/// The first counter value a subscriber sees after a restart.
async fn first_after_restart(s: &Setup) -> (Daemon, i64) {
    let d = s.start();
    let p = &s.prefix;
    let sub = Sub::connect(s.addr(), "after", &format!("{p}/sim1/count")).await;
    let m = sub
        .wait_for(T, |m| m.topic.ends_with("/count"))
        .await
        .expect("a counter value after restart");
    let v = reading(&m.payload)["value"].as_i64().expect("int");
    (d, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_resumes_after_a_clean_restart() {
    // A long interval: the first value after restart is still the retained one when the
    // subscriber arrives.
    let s = Setup::new(&SIM.replace("200ms", "1s"));
    let mut d = s.start();
    let p = s.prefix.clone();
    let sub = Sub::connect(s.addr(), "before", &format!("{p}/sim1/count")).await;
    let topic = format!("{p}/sim1/count");
    assert!(
        sub.wait_for(Duration::from_secs(15), |m| m.topic == topic
            && reading(&m.payload)["value"].as_i64() >= Some(2))
            .await
            .is_some(),
        "counter reached 2"
    );
    assert!(d.stop().success());
    let last = *counter_values(&sub, &topic).last().expect("values");
    drop(sub);

    let (mut d, first) = first_after_restart(&s).await;
    assert_eq!(
        first,
        last + 1,
        "resumes right after the last published value"
    );
    assert!(d.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_loses_nothing_across_sigkill() {
    let s = Setup::new(&SIM.replace("200ms", "1s"));
    let mut d = s.start();
    let p = s.prefix.clone();
    let topic = format!("{p}/sim1/count");
    let sub = Sub::connect(s.addr(), "before", &topic).await;
    assert!(sub
        .wait_for(Duration::from_secs(15), |m| m.topic == topic
            && reading(&m.payload)["value"].as_i64() >= Some(2))
        .await
        .is_some());
    d.kill();
    let last = *counter_values(&sub, &topic).last().expect("values");
    drop(sub);

    let (mut d, first) = first_after_restart(&s).await;
    // No gap: the value after the last one seen is never skipped (it may be repeated if
    // the kill came between publishing and saving).
    assert!(
        first == last + 1 || first == last,
        "after SIGKILL at {last}, restarted at {first}"
    );
    assert!(d.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_publish_disconnects_only_that_client() {
    let s = Setup::new(&format!("max_payload_size = \"1 KiB\"\n{SIM}"));
    let mut d = s.start();
    let p = s.prefix.clone();
    let good = Sub::connect(s.addr(), "good", &format!("{p}/sim1/count")).await;
    let bad = Sub::connect_only(s.addr(), "bad").await;
    assert!(bad.connected());
    bad.client
        .publish("x/big", rumqttc::QoS::AtMostOnce, false, vec![b'x'; 4096])
        .await
        .expect("queue publish");
    assert!(
        bad.wait_closed(T).await,
        "the oversize client is disconnected"
    );
    let seen = good.messages().len();
    assert!(
        good.wait_more_than(seen + 1, T).await,
        "the other client keeps receiving"
    );
    assert!(good.connected());
    assert!(d.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_one_more_client() {
    let s = Setup::new("max_connections = 2\n");
    let mut d = s.start();
    let a = Sub::connect_only(s.addr(), "a").await;
    let b = Sub::connect_only(s.addr(), "b").await;
    assert!(a.connected() && b.connected());
    let c = Sub::connect_only(s.addr(), "c").await;
    assert!(!c.connected(), "a third client is refused");
    assert!(a.connected() && b.connected(), "the others stay");
    assert!(d.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_is_a_clear_start_up_error() {
    let s = Setup::new(SIM);
    let _taken = std::net::TcpListener::bind(s.addr()).expect("take the port");
    let cfg = s.config();
    let (ok, _out, err) = sensorgate(&["run", "--config", cfg.to_str().expect("utf8")]);
    assert!(!ok);
    assert!(err.contains("broker.listen"), "{err}");
    assert!(err.contains(&s.port.to_string()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_a_read_only_point_is_a_warning() {
    let s = Setup::new(SIM);
    let mut d = s.start();
    let p = s.prefix.clone();
    let c = Sub::connect(s.addr(), "writer", &format!("{p}/sim1/count")).await;
    c.client
        .publish(
            format!("{p}/sim1/count/set"),
            rumqttc::QoS::AtLeastOnce,
            false,
            "5",
        )
        .await
        .expect("publish");
    let deadline = std::time::Instant::now() + T;
    while !d.log_text().contains("not writable") && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = d.log_text();
    assert!(
        log.contains("WARN") && log.contains("not writable"),
        "{log}"
    );
    // Still running and publishing.
    let n = c.messages().len();
    assert!(c.wait_more_than(n, T).await, "still publishing");
    assert!(d.stop().success());
}

#[test]
fn mosquitto_sub_and_tail_see_readings() {
    let s = Setup::new(SIM);
    let mut d = s.start();
    let port = s.port.to_string();
    let filter = format!("{}/#", s.prefix);
    let out = std::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            &filter,
            "-v",
            "-C",
            "6",
            "-W",
            "10",
        ])
        .output()
        .expect("mosquitto_sub is installed (tests/run.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("{}/sim1/count {{\"value\":", s.prefix))),
        "{text}"
    );

    let cfg = s.config();
    let (ok, out, err) = sensorgate(&[
        "tail",
        "--config",
        cfg.to_str().expect("utf8"),
        "-n",
        "3",
        "--timeout",
        "10s",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.lines().all(|l| l.starts_with(&s.prefix)), "{out}");
    assert!(d.stop().success());
}

#[test]
fn paho_subscriber_sees_readings() {
    let s = Setup::new(SIM);
    let mut d = s.start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/paho_sub.py");
    let out = std::process::Command::new("python3")
        .args([
            script,
            "127.0.0.1",
            &s.port.to_string(),
            &format!("{}/#", s.prefix),
            "5",
        ])
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("/sim1/count"), "{text}");
    assert!(d.stop().success());
}

#[test]
fn an_mqtt5_listener_serves_mqtt5_clients() {
    let v5 = free_port();
    let s = Setup::new(&format!("listen_v5 = \"127.0.0.1:{v5}\"\n{SIM}"));
    let mut d = s.start();
    let filter = format!("{}/sim1/count", s.prefix);
    let out = std::process::Command::new("mosquitto_sub")
        .args(["-V", "mqttv5", "-h", "127.0.0.1", "-p", &v5.to_string()])
        .args(["-t", &filter, "-v", "-C", "2", "-W", "10"])
        .output()
        .expect("mosquitto_sub");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", d.log_text());
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(d.stop().success());
}
