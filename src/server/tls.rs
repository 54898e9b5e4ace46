//! STARTTLS: X.509 server certificates with rustls (ring provider). rustls has no TLS-PSK, so
//! the PSK mode of qemu/nbdkit/libnbd does not interoperate; certificates do.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
pub use tokio_rustls::TlsAcceptor;

/// What the server offers: TLS (with an acceptor) and whether plain sessions are refused.
#[derive(Clone, Default)]
pub struct TlsPolicy {
    pub acceptor: Option<TlsAcceptor>,
    pub required: bool,
}

/// Build an acceptor from PEM files: the certificate chain and its private key.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("certificate and key do not work together: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}
