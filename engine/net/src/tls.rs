//! TLS identities and trust.
//!
//! Owns: making, persisting and loading the server's certificate and key;
//! fingerprints (SHA-256 of the DER certificate, lowercase hex, the form browsers'
//! `serverCertificateHashes` also use); and the rustls configurations for quinn.
//! A client trusts a server either by pinning its fingerprint (the self-signed
//! default: no CA involved, nothing else accepted) or by CA roots.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use callsync_core::wire::ALPN;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::NetError;
use crate::web::{CertificateResolver, WEBTRANSPORT_ALPN};

/// How long a connection may stay silent before it is dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often an idle client pings, well inside [`IDLE_TIMEOUT`].
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Bidirectional streams a client may have open at once. The protocol uses one
/// for sync (a browser's WebTransport session one more, its HTTP/3 CONNECT
/// request) and up to two for recordings' uploads and downloads; the slack
/// covers a reconnect racing the old stream's close.
pub const MAX_STREAMS: u32 = 5;
/// Unidirectional streams a client may open: HTTP/3's control stream and QPACK's
/// two, which a browser opens. A native client has no use for them; the server
/// stops any it opens.
pub const MAX_UNI_STREAMS: u32 = 3;
/// Bytes a client may have in flight on one connection, all streams together,
/// once it has authenticated (quinn's default is unlimited; a frame is at most
/// 8 MiB). The server raises a connection's window to this after its `join`.
pub const CONNECTION_RECEIVE_WINDOW: u32 = 8 * 1024 * 1024;
/// Bytes the server keeps unacknowledged for one connection (quinn's default is
/// about 10 MB): what a device that stops reading holds of the server's memory in
/// QUIC's buffers, beside its queue (`MAX_QUEUED_BYTES_PER_CONN`).
pub const SEND_WINDOW: u64 = 4 * 1024 * 1024;
/// Bytes of unread datagrams the server keeps for a connection (quinn's
/// default is about 1.25 MB per connection, for datagrams nobody reads).
pub const DATAGRAM_BUFFER: usize = 2 * 1024;
/// The same before the peer has authenticated: room for a `login` or `join`
/// (and a browser's HTTP/3 handshake), so a connection nobody has vouched for
/// holds at most this much of the server's memory in QUIC buffers.
pub const PRE_LOGIN_RECEIVE_WINDOW: u32 = 64 * 1024;

const CERT_FILE: &str = "server-cert.der";
const KEY_FILE: &str = "server-key.der";

fn tls(e: impl std::fmt::Display) -> NetError {
    NetError::Tls(e.to_string())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The SHA-256 fingerprint of a DER certificate, in lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A server's certificate and private key.
#[derive(Debug)]
pub struct Identity {
    /// The certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// A new self-signed ECDSA P-256 certificate for `names` (DNS names or IP
    /// addresses).
    pub fn self_signed(names: Vec<String>) -> Result<Self, NetError> {
        let certified = rcgen::generate_simple_self_signed(names).map_err(tls)?;
        Ok(Self {
            chain: vec![certified.cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                certified.signing_key.serialize_der(),
            )),
        })
    }

    /// The identity saved in `dir`, or a new self-signed one saved there (key file
    /// readable by the owner only). Returns whether it was created.
    pub fn load_or_create(dir: &Path) -> Result<(Self, bool), NetError> {
        let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        if cert_path.exists() && key_path.exists() {
            // A key file made by an older release, or copied in, may be readable
            // by others: tighten it on every start, not only on creation.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                if let Err(e) = fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)) {
                    // A key on a read-only mount, say: serve anyway, and say so.
                    tracing::warn!(path = %key_path.display(), error = %e, "could not make the key file private");
                }
            }
            let cert = CertificateDer::from(fs::read(&cert_path)?);
            let key = PrivateKeyDer::try_from(fs::read(&key_path)?).map_err(tls)?;
            return Ok((
                Self {
                    chain: vec![cert],
                    key,
                },
                false,
            ));
        }
        let identity = Self::self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        write_private(&key_path, identity.key.secret_der())?;
        write_private(&cert_path, identity.chain[0].as_ref())?;
        Ok((identity, true))
    }

    /// A certificate chain and key from PEM files (e.g. from a public CA).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, NetError> {
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(tls)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(tls)?;
        if chain.is_empty() {
            return Err(NetError::Tls(format!(
                "no certificate in {}",
                cert.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(tls)?;
        Ok(Self { chain, key })
    }

    /// The leaf certificate's fingerprint.
    pub fn fingerprint(&self) -> String {
        self.chain
            .first()
            .map_or_else(String::new, |c| fingerprint(c))
    }
}

/// Writes a file atomically (temporary file, fsync, rename) with mode 0600.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), NetError> {
    let tmp = path.with_extension("tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    Ok(())
}

/// The server's quinn configuration: TLS 1.3, certificates chosen per handshake
/// by `resolver` (native clients and browsers may get different ones), both ALPNs
/// (the native protocol's and HTTP/3's for WebTransport), and the stream limits.
pub fn server_config(resolver: Arc<CertificateResolver>) -> Result<quinn::ServerConfig, NetError> {
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    crypto.alpn_protocols = vec![ALPN.to_vec(), WEBTRANSPORT_ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(crypto).map_err(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(MAX_STREAMS.into())
        .max_concurrent_uni_streams(MAX_UNI_STREAMS.into())
        .receive_window(PRE_LOGIN_RECEIVE_WINDOW.into())
        .send_window(SEND_WINDOW)
        // The protocol sends no datagrams; a browser's WebTransport session
        // needs them offered, so the buffer holds one small datagram at most.
        .datagram_receive_buffer_size(Some(DATAGRAM_BUFFER))
        .max_idle_timeout(Some(IDLE_TIMEOUT.try_into().map_err(tls)?));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// The page's HTTPS configuration when the server was given a certificate: the
/// same identity, TLS 1.2 and 1.3, HTTP/1.1.
pub fn https_config(identity: &Identity) -> Result<Arc<rustls::ServerConfig>, NetError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls)?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(tls)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The crypto provider every configuration uses (ring).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    provider()
}

/// How a client decides to trust the server.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Exactly the certificate with this SHA-256 fingerprint (hex).
    Fingerprint(String),
    /// Any certificate for the server's name issued by one of these roots.
    Roots(Vec<CertificateDer<'static>>),
}

impl Trust {
    /// Roots from a PEM file.
    pub fn roots_from_pem(path: &Path) -> Result<Self, NetError> {
        let roots = CertificateDer::pem_file_iter(path)
            .map_err(tls)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(tls)?;
        Ok(Self::Roots(roots))
    }
}

/// The quinn client configuration for `trust`.
pub fn client_config(trust: &Trust) -> Result<quinn::ClientConfig, NetError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?;
    let mut crypto = match trust {
        Trust::Fingerprint(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCertificate {
                fingerprint: fp.to_ascii_lowercase(),
                provider: provider(),
            }))
            .with_no_client_auth(),
        Trust::Roots(roots) => {
            let mut store = rustls::RootCertStore::empty();
            for root in roots {
                store.add(root.clone()).map_err(tls)?;
            }
            builder.with_root_certificates(store).with_no_client_auth()
        }
    };
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(crypto).map_err(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(IDLE_TIMEOUT.try_into().map_err(tls)?))
        .keep_alive_interval(Some(KEEP_ALIVE));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Accepts exactly one certificate, by fingerprint, and checks that the server
/// holds its key (the handshake signature).
#[derive(Debug)]
struct PinnedCertificate {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if fingerprint(end_entity) == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
