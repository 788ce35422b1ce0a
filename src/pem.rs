//! PEM files for TLS (the broker's listener and the upstream client): certificates and a
//! private key, with messages that say what is wrong with the file.

use std::io::BufReader;
use std::path::Path;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Every certificate in the PEM file `path`; at least one.
pub fn certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let file = std::fs::File::open(Path::new(path)).map_err(|e| e.to_string())?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(certs)
}

/// The (first) private key in the PEM file `path`.
pub fn key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    let file = std::fs::File::open(Path::new(path)).map_err(|e| e.to_string())?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "no PEM private key in it".into())
}
