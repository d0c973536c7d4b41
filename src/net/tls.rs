//! Built-in TLS for the API and dashboard (`[http] tls_cert` / `tls_key`, PEM): a rustls
//! server configuration (TLS 1.2 and 1.3, ring, HTTP/1.1 by ALPN) loaded once at start. The
//! handshake runs inside the HTTP accept loop under the header deadline, so a client that
//! opens a connection and never speaks holds its place no longer than one that sends no
//! headers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("TLS: {0}")]
    Tls(String),
}

/// A certificate chain and its private key from PEM files (the API's TLS and the QUIC link's
/// identity both read theirs so).
pub fn load_pem(cert: &Path, key: &Path) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
    let read = |p: &Path| std::fs::read(p).map_err(|source| Error::Read { path: p.to_owned(), source });
    let pem = |p: &Path, reason: String| Error::Pem { path: p.to_owned(), reason };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| pem(cert, format!("not a PEM certificate: {e}")))?;
    if chain.is_empty() {
        return Err(pem(cert, "holds no certificate".into()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| pem(key, format!("not a PEM private key: {e}")))?;
    Ok((chain, key))
}

/// The CA certificates in a PEM file, as roots to check a peer's certificate against (the
/// QUIC link's tier CA, an external MQTT broker's `mqtt.ca`).
pub fn load_roots(ca: &Path) -> Result<rustls::RootCertStore, Error> {
    let bytes = std::fs::read(ca).map_err(|source| Error::Read { path: ca.to_owned(), source })?;
    let pem = |reason: String| Error::Pem { path: ca.to_owned(), reason };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&bytes) {
        let c = c.map_err(|e| pem(format!("not a PEM certificate: {e}")))?;
        roots.add(c).map_err(|e| pem(format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(pem("holds no CA certificate".into()));
    }
    Ok(roots)
}

/// ring, the one TLS provider vigil builds its configurations with (the API's TLS, the QUIC
/// link, mqtts://).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server configuration for a certificate chain and its key (PEM files).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, Error> {
    let (chain, key) = load_pem(cert, key)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
