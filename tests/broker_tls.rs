//! The broker's TLS listener (`listen_tls`) with a test CA made at test time (rcgen):
//! paho over TLS, a silent TCP connection that must not hold up anyone else's
//! handshake, and client certificates when client_ca_file is set.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};

use common::pki::{pki, Pki};
use common::{free_port, paho, paho_get, paho_topics, Setup};

/// A setup with a TLS listener; returns it and the TLS address.
fn tls_setup(client_ca: bool) -> (Setup, Pki, SocketAddr) {
    let s = Setup::new("");
    let pki = pki(s.dir.path());
    let port = free_port();
    let mut body = format!(
        "listen_tls = \"127.0.0.1:{port}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        pki.server_cert.display(),
        pki.server_key.display()
    );
    if client_ca {
        body.push_str(&format!("client_ca_file = \"{}\"\n", pki.ca.display()));
    }
    s.write(&body);
    (s, pki, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Whether the server has closed `s` (EOF or reset) — without waiting for it.
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).expect("nonblocking");
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

#[test]
fn a_silent_connection_does_not_hold_up_another_clients_handshake() {
    let (s, pki, tls) = tls_setup(false);
    let _d = s.start();
    // Two clients that connect and never say a word (no ClientHello).
    let mut silent: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(tls).expect("connect"))
        .collect();
    let ca = pki.ca.display().to_string();
    for v5 in [false, true] {
        let mut args = vec![
            "--cafile", &ca, "--sub", "tls/x", "--pub", "tls/x", "hello", "--count", "1",
        ];
        if v5 {
            args.push("--v5");
        }
        let lines = paho(tls, &args);
        assert_eq!(
            paho_get(&lines, "connack"),
            Some(&serde_json::json!(0)),
            "{lines:?}"
        );
        assert_eq!(paho_topics(&lines), vec!["tls/x"], "{lines:?}");
    }
    // Still open: the others were served while these were waiting, not after the
    // handshake timeout freed the listener.
    for s in &mut silent {
        assert!(
            !closed_by_server(s),
            "the silent connection was closed first"
        );
    }
    // The plain listener works beside it.
    let lines = paho(s.addr(), &["--wait", "0"]);
    assert_eq!(paho_get(&lines, "connack"), Some(&serde_json::json!(0)));
}

#[test]
fn client_ca_file_requires_a_client_certificate() {
    let (s, pki, tls) = tls_setup(true);
    let _d = s.start();
    let ca = pki.ca.display().to_string();
    let lines = paho(tls, &["--cafile", &ca, "--wait", "0"]);
    assert_eq!(paho_get(&lines, "connack"), None, "{lines:?}");
    let (cert, key) = (
        pki.client_cert.display().to_string(),
        pki.client_key.display().to_string(),
    );
    let lines = paho(
        tls,
        &[
            "--cafile", &ca, "--cert", &cert, "--key", &key, "--wait", "0",
        ],
    );
    assert_eq!(
        paho_get(&lines, "connack"),
        Some(&serde_json::json!(0)),
        "{lines:?}"
    );
}

#[test]
fn check_names_the_key_and_file_of_a_missing_certificate() {
    let (s, pki, _) = tls_setup(false);
    std::fs::remove_file(&pki.server_cert).expect("remove");
    let config = s.config().display().to_string();
    let (ok, _out, err) = common::sensorgate(&["check", "--config", &config]);
    assert!(!ok);
    assert!(err.contains("broker.cert_file"), "{err}");
    assert!(err.contains("server.pem"), "{err}");
}

/// A TLS client over the connect rate still completes its handshake and is told why
/// it is refused (CONNACK 3), instead of seeing the connection dropped.
#[test]
fn a_tls_client_over_the_connect_rate_gets_a_connack() {
    let (s, pki, tls) = tls_setup(false);
    let _d = s.start();
    // Keep 127.0.0.1's tokens used up with connections that go away at once.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                drop(TcpStream::connect(tls));
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    };
    let ca = pki.ca.display().to_string();
    let mut codes = Vec::new();
    for _ in 0..3 {
        let lines = paho(tls, &["--cafile", &ca, "--wait", "0"]);
        codes.push(paho_get(&lines, "connack").cloned());
        if codes.last() == Some(&Some(serde_json::json!(3))) {
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    hammer.join().expect("hammer");
    assert_eq!(codes.last(), Some(&Some(serde_json::json!(3))), "{codes:?}");
    assert!(codes.iter().all(Option::is_some), "a bare close: {codes:?}");
}
