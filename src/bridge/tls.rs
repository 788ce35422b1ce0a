//! TLS for the upstream connection: rustls on the `ring` provider (no OpenSSL, no
//! aws-lc), the CA from `ca_file` or the system's roots, an optional client certificate.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("upstream.{key} {path}: {message}")]
    File {
        key: &'static str,
        path: String,
        message: String,
    },
    #[error("no usable system root certificates; set upstream.ca_file")]
    NoRoots,
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

fn read_certs(key: &'static str, path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    crate::pem::certs(path).map_err(|message| TlsError::File {
        key,
        path: path.to_string(),
        message,
    })
}

fn read_key(path: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    crate::pem::key(path).map_err(|message| TlsError::File {
        key: "key_file",
        path: path.to_string(),
        message,
    })
}

/// The client configuration for `mqtts://`.
pub fn client_config(
    ca_file: &str,
    cert_file: &str,
    key_file: &str,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    if ca_file.is_empty() {
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(TlsError::NoRoots);
        }
    } else {
        for cert in read_certs("ca_file", ca_file)? {
            roots.add(cert).map_err(|e| TlsError::File {
                key: "ca_file",
                path: ca_file.to_string(),
                message: e.to_string(),
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match (cert_file.is_empty(), key_file.is_empty()) {
        (true, true) => builder.with_no_client_auth(),
        _ => builder
            .with_client_auth_cert(read_certs("cert_file", cert_file)?, read_key(key_file)?)?,
    };
    Ok(Arc::new(config))
}
