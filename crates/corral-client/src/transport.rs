//! Where a client's connections go: corrald's unix socket, or its HTTPS API with a client
//! certificate and the server's certificate pinned (as `lxc` pins it in `servercerts/`).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use sha2::{Digest, Sha256};

/// How long connecting to a remote may take before it is reported unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection to corrald.
pub enum Stream {
    Unix(UnixStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stream::Unix(s) => write!(f, "Unix({s:?})"),
            Stream::Tls(s) => write!(f, "Tls({:?})", s.sock),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tls(s) => match s.read(buf) {
                // A peer closing without close_notify is an end of stream for HTTP's purposes.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                r => r,
            },
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

impl Stream {
    /// Sets the underlying socket's read timeout.
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tls(s) => s.sock.set_read_timeout(t),
        }
    }

    /// A second handle on the same connection, for writing while another thread reads. Only a
    /// unix socket has one; a TLS session cannot be shared that way.
    pub fn try_clone(&self) -> io::Result<Stream> {
        match self {
            Stream::Unix(s) => s.try_clone().map(Stream::Unix),
            Stream::Tls(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "interactive streams over HTTPS are not supported yet: run the command on the server's host",
            )),
        }
    }
}

/// SHA-256 of a certificate's DER, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02x}")).collect()
}

/// A client certificate and key, PEM.
#[derive(Clone)]
pub struct ClientIdentity {
    pub cert_pem: String,
    pub key_pem: String,
}

/// How the server's certificate is checked.
#[derive(Clone)]
pub enum ServerTrust {
    /// It must be exactly this certificate (DER).
    Pinned(Vec<u8>),
    /// Any certificate is taken and recorded here, for a first contact whose fingerprint the
    /// caller then checks (against a token, or by asking the user) before sending anything.
    Record(Arc<Mutex<Option<Vec<u8>>>>),
}

/// An HTTPS endpoint: `host:port` and the TLS set-up.
#[derive(Clone)]
pub struct Remote {
    pub addr: String,
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({})", self.addr)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("no PEM certificate in the client certificate file")]
    NoCertificate,
    #[error("no PEM private key in the client key file")]
    NoKey,
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

use corral_api::certificate::pem_block;
pub use corral_api::certificate::pem_to_der;

impl Remote {
    /// `addr` is `host:port` (a URL's `https://` and trailing `/` are dropped).
    pub fn new(addr: &str, identity: Option<&ClientIdentity>, trust: ServerTrust) -> Result<Remote, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerCert { trust, provider }));
        let config = match identity {
            Some(id) => {
                let cert = pem_to_der(&id.cert_pem).ok_or(TlsSetupError::NoCertificate)?;
                let key = pem_block(&id.key_pem, "PRIVATE KEY")
                    .map(|d| PrivateKeyDer::Pkcs8(d.into()))
                    .or_else(|| pem_block(&id.key_pem, "EC PRIVATE KEY").map(|d| PrivateKeyDer::Sec1(d.into())))
                    .or_else(|| pem_block(&id.key_pem, "RSA PRIVATE KEY").map(|d| PrivateKeyDer::Pkcs1(d.into())))
                    .ok_or(TlsSetupError::NoKey)?;
                builder.with_client_auth_cert(vec![CertificateDer::from(cert)], key)?
            }
            None => builder.with_no_client_auth(),
        };
        let addr = addr
            .trim()
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .to_string();
        Ok(Remote {
            addr,
            config: Arc::new(config),
        })
    }

    pub fn connect(&self) -> io::Result<Stream> {
        use std::net::ToSocketAddrs;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the address resolves to nothing");
        let mut tcp = None;
        for a in self.addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let tcp = tcp.ok_or(last)?;
        let _ = tcp.set_nodelay(true);
        // The name is not checked (the certificate is pinned), but SNI wants one.
        let host = self.addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(&self.addr);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .unwrap_or_else(|_| ServerName::try_from("corral").expect("a valid name"));
        let conn = ClientConnection::new(self.config.clone(), name).map_err(io::Error::other)?;
        let mut s = StreamOwned::new(conn, tcp);
        // Complete the handshake now, so that a refused certificate shows here.
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock)?;
        }
        Ok(Stream::Tls(Box::new(s)))
    }
}

/// Where a [`crate::Client`] connects.
#[derive(Clone, Debug)]
pub enum Endpoint {
    Unix(PathBuf),
    Https(Remote),
}

#[derive(Debug)]
struct ServerCert {
    trust: ServerTrust,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for ServerTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerTrust::Pinned(d) => write!(f, "Pinned({})", fingerprint(d)),
            ServerTrust::Record(_) => write!(f, "Record"),
        }
    }
}

impl ServerCertVerifier for ServerCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.trust {
            ServerTrust::Pinned(der) if der.as_slice() == end_entity.as_ref() => Ok(ServerCertVerified::assertion()),
            ServerTrust::Pinned(der) => Err(rustls::Error::General(format!(
                "the server's certificate changed (fingerprint {}, expected {}): if that is expected, remove and add the remote again",
                fingerprint(end_entity.as_ref()),
                fingerprint(der)
            ))),
            ServerTrust::Record(slot) => {
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(end_entity.as_ref().to_vec());
                Ok(ServerCertVerified::assertion())
            }
        }
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
