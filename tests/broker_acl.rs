//! The broker front's ACL (acl_file, mosquitto's format) against real clients: SUBACK
//! failures, denied PUBLISHes dropped (and acknowledged, as mosquitto does), messages a
//! subscriber may not read held back, QoS 1 included, both protocol levels.

mod common;

use common::{mosquitto_passwd, paho, paho_get, paho_topics, Setup};
use serde_json::json;

const ACL: &str = "\
topic read public/#
user alice
topic readwrite home/#
topic read public/#
user bob
topic write home/bob/#
user carol
topic write secret/#
topic write home/#
pattern readwrite clients/%c/#
";

fn setup() -> Setup {
    let s = Setup::new("");
    let passwd = s.dir.path().join("passwd");
    mosquitto_passwd(
        &passwd,
        &[("alice", "a-pass"), ("bob", "b-pass"), ("carol", "c-pass")],
    );
    let acl = s.dir.path().join("acl");
    std::fs::write(&acl, ACL).expect("acl file");
    s.write(&format!(
        "password_file = \"{}\"\nacl_file = \"{}\"\nallow_anonymous = true\n",
        passwd.display(),
        acl.display()
    ));
    s
}

fn args<'a>(user: &'a str, pass: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--user", user, "--password", pass];
    v.extend_from_slice(rest);
    v
}

#[test]
fn a_denied_subscription_gets_a_suback_failure_the_allowed_ones_work() {
    let s = setup();
    let _d = s.start();
    let a = s.addr();
    let lines = paho(
        a,
        &args(
            "alice",
            "a-pass",
            &[
                "--sub", "home/#", "--sub", "secret/#", "--pub", "home/x", "1", "--count", "1",
            ],
        ),
    );
    assert_eq!(
        paho_get(&lines, "suback"),
        Some(&json!([0, 0x80])),
        "{lines:?}"
    );
    assert_eq!(paho_topics(&lines), vec!["home/x"]);
    let lines = paho(
        a,
        &args(
            "alice",
            "a-pass",
            &[
                "--v5", "--sub", "secret/#", "--sub", "home/#", "--qos", "1", "--wait", "0",
            ],
        ),
    );
    assert_eq!(
        paho_get(&lines, "suback"),
        Some(&json!([0x87, 1])),
        "{lines:?}"
    );
    // Every filter refused: the front answers the SUBACK itself.
    let lines = paho(
        a,
        &args("bob", "b-pass", &["--sub", "home/#", "--wait", "0"]),
    );
    assert_eq!(
        paho_get(&lines, "suback"),
        Some(&json!([0x80])),
        "{lines:?}"
    );
    // Anonymous clients get the rules before the first `user` line.
    let lines = paho(a, &["--sub", "public/#", "--sub", "home/#", "--wait", "0"]);
    assert_eq!(
        paho_get(&lines, "suback"),
        Some(&json!([0, 0x80])),
        "{lines:?}"
    );
}

#[test]
fn denied_publishes_are_dropped_and_acknowledged_allowed_ones_delivered() {
    let s = setup();
    let _d = s.start();
    let a = s.addr();
    let watcher = std::thread::spawn(move || {
        paho(
            a,
            &args(
                "alice",
                "a-pass",
                &[
                    "--sub", "home/#", "--sub", "public/#", "--count", "2", "--wait", "10",
                ],
            ),
        )
    });
    // Let the watcher subscribe first: its SUBACK line is written before the publishes.
    std::thread::sleep(std::time::Duration::from_millis(3000));
    for qos in ["0", "1"] {
        let lines = paho(
            a,
            &args(
                "bob",
                "b-pass",
                &[
                    "--qos",
                    qos,
                    "--pub",
                    "public/no",
                    "x",
                    "--pub",
                    "home/alice/no",
                    "x",
                    "--wait",
                    "0",
                ],
            ),
        );
        assert_eq!(paho_get(&lines, "connack"), Some(&json!(0)));
        if qos == "1" {
            // mosquitto acknowledges a denied QoS 1 publish: the client does not retry it.
            let acks = lines.iter().filter(|l| l.get("puback").is_some()).count();
            assert_eq!(acks, 2, "{lines:?}");
        }
    }
    let lines = paho(
        a,
        &args(
            "bob",
            "b-pass",
            &[
                "--v5",
                "--qos",
                "1",
                "--pub",
                "home/bob/door",
                "open",
                "--wait",
                "0",
            ],
        ),
    );
    assert_eq!(paho_get(&lines, "puback"), Some(&json!(1)), "{lines:?}");
    let lines = paho(
        a,
        &args(
            "carol",
            "c-pass",
            &["--pub", "public/ok", "y", "--wait", "0"],
        ),
    );
    assert_eq!(paho_get(&lines, "connack"), Some(&json!(0)));
    let lines = paho(
        a,
        &args(
            "carol",
            "c-pass",
            &["--pub", "home/carol", "z", "--wait", "0"],
        ),
    );
    assert_eq!(paho_get(&lines, "connack"), Some(&json!(0)));
    let got = watcher.join().expect("watcher");
    // public/ok: carol may not write there; so the two messages are bob's door and carol's.
    assert_eq!(
        paho_topics(&got),
        vec!["home/bob/door", "home/carol"],
        "{got:?}"
    );
}

#[test]
fn messages_a_subscriber_may_not_read_are_held_back_qos1_included() {
    let s = setup();
    let _d = s.start();
    let a = s.addr();
    // alice may subscribe to `#` (she can read some of it) but not read secret/…; 150
    // QoS 1 secret messages (more than rumqttd's 100 unacknowledged) before the one she
    // may read: the front acknowledges the held-back ones for her.
    for v5 in [false, true] {
        let mut rest = vec!["--sub", "#", "--qos", "1", "--count", "1", "--wait", "20"];
        if v5 {
            rest.push("--v5");
        }
        let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
        let watcher = std::thread::spawn(move || {
            let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
            paho(a, &args("alice", "a-pass", &rest))
        });
        std::thread::sleep(std::time::Duration::from_millis(3000));
        let mut pubs: Vec<String> = vec!["--qos".into(), "1".into()];
        for i in 0..150 {
            pubs.extend(["--pub".into(), format!("secret/{i}"), "s".into()]);
        }
        pubs.extend([
            "--pub".into(),
            "home/last".into(),
            "ok".into(),
            "--wait".into(),
            "0".into(),
        ]);
        let pubs: Vec<&str> = pubs.iter().map(String::as_str).collect();
        let lines = paho(a, &args("carol", "c-pass", &pubs));
        let acks = lines.iter().filter(|l| l.get("puback").is_some()).count();
        assert_eq!(acks, 151, "carol's publishes were not all acknowledged");
        let got = watcher.join().expect("watcher");
        assert_eq!(paho_topics(&got), vec!["home/last"], "v5 {v5}: {got:?}");
    }
}

#[test]
fn patterns_use_the_client_id() {
    let s = setup();
    let _d = s.start();
    let a = s.addr();
    let lines = paho(
        a,
        &args(
            "bob",
            "b-pass",
            &[
                "--id",
                "dev1",
                "--sub",
                "clients/dev1/#",
                "--sub",
                "clients/dev2/#",
                "--pub",
                "clients/dev2/x",
                "no",
                "--pub",
                "clients/dev1/x",
                "yes",
                "--count",
                "1",
            ],
        ),
    );
    assert_eq!(
        paho_get(&lines, "suback"),
        Some(&json!([0, 0x80])),
        "{lines:?}"
    );
    assert_eq!(paho_topics(&lines), vec!["clients/dev1/x"], "{lines:?}");
}
