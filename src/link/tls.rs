//! Certificates of the QUIC link: mutual TLS between gateway tiers with the tier's own CA.
//! Loads the PEM files named in `[quic]` into quinn server and client configs (both sides
//! present a certificate; both check the other's against the CA), reads a peer's gateway id
//! from its certificate's common name, and issues certificates for `vigil certs` (and the
//! tests) with `rcgen`. Owns nothing else.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The ALPN protocol of the link; a peer speaking another is refused in the handshake.
pub const ALPN: &[u8] = b"vigil-link/1";
/// Transport keep-alive, below the idle timeout and below common UDP NAT timeouts (20–30 s).
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// A link silent this long is closed (both ends use the same value).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("cannot issue a certificate: {0}")]
    Issue(String),
}

impl From<crate::net::tls::Error> for Error {
    fn from(e: crate::net::tls::Error) -> Self {
        use crate::net::tls::Error as E;
        match e {
            E::Read { path, source } => Error::Read { path, source },
            E::Pem { path, reason } => Error::Pem { path, reason },
            E::Tls(t) => Error::Tls(t),
        }
    }
}

/// This gateway's identity in the tier: its certificate chain, key and the CA it trusts.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub roots: rustls::RootCertStore,
}

impl Identity {
    /// Reads `[quic] cert`, `key` and `ca` (PEM).
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<Identity, Error> {
        let (chain, key) = crate::net::tls::load_pem(cert, key)?;
        let roots = crate::net::tls::load_roots(ca)?;
        Ok(Identity { chain, key, roots })
    }
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    if let Ok(idle) = quinn::IdleTimeout::try_from(IDLE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    // A batch is one stream; a few in flight at a time is plenty.
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(32));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    // Batches carry pictures: let a stream and the connection run ahead.
    t.stream_receive_window(quinn::VarInt::from_u32(8 << 20));
    t.receive_window(quinn::VarInt::from_u32(32 << 20));
    t.send_window(32 << 20);
    Arc::new(t)
}

/// The hub's side: a certificate from the tier's CA is required of every lower gateway.
pub fn server_config(id: Identity) -> Result<quinn::ServerConfig, Error> {
    let provider = crate::net::tls::provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(id.roots), provider.clone())
        .build()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain, id.key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // No 0-RTT: early data is replayable, and a batch is only acknowledged after the hub
    // committed it anyway, so 0-RTT would buy nothing but risk.
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| Error::Tls(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(transport());
    Ok(cfg)
}

/// The lower gateway's side: presents its certificate, checks the hub's against the CA.
pub fn client_config(id: Identity) -> Result<quinn::ClientConfig, Error> {
    let mut tls = rustls::ClientConfig::builder_with_provider(crate::net::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(id.roots)
        .with_client_auth_cert(id.chain, id.key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.enable_early_data = false;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| Error::Tls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport());
    Ok(cfg)
}

/// The common name of a peer's leaf certificate: the gateway id it was issued for.
pub fn peer_common_name(conn: &quinn::Connection) -> Option<String> {
    let certs = conn.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let leaf = certs.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(cn)
}

/// Issues certificates in `dir`: the tier's CA (`ca.pem`, `ca.key`; made once, reused
/// after) and, for each gateway id, `<id>.pem` and `<id>.key` with the id as common name and
/// `sans` (DNS names or IP addresses the hub is reached by) as subject alternative names.
/// Answers the files written.
pub fn issue(dir: &Path, ids: &[String], sans: &[String]) -> Result<Vec<PathBuf>, Error> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Read { path, source }
    };
    let issue = |e: rcgen::Error| Error::Issue(e.to_string());
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let (ca_pem, ca_key_pem) = (dir.join("ca.pem"), dir.join("ca.key"));
    let mut written = Vec::new();
    let (ca_cert, ca_key) = if ca_pem.exists() && ca_key_pem.exists() {
        let key = KeyPair::from_pem(&std::fs::read_to_string(&ca_key_pem).map_err(io(&ca_key_pem))?).map_err(issue)?;
        let params = CertificateParams::from_ca_cert_pem(&std::fs::read_to_string(&ca_pem).map_err(io(&ca_pem))?)
            .map_err(issue)?;
        (params.self_signed(&key).map_err(issue)?, key)
    } else {
        let key = KeyPair::generate().map_err(issue)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(issue)?;
        params.distinguished_name.push(DnType::CommonName, "vigil tier CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_after = rcgen::date_time_ymd(2046, 1, 1);
        let cert = params.self_signed(&key).map_err(issue)?;
        write_private(&ca_key_pem, &key.serialize_pem())?;
        std::fs::write(&ca_pem, cert.pem()).map_err(io(&ca_pem))?;
        written.extend([ca_pem.clone(), ca_key_pem.clone()]);
        (cert, key)
    };
    for id in ids {
        let key = KeyPair::generate().map_err(issue)?;
        let mut params = CertificateParams::new(sans.to_vec()).map_err(issue)?;
        params.distinguished_name.push(DnType::CommonName, id.as_str());
        // Every gateway may be a hub to the tier below and a client of the tier above.
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let cert = params.signed_by(&key, &ca_cert, &ca_key).map_err(issue)?;
        let (pem, key_path) = (dir.join(format!("{id}.pem")), dir.join(format!("{id}.key")));
        std::fs::write(&pem, cert.pem()).map_err(io(&pem))?;
        write_private(&key_path, &key.serialize_pem())?;
        written.extend([pem, key_path]);
    }
    Ok(written)
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, pem: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| Error::Read { path: path.to_owned(), source };
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(io)?;
    f.write_all(pem.as_bytes()).map_err(io)
}
