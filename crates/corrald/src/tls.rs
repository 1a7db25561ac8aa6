//! TLS for the HTTPS API: the server's self-signed certificate (made on first start, kept in
//! CORRAL_DIR), the rustls server configuration, and certificate fingerprints.
//!
//! Clients authenticate with self-signed certificates, as LXD's do: the handshake asks for one
//! but takes any (after checking the client proves it holds the key); whether it is trusted is
//! the trust store's decision, made per request from its fingerprint.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key")]
    NoKey { path: PathBuf },
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid certificate or key: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("not a PEM or base64 DER X.509 certificate: {0}")]
    Parse(String),
}

/// A certificate and its private key, PEM, with the certificate's DER and fingerprint.
#[derive(Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
    pub fingerprint: String,
}

impl Identity {
    /// Loads `<dir>/<stem>.crt` and `.key`, making a new self-signed pair first if there is
    /// none (ECDSA P-384, as LXD's; the common name says whose it is).
    pub fn load_or_create(dir: &Path, stem: &str, common_name: &str) -> Result<Identity, TlsError> {
        let (crt, key) = (dir.join(format!("{stem}.crt")), dir.join(format!("{stem}.key")));
        if !crt.exists() || !key.exists() {
            let (cert_pem, key_pem) = self_signed(common_name)?;
            write_private(&key, key_pem.as_bytes())?;
            std::fs::write(&crt, cert_pem.as_bytes()).map_err(|source| TlsError::Write {
                path: crt.clone(),
                source,
            })?;
        }
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|source| TlsError::Read { path: p.into(), source });
        let (cert_pem, key_pem) = (read(&crt)?, read(&key)?);
        let cert_der = pem_to_der(&cert_pem).ok_or_else(|| TlsError::NoCertificate { path: crt.clone() })?;
        if !key_pem.contains("PRIVATE KEY-----") {
            return Err(TlsError::NoKey { path: key });
        }
        Ok(Identity {
            fingerprint: fingerprint(&cert_der),
            cert_pem,
            key_pem,
            cert_der,
        })
    }

    fn key_der(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        let der = pem_block(&self.key_pem, "PRIVATE KEY")
            .map(|d| PrivateKeyDer::Pkcs8(d.into()))
            .or_else(|| pem_block(&self.key_pem, "EC PRIVATE KEY").map(|d| PrivateKeyDer::Sec1(d.into())))
            .or_else(|| pem_block(&self.key_pem, "RSA PRIVATE KEY").map(|d| PrivateKeyDer::Pkcs1(d.into())));
        der.ok_or_else(|| TlsError::NoKey {
            path: PathBuf::from("(key)"),
        })
    }
}

/// A new self-signed certificate and key, PEM; valid ten years.
pub fn self_signed(common_name: &str) -> Result<(String, String), TlsError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)?;
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    let mut params = rcgen::CertificateParams::new(vec![host, "localhost".into()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Corral");
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    // From yesterday (clocks differ a little between hosts) for ten years.
    let from = chrono::Utc::now().date_naive() - chrono::Days::new(1);
    use chrono::Datelike;
    params.not_before = rcgen::date_time_ymd(from.year(), from.month() as u8, from.day() as u8);
    params.not_after = rcgen::date_time_ymd(from.year() + 10, from.month() as u8, from.day().min(28) as u8);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(data)
    };
    write().map_err(|source| TlsError::Write {
        path: path.into(),
        source,
    })
}

/// SHA-256 of a certificate's DER form, lowercase hex: the fingerprint LXD shows and stores.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02x}")).collect()
}

use corral_api::certificate::pem_block;
pub use corral_api::certificate::{der_to_pem, pem_to_der};

/// A certificate a client sent: PEM, or base64 of the DER as LXD's API carries it. Checked to be
/// an X.509 certificate that is valid now.
pub fn parse_certificate(text: &str) -> Result<ParsedCert, TlsError> {
    let text = text.trim();
    let der = if text.starts_with("-----BEGIN") {
        pem_to_der(text).ok_or_else(|| TlsError::Parse("no CERTIFICATE block in the PEM".into()))?
    } else {
        corral_api::certificate::base64_decode(text).ok_or_else(|| TlsError::Parse("neither PEM nor base64".into()))?
    };
    ParsedCert::from_der(der)
}

/// An X.509 certificate checked for parse errors and dates.
pub struct ParsedCert {
    pub der: Vec<u8>,
    pub common_name: String,
}

impl ParsedCert {
    pub fn from_der(der: Vec<u8>) -> Result<ParsedCert, TlsError> {
        let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| TlsError::Parse(e.to_string()))?;
        if !cert.validity().is_valid() {
            return Err(TlsError::Parse(format!(
                "the certificate is not valid now (valid from {} to {})",
                cert.validity().not_before,
                cert.validity().not_after
            )));
        }
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_string();
        Ok(ParsedCert { der, common_name })
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server side: TLS 1.3 (and 1.2, which older Go clients may still offer), this identity,
/// any client certificate whose key the client proves it holds.
pub fn server_config(id: &Identity) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(Arc::new(AnyClientCert { provider }))
        .with_single_cert(vec![CertificateDer::from(id.cert_der.clone())], id.key_der()?)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Takes any client certificate (or none): trust is decided per request, by fingerprint. The
/// handshake signature is still verified, so a client cannot present a certificate whose key it
/// does not hold.
#[derive(Debug)]
struct AnyClientCert {
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_made_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("corral-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = Identity::load_or_create(&dir, "server", "root@test").unwrap();
        let b = Identity::load_or_create(&dir, "server", "root@test").unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.fingerprint.len(), 64);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("server.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the private key is readable by root only");
        let parsed = parse_certificate(&a.cert_pem).unwrap();
        assert_eq!(parsed.common_name, "root@test");
        assert_eq!(
            parse_certificate(&corral_api::certificate::base64_encode(&a.cert_der))
                .unwrap()
                .der,
            a.cert_der
        );
        assert_eq!(pem_to_der(&der_to_pem(&a.cert_der)).unwrap(), a.cert_der);
        assert!(server_config(&a).is_ok());
        assert!(parse_certificate("garbage").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
