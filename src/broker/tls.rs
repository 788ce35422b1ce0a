//! TLS for the broker's `listen_tls`: rustls on the `ring` provider, the server's
//! certificate and key, and optionally a client CA whose certificates clients must show.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::config::BrokerConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file of `[broker]` (`key` is its key: cert_file, key_file, client_ca_file).
    #[error("broker.{key} {path}: {message}")]
    File {
        key: &'static str,
        path: String,
        message: String,
    },
    #[error("broker TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsError {
    /// The `[broker]` key to blame and the message without it (for config errors).
    pub fn key_and_message(&self) -> (&'static str, String) {
        match self {
            TlsError::File { path, message, key } => (key, format!("{path}: {message}")),
            TlsError::Rustls(e) => (
                "cert_file",
                format!("{e} (do cert_file and key_file belong together?)"),
            ),
        }
    }
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

/// The server configuration for `listen_tls` from cert_file, key_file and client_ca_file.
pub fn server_config(cfg: &BrokerConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs("cert_file", &cfg.cert_file)?;
    let key = read_key(&cfg.key_file)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if cfg.client_ca_file.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for cert in read_certs("client_ca_file", &cfg.client_ca_file)? {
            roots.add(cert).map_err(|e| TlsError::File {
                key: "client_ca_file",
                path: cfg.client_ca_file.clone(),
                message: e.to_string(),
            })?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| TlsError::File {
                key: "client_ca_file",
                path: cfg.client_ca_file.clone(),
                message: e.to_string(),
            })?;
        builder.with_client_cert_verifier(verifier)
    };
    let config = builder.with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}
