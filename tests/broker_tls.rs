//! The broker's TLS listener (`listen_tls`) with a test CA made at test time (rcgen):
//! paho over TLS, a silent TCP connection that must not hold up anyone else's
//! handshake, and client certificates when client_ca_file is set.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};

use common::{free_port, paho, paho_get, paho_topics, Setup};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("CA key");
    let cert = p.self_signed(&key).expect("self-signed CA");
    (cert.pem(), Issuer::new(p, key))
}

fn leaf(
    cn: &str,
    sans: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'static, KeyPair>,
) -> (String, String) {
    let mut p = CertificateParams::new(sans).expect("leaf params");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.use_authority_key_identifier_extension = true;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("leaf key");
    let cert = p.signed_by(&key, issuer).expect("sign leaf");
    (cert.pem(), key.serialize_pem())
}

struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn pki(dir: &Path) -> Pki {
    let write = |name: &str, pem: &str| -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, pem).expect("write PEM");
        p
    };
    let (ca_pem, issuer) = ca("sensorgate broker test CA");
    let (server_cert, server_key) = leaf(
        "127.0.0.1",
        vec!["127.0.0.1".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
        &issuer,
    );
    let (client_cert, client_key) = leaf(
        "broker-test-client",
        vec![],
        ExtendedKeyUsagePurpose::ClientAuth,
        &issuer,
    );
    Pki {
        ca: write("ca.pem", &ca_pem),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server.key", &server_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client.key", &client_key),
    }
}

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
