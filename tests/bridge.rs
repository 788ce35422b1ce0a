//! The bridge against a real upstream broker (Debian's mosquitto), with the sim counter
//! as the probe: the values seen upstream must have no gaps.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(20);

/// A gateway bridged to `up` with one sim counter at 10 readings/s.
fn bridged(s: &Setup, up: u16, buffer: &str, routes: &str) -> String {
    format!(
        r#"
[buffer]
{buffer}

[upstream]
url = "mqtt://127.0.0.1:{up}"
client_id = "sg-{port}"
keepalive = "5s"

[[upstream.route]]
filter = "{prefix}/#"
direction = "out"
qos = 1
remote_prefix = "site/"
{routes}

[[device]]
name = "probe"
plugin = "sim"
poll_interval = "100ms"

[[device.point]]
name = "n"
signal = "counter"
"#,
        port = s.port,
        prefix = s.prefix,
    )
}

fn remote(s: &Setup) -> String {
    format!("site/{}/probe/n", s.prefix)
}

fn assert_no_gaps(values: &[i64], what: &str) -> usize {
    assert!(!values.is_empty(), "{what}: nothing arrived upstream");
    let (gaps, dups) = gaps_and_duplicates(values);
    assert!(
        gaps.is_empty(),
        "{what}: values missing upstream: {gaps:?}\narrival order: {values:?}"
    );
    dups
}

/// An outage: the upstream down for `pause`, then up again; waits until `more` values past
/// the highest seen have arrived, with nothing missing.
async fn outage(m: &mut Mosquitto, up: &Collector, topic: &str, pause: Duration, more: i64) {
    m.down();
    tokio::time::sleep(pause).await;
    m.up();
    let high = *up.values(topic).iter().max().expect("values") + more;
    assert!(
        up.wait_complete(topic, high, T).await,
        "drains after the outage: missing {:?}",
        gaps_and_duplicates(&up.values(topic)).0
    );
}

/// Wait until `value` arrived upstream on `topic`; fail with the gateway's log.
async fn assert_arrives(up: &Collector, topic: &str, value: i64, d: &Daemon) {
    assert!(
        up.wait_value(topic, value, T).await,
        "{value} does not arrive upstream:\n{}",
        d.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_and_broker_restarts_lose_nothing() {
    let s = Setup::new("");
    let mut m = Mosquitto::start(s.dir.path());
    s.write(&bridged(&s, m.port, "", ""));
    let up = Collector::start(m.addr(), "collector-1", "site/#").await;
    let mut d = s.start();
    let topic = remote(&s);
    assert_arrives(&up, &topic, 5, &d).await;

    // A long outage: everything produced meanwhile waits in the buffer.
    outage(&mut m, &up, &topic, Duration::from_secs(3), 40).await;

    // 20 restarts in a row, under load.
    for _ in 0..20 {
        m.down();
        tokio::time::sleep(Duration::from_millis(250)).await;
        m.up();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Connections that never lasted the stable period (30 s) keep the back-off growing,
    // up to its 60 s cap: the next connect may be that far away.
    let high = *up.values(&topic).iter().max().expect("values") + 20;
    assert!(
        up.wait_value(&topic, high, Duration::from_secs(80)).await,
        "live readings after the restarts:\n{}",
        d.log_text()
            .lines()
            .filter(|l| l.contains("upstream"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(d.stop().success());
    // Live readings go first after a reconnect, so some backlog may still wait in the
    // buffer at this stop: the next run sends it. Nothing below the highest value seen
    // may be missing then.
    // So: wait for a live reading of the next run, then for everything below it.
    let seen = *up.values(&topic).iter().max().expect("values");
    let mut d = s.start();
    assert!(
        up.wait_value(&topic, seen + 1, T).await,
        "no live reading after the restart:\n{}",
        d.log_text()
    );
    let live = *up.values(&topic).iter().max().expect("values");
    assert!(
        up.wait_complete(&topic, live, Duration::from_secs(40))
            .await,
        "{}\n{}",
        buffer_stats(&s),
        d.log_text()
    );
    assert!(d.stop().success());
    let values = up.values(&topic);
    let dups = assert_no_gaps(&values, "outage and restarts");
    eprintln!("{} values upstream, {dups} duplicates", values.len());
    assert!(!d.log_text().contains(" ERROR "), "{}", d.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_an_outage_loses_nothing() {
    let s = Setup::new("");
    let mut m = Mosquitto::start(s.dir.path());
    s.write(&bridged(&s, m.port, "", ""));
    let up = Collector::start(m.addr(), "collector-2", "site/#").await;
    let mut d = s.start();
    let topic = remote(&s);
    assert!(up.wait_value(&topic, 3, T).await, "{}", d.log_text());

    m.down();
    tokio::time::sleep(Duration::from_secs(2)).await;
    d.kill();
    let mut d = s.start();
    tokio::time::sleep(Duration::from_secs(1)).await;
    m.up();

    // The counter resumed after its last published value; all of it reaches upstream.
    let stats = sensorgate(&[
        "buffer",
        "stats",
        "--config",
        s.config().to_str().expect("utf8"),
    ]);
    assert!(stats.0, "{}", stats.2);
    let high = *up.values(&topic).iter().max().expect("values") + 40;
    assert!(up.wait_complete(&topic, high, T).await, "{}", d.log_text());
    assert!(d.stop().success());
    assert_no_gaps(&up.values(&topic), "SIGKILL during an outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_will_says_offline_after_sigkill_and_a_clean_stop_too() {
    let s = Setup::new("");
    let m = Mosquitto::start(s.dir.path());
    s.write(&bridged(&s, m.port, "", ""));
    let up = Collector::start(m.addr(), "collector-3", "site/#").await;
    let status = format!("site/{}/status", s.prefix);
    let mut d = s.start();
    assert!(up
        .wait_for(T, |m| m.topic == status && m.payload == "online")
        .await
        .is_some());
    d.kill();
    assert!(
        up.wait_for(T, |m| m.topic == status && m.payload == "offline")
            .await
            .is_some(),
        "Last Will upstream after SIGKILL"
    );

    // A clean stop says offline itself (and the will does not fire twice).
    let n = up.messages().len();
    let mut d = s.start();
    assert!(up
        .wait_for_after(n, T, |m| m.topic == status && m.payload == "online")
        .await
        .is_some());
    assert!(d.stop().success());
    let after: Vec<Msg> = up.messages()[n..].to_vec();
    assert!(
        after
            .iter()
            .any(|m| m.topic == status && m.payload == "offline"),
        "{after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downlink_reaches_local_clients_and_both_does_not_echo() {
    let s = Setup::new("");
    let m = Mosquitto::start(s.dir.path());
    let routes = r#"
[[upstream.route]]
filter = "cmd/#"
direction = "both"
qos = 1
local_prefix = "local/"
remote_prefix = "cloud/"
"#;
    s.write(&bridged(&s, m.port, "", routes));
    let up = Collector::start(m.addr(), "collector-4", "cloud/#").await;
    let mut d = s.start();
    let local = Sub::connect(s.addr(), "local-sub", "local/#").await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    up.client
        .publish("cloud/cmd/lamp", rumqttc::QoS::AtLeastOnce, false, "on")
        .await
        .expect("publish upstream");
    let got = local
        .wait_for(T, |m| m.topic == "local/cmd/lamp")
        .await
        .expect("the downlink message reaches a local subscriber");
    assert_eq!(got.payload, "on");

    // A local client's message on a `both` route goes up.
    local
        .client
        .publish("local/cmd/fan", rumqttc::QoS::AtLeastOnce, false, "off")
        .await
        .expect("publish locally");
    assert!(up
        .wait_for(T, |m| m.topic == "cloud/cmd/fan" && m.payload == "off")
        .await
        .is_some());

    tokio::time::sleep(Duration::from_secs(1)).await;
    let echoed = up
        .messages()
        .iter()
        .filter(|m| m.topic == "cloud/cmd/lamp")
        .count();
    assert_eq!(echoed, 1, "the downlink message must not come back up");
    assert!(d.stop().success());
}

/// The outbox's AUTOINCREMENT sequence: how many rows were ever written to the file.
fn rows_ever_written(s: &Setup) -> i64 {
    let db = s.state_dir().join("buffer.db");
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\n\
             c = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True)\n\
             r = c.execute(\"SELECT seq FROM sqlite_sequence WHERE name = 'outbox'\").fetchone()\n\
             print(r[0] if r else 0)",
            db.to_str().expect("utf8"),
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a number")
}

fn buffer_stats(s: &Setup) -> String {
    let (ok, out, err) = sensorgate(&[
        "buffer",
        "stats",
        "--config",
        s.config().to_str().expect("utf8"),
    ]);
    assert!(ok, "{err}");
    out
}

/// `(count, dropped_full, refused, expired)` from `buffer stats`.
fn parse_stats(out: &str) -> (i64, i64, i64, i64) {
    let num = |after: &str| -> i64 {
        let i = out
            .find(after)
            .unwrap_or_else(|| panic!("{after:?} in {out}"));
        out[..i]
            .trim_end()
            .rsplit(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("number before {after:?} in {out}"))
    };
    (
        num(" message(s)"),
        num(" oldest to make room"),
        num(" new refused"),
        num(" expired"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_drops_by_its_policy_and_counts_it() {
    for policy in ["drop_oldest", "reject_new"] {
        let s = Setup::new("");
        let dead = free_port(); // nothing listens: the uplink stays down
        s.write(&bridged(
            &s,
            dead,
            &format!("max_bytes = \"2 KiB\"\non_full = \"{policy}\""),
            "",
        ));
        let mut d = s.start();
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(d.stop().success());
        let out = buffer_stats(&s);
        let (count, full, refused, _) = parse_stats(&out);
        assert!(count > 5, "{policy}: {out}");
        match policy {
            "drop_oldest" => assert!(full > 0 && refused == 0, "{policy}: {out}"),
            _ => assert!(refused > 0 && full == 0, "{policy}: {out}"),
        }
        assert!(d.log_text().contains("ERROR"), "drops are logged as ERROR");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_messages_expire_and_purge_empties_the_buffer() {
    let s = Setup::new("");
    let dead = free_port();
    s.write(&bridged(&s, dead, "max_age = \"1s\"", ""));
    let mut d = s.start();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(d.stop().success());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Expired rows are dropped at the next start.
    let mut d = s.start();
    assert!(d.stop().success());
    let (_, _, _, expired) = parse_stats(&buffer_stats(&s));
    assert!(expired > 0, "{}", buffer_stats(&s));

    let (ok, out, err) = sensorgate(&[
        "buffer",
        "purge",
        "--config",
        s.config().to_str().expect("utf8"),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("purged"), "{out}");
    let (count, ..) = parse_stats(&buffer_stats(&s));
    assert_eq!(count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_buffer_file_is_moved_aside_and_the_gateway_runs() {
    let s = Setup::new("");
    let m = Mosquitto::start(s.dir.path());
    s.write(&bridged(&s, m.port, "", ""));
    std::fs::create_dir_all(s.state_dir()).expect("state dir");
    std::fs::write(s.state_dir().join("buffer.db"), vec![0x5a; 8192]).expect("garbage");
    let up = Collector::start(m.addr(), "collector-5", "site/#").await;
    let mut d = s.start();
    assert!(up.wait_value(&remote(&s), 3, T).await, "{}", d.log_text());
    assert!(d.stop().success());
    let log = d.log_text();
    assert!(
        log.contains("ERROR") && log.contains("moving it aside"),
        "{log}"
    );
    let aside = std::fs::read_dir(s.state_dir())
        .expect("state dir")
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("buffer.db.corrupt-")
        });
    assert!(aside, "the corrupt file is kept aside");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_upstream_carries_readings_downlink_and_the_last_will() {
    let s = Setup::new("");
    let mut m = Mosquitto::start(s.dir.path());
    let routes = r#"
[[upstream.route]]
filter = "cmd/#"
direction = "in"
qos = 1
local_prefix = "local/"
remote_prefix = "cloud/"
"#;
    let config = bridged(&s, m.port, "", routes).replace(
        "keepalive = \"5s\"\n",
        "keepalive = \"5s\"\nprotocol = \"v5\"\n",
    );
    assert!(config.contains("protocol = \"v5\""));
    s.write(&config);
    let up = Collector::start(m.addr(), "collector-v5", "#").await;
    let mut d = s.start();
    let topic = remote(&s);
    assert_arrives(&up, &topic, 3, &d).await;
    let client_id = format!("sg-{}", s.port);
    assert!(
        m.log_text()
            .lines()
            .any(|l| l.contains(&client_id) && l.contains("(p5,")),
        "mosquitto saw an MQTT 5 client:\n{}",
        m.log_text()
    );

    // An outage: nothing lost over MQTT 5 either.
    outage(&mut m, &up, &topic, Duration::from_secs(2), 20).await;

    // Downlink.
    let local = Sub::connect(s.addr(), "local-v5", "local/#").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    up.client
        .publish("cloud/cmd/lamp", rumqttc::QoS::AtLeastOnce, false, "on")
        .await
        .expect("publish upstream");
    let got = local
        .wait_for(T, |m| m.topic == "local/cmd/lamp")
        .await
        .expect("the downlink message reaches a local subscriber");
    assert_eq!(got.payload, "on");

    // The Last Will after SIGKILL.
    let status = format!("site/{}/status", s.prefix);
    let n = up.messages().len();
    d.kill();
    assert!(
        up.wait_for_after(n, T, |m| m.topic == status && m.payload == "offline")
            .await
            .is_some(),
        "Last Will upstream after SIGKILL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_durability_writes_to_disk_only_while_the_uplink_is_down() {
    let s = Setup::new("");
    let mut m = Mosquitto::start(s.dir.path());
    s.write(&bridged(&s, m.port, "durability = \"offline\"", ""));
    let up = Collector::start(m.addr(), "collector-offline", "site/#").await;
    let mut d = s.start();
    let topic = remote(&s);
    assert_arrives(&up, &topic, 10, &d).await;
    // Up: readings wait in memory until their PUBACK; the file holds nothing, and its
    // id sequence (which every row written advances) stays where the first readings,
    // taken before the uplink came up, left it.
    let (count, ..) = parse_stats(&buffer_stats(&s));
    assert_eq!(count, 0, "nothing on disk while the uplink is up");
    let written = rows_ever_written(&s);
    assert!(up.wait_value(&topic, 20, T).await, "more readings go up");
    assert_eq!(
        rows_ever_written(&s),
        written,
        "no row written while the uplink is up"
    );

    // Down: what comes meanwhile goes to disk.
    m.down();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (count, ..) = parse_stats(&buffer_stats(&s));
    assert!(count > 5, "on disk while the uplink is down: {count}");

    // A clean stop during the outage keeps them; the next run sends them.
    assert!(d.stop().success());
    // The collector is back on the restarted broker before the gateway sends: what
    // mosquitto restores of its session is not what this test is about.
    let seen = up.subscriptions();
    m.up();
    assert!(
        up.wait_resubscribed(seen, T).await,
        "the collector reconnects"
    );
    let mut d = s.start();
    let high = *up.values(&topic).iter().max().expect("values") + 30;
    assert!(
        up.wait_complete(&topic, high, T).await,
        "everything arrives after the outage and the restart: {:?} in {:?}\n{}",
        gaps_and_duplicates(&up.values(&topic)).0,
        up.values(&topic),
        d.log_text()
            .lines()
            .filter(|l| !l.contains("rumqttd"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_no_gaps(&up.values(&topic), "offline durability");
    assert!(d.stop().success());
}

/// A local client's burst on an `out` route, far faster than the outbox writes one
/// message at a time and six times rumqttd's log: every message reaches the upstream
/// (the bridge's pick-up waits instead of dropping, and the flow control slows the
/// publisher down meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_burst_on_an_out_route_loses_nothing() {
    const N: i64 = 12_000;
    let s = Setup::new("");
    let m = Mosquitto::start(s.dir.path());
    let routes = r#"
[[upstream.route]]
filter = "ext/#"
direction = "out"
qos = 1
remote_prefix = "up/"
"#;
    s.write(&bridged(&s, m.port, "", routes));
    let up = Collector::start(m.addr(), "collector-burst", "up/ext/#").await;
    let d = s.start();
    let local = Sub::connect_only(s.addr(), "burst").await;
    assert!(local.connected());
    let pad = " ".repeat(1000);
    for i in 0..N {
        local
            .client
            .publish(
                "ext/burst",
                rumqttc::QoS::AtLeastOnce,
                false,
                format!("{{\"value\":{i}}}{pad}"),
            )
            .await
            .expect("publish locally");
    }
    assert!(
        up.wait_complete("up/ext/burst", N - 1, Duration::from_secs(90))
            .await,
        "{} of {N} arrived upstream; missing {:?}\n{}",
        up.values("up/ext/burst").len(),
        &gaps_and_duplicates(&up.values("up/ext/burst")).0.get(..20),
        d.log_text()
    );
}
