//! A test PKI made at test time (rcgen): a CA, a server certificate for 127.0.0.1, a
//! client certificate, and a CA that signed nothing here.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A CA: its certificate (PEM) and what signs with it.
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

/// A leaf certificate and its key (PEM), signed by `issuer`.
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

/// The files of a test PKI.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed nothing here.
    pub other_ca: PathBuf,
}

/// Write the PKI under `dir/pki`.
pub fn pki(dir: &Path) -> Pki {
    let dir = dir.join("pki");
    std::fs::create_dir_all(&dir).expect("pki dir");
    let write = |name: &str, pem: &str| -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, pem).expect("write PEM");
        p
    };
    let (ca_pem, issuer) = ca("sensorgate test CA");
    let (server_cert, server_key) = leaf(
        "127.0.0.1",
        vec!["127.0.0.1".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
        &issuer,
    );
    let (client_cert, client_key) = leaf(
        "sensorgate-test-client",
        vec![],
        ExtendedKeyUsagePurpose::ClientAuth,
        &issuer,
    );
    let (other_pem, _) = ca("some other CA");
    Pki {
        ca: write("ca.pem", &ca_pem),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server.key", &server_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client.key", &client_key),
        other_ca: write("other-ca.pem", &other_pem),
    }
}
