//! STARTTLS: X.509 server certificates with rustls (ring provider). rustls has no TLS-PSK, so
//! the PSK mode of qemu/nbdkit/libnbd does not interoperate; certificates do.
//!
//! With a CA bundle (`sspd --tls-ca`) the server also asks for a client certificate. Sending
//! one is optional, but one that is sent must chain to the bundle or the TLS handshake fails.
//! A verified certificate's subject common names and DNS names become the session's
//! [`TlsIdentity`], which LU maps of the form `tls:NAME` match.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use crate::access::TlsIdentity;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
pub use tokio_rustls::TlsAcceptor;

/// What the server offers: TLS (with an acceptor) and whether plain sessions are refused.
/// The acceptor can be rebuilt from its files while the server runs ([`TlsPolicy::reload`]);
/// sessions already past their TLS handshake keep the certificate they got.
#[derive(Default)]
pub struct TlsPolicy {
    acceptor: RwLock<Option<TlsAcceptor>>,
    pub required: bool,
    files: Option<TlsFiles>,
}

/// The PEM files an acceptor is built from.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

impl TlsPolicy {
    /// TLS from these files; `required` refuses plain sessions.
    pub fn from_files(files: TlsFiles, required: bool) -> Result<TlsPolicy, String> {
        let a = acceptor(&files.cert, &files.key, files.ca.as_deref())?;
        Ok(TlsPolicy {
            acceptor: RwLock::new(Some(a)),
            required,
            files: Some(files),
        })
    }

    /// The acceptor for a new TLS handshake, if TLS is offered.
    pub fn acceptor(&self) -> Option<TlsAcceptor> {
        self.acceptor
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn available(&self) -> bool {
        self.acceptor().is_some()
    }

    /// Load the certificate, key and CA bundle again from the same paths: new handshakes use
    /// them. When they do not load (or do not fit together) the error is returned and the
    /// acceptor in use is kept. `Ok(false)` when TLS is not configured.
    pub fn reload(&self) -> Result<bool, String> {
        let Some(f) = &self.files else {
            return Ok(false);
        };
        let a = acceptor(&f.cert, &f.key, f.ca.as_deref())?;
        *self.acceptor.write().unwrap_or_else(|p| p.into_inner()) = Some(a);
        Ok(true)
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", path.display()));
    }
    Ok(certs)
}

/// Build an acceptor from PEM files: the certificate chain and its private key, and optionally
/// a CA bundle that client certificates are verified against.
pub fn acceptor(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<TlsAcceptor, String> {
    let certs = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in load_certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| format!("{}: bad CA certificate: {e}", ca.display()))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    // A client without a certificate still gets a session, with no identity.
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not work together: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// The identity of a TLS session: the names of the client's certificate, which the server's
/// verifier has checked (rustls reports peer certificates only once they are verified). `None`
/// without a client certificate.
pub fn client_identity(conn: &rustls::ServerConnection) -> Option<TlsIdentity> {
    let leaf = conn.peer_certificates()?.first()?;
    match identity_of(leaf) {
        Ok(id) => Some(id),
        Err(e) => {
            // Verified by webpki but not parsed here: no identity rather than a guess.
            tracing::warn!("client certificate: {e}");
            None
        }
    }
}

/// The subject common names and DNS subject-alternative names of a DER certificate.
pub fn identity_of(der: &[u8]) -> Result<TlsIdentity, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let common_names = cert
        .subject()
        .iter_common_name()
        .filter_map(|a| a.as_str().ok())
        .map(str::to_owned)
        .collect();
    let dns_names = match cert.subject_alternative_name().map_err(|e| e.to_string())? {
        Some(san) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some((*d).to_owned()),
                _ => None,
            })
            .collect(),
        None => Vec::new(),
    };
    Ok(TlsIdentity {
        common_names,
        dns_names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_holds_common_name_and_dns_names() {
        use rcgen::{CertificateParams, DnType, KeyPair, SanType};
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["Host1.example".to_string()]).unwrap();
        p.subject_alt_names
            .push(SanType::IpAddress("10.0.0.1".parse().unwrap()));
        p.distinguished_name.push(DnType::CommonName, "host1");
        let cert = p.self_signed(&key).unwrap();
        let id = identity_of(cert.der()).unwrap();
        assert_eq!(id.common_names, vec!["host1"]);
        assert_eq!(id.dns_names, vec!["Host1.example"]);
        assert!(id.is("host1") && id.is("host1.example") && !id.is("Host1"));
        assert!(!id.is("10.0.0.1"));
        assert!(identity_of(b"not a certificate").is_err());
    }
}
