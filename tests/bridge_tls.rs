//! The bridge over TLS (`mqtts://`) to Debian's mosquitto, with a test CA, a server
//! certificate for 127.0.0.1 and a client certificate made at test time (rcgen), and the
//! refusal of a server whose certificate another CA signed.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::pki::{pki, Pki};
use common::*;

const T: Duration = Duration::from_secs(20);

/// mosquitto with its plain listener (for the collector) and a TLS listener that wants a
/// client certificate from the test CA; returns it and the TLS port.
fn mosquitto_tls(dir: &Path, pki: &Pki) -> (Mosquitto, u16) {
    let tls_port = free_port();
    let extra = format!(
        "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
         require_certificate true\nuse_identity_as_username true\n",
        pki.ca.display(),
        pki.server_cert.display(),
        pki.server_key.display()
    );
    (Mosquitto::start_with(dir, &extra), tls_port)
}

/// A gateway bridged over TLS to `127.0.0.1:tls_port`, with a sim counter at 10/s.
fn bridged_tls(s: &Setup, tls_port: u16, ca_file: &Path, pki: &Pki) -> String {
    format!(
        r#"
[upstream]
url = "mqtts://127.0.0.1:{tls_port}"
client_id = "sg-tls-{port}"
keepalive = "5s"
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{key}"

[[upstream.route]]
filter = "{prefix}/#"
direction = "out"
qos = 1
remote_prefix = "site/"

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
        ca = ca_file.display(),
        cert = pki.client_cert.display(),
        key = pki.client_key.display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_reach_mosquitto_over_tls_with_a_client_certificate() {
    let s = Setup::new("");
    let pki = pki(s.dir.path());
    let (m, tls_port) = mosquitto_tls(s.dir.path(), &pki);
    s.write(&bridged_tls(&s, tls_port, &pki.ca, &pki));
    let up = Collector::start(m.addr(), "collector-tls-1", "site/#").await;
    let mut d = s.start();
    let topic = format!("site/{}/probe/n", s.prefix);
    assert!(
        up.wait_value(&topic, 5, T).await,
        "readings go upstream over TLS:\n{}\nmosquitto:\n{}",
        d.log_text(),
        m.log_text()
    );
    let status = format!("site/{}/status", s.prefix);
    assert!(
        up.wait_for(T, |m| m.topic == status && m.payload == "online")
            .await
            .is_some(),
        "online status over TLS"
    );
    assert!(d.stop().success());
    let (gaps, _) = gaps_and_duplicates(&up.values(&topic));
    assert!(gaps.is_empty(), "values missing upstream: {gaps:?}");
    let log = d.log_text();
    assert!(
        log.contains(&format!("upstream connected: 127.0.0.1:{tls_port}")),
        "{log}"
    );
    assert!(!log.contains(" ERROR "), "{log}");
    // mosquitto took the client certificate's CN as the user name.
    assert!(
        m.log_text().contains("sensorgate-test-client"),
        "{}",
        m.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_another_ca_is_refused() {
    let s = Setup::new("");
    let pki = pki(s.dir.path());
    let (m, tls_port) = mosquitto_tls(s.dir.path(), &pki);
    s.write(&bridged_tls(&s, tls_port, &pki.other_ca, &pki));
    let up = Collector::start(m.addr(), "collector-tls-2", "site/#").await;
    let mut d = s.start();
    let local = Sub::connect(s.addr(), "local-tls-2", &format!("{}/#", s.prefix)).await;

    // The refusal is logged, naming TLS and the certificate.
    let deadline = Instant::now() + T;
    let refused = |log: &str| {
        log.contains("TLS") && (log.contains("UnknownIssuer") || log.contains("certificate"))
    };
    while !refused(&d.log_text()) {
        assert!(
            Instant::now() < deadline,
            "no TLS failure in the log:\n{}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = d.log_text();
    let line = log.lines().find(|l| refused(l)).unwrap_or_default();
    eprintln!("the refusal, as logged: {line}");
    assert!(
        line.contains("upstream.ca_file"),
        "the refusal names the key to fix: {line}"
    );

    // The gateway keeps running: readings go on locally, they wait in the buffer, and
    // nothing reaches the upstream.
    let topic = format!("{}/probe/n", s.prefix);
    assert!(
        local
            .wait_for(T, |m| m.topic == topic
                && m.payload.contains("\"value\":10"))
            .await
            .is_some(),
        "local readings go on:\n{}",
        d.log_text()
    );
    assert!(sensorgate::broker::mqtt_ping(s.addr(), 4), "broker up");
    // It tries again (back-off from 1 s), and is refused again.
    let deadline = Instant::now() + T;
    while !d.log_text().contains("unreachable (2 tries): TLS") {
        assert!(
            Instant::now() < deadline,
            "no second try:\n{}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up.messages().is_empty(), "upstream got {:?}", up.messages());
    assert!(
        !d.log_text().contains("upstream connected"),
        "{}",
        d.log_text()
    );

    let status = d.stop();
    assert!(status.success(), "exit {status}:\n{}", d.log_text());
    assert!(up.messages().is_empty(), "upstream got {:?}", up.messages());
    let (ok, out, err) = sensorgate(&[
        "buffer",
        "stats",
        "--config",
        s.config().to_str().expect("utf8"),
    ]);
    assert!(ok, "{err}");
    assert!(!out.contains(": 0 message(s)"), "readings kept: {out}");
}
