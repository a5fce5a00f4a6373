//! The browser's side of the server's TLS: which certificate a handshake gets,
//! chosen by ALPN, and the short-lived development certificate browsers accept by
//! hash.
//!
//! Owns: the certificate resolver that serves native clients (ALPN
//! [`callsync_core::wire::ALPN`]) the long-lived identity they pin, and
//! WebTransport (ALPN [`WEBTRANSPORT_ALPN`], HTTP/3) either the same identity (a
//! CA-issued `--cert/--key`) or a rotating self-signed one; making that one
//! (ECDSA P-256, valid for less than [`MAX_WEB_VALIDITY`], as Chromium's
//! `serverCertificateHashes` demands), replacing it before it expires, and the
//! hashes a page passes to `new WebTransport(url, { serverCertificateHashes })`.
//! Why two certificates: a phone pins the long-lived certificate's fingerprint,
//! and a browser refuses a hashed certificate valid for more than 14 days; one
//! rotating certificate for both would break every phone's pin each rotation.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::NetError;
use crate::tls::{Identity, fingerprint};

/// HTTP/3's ALPN, which WebTransport runs over.
pub const WEBTRANSPORT_ALPN: &[u8] = b"h3";

/// Chromium accepts a certificate by hash only if it is valid for at most 14
/// days; ours are valid for 13 (from an hour before they are made, for clocks a
/// little behind).
pub const MAX_WEB_VALIDITY: Duration = Duration::from_secs(14 * 24 * 3600);
const WEB_VALIDITY: Duration = Duration::from_secs(13 * 24 * 3600);
const BACKDATE: Duration = Duration::from_secs(3600);
/// A development certificate is replaced once less than this is left, so a page
/// that fetched its hash a while ago still connects for days.
pub const ROTATE_BEFORE_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// One self-signed development certificate.
#[derive(Debug)]
struct DevCertificate {
    key: Arc<CertifiedKey>,
    hash: String,
    not_after: SystemTime,
}

impl DevCertificate {
    fn make(
        names: &[String],
        now: SystemTime,
        provider: &CryptoProvider,
    ) -> Result<Self, NetError> {
        let tls = |e: &dyn std::fmt::Display| NetError::Tls(e.to_string());
        let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(|e| tls(&e))?;
        let not_before = now.checked_sub(BACKDATE).unwrap_or(now);
        let not_after = not_before + WEB_VALIDITY;
        params.not_before = time::OffsetDateTime::from(not_before);
        params.not_after = time::OffsetDateTime::from(not_after);
        let key_pair =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| tls(&e))?;
        let cert = params.self_signed(&key_pair).map_err(|e| tls(&e))?;
        let der = cert.der().clone();
        let hash = fingerprint(&der);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
        let key = CertifiedKey::from_der(vec![der], key, provider).map_err(|e| tls(&e))?;
        Ok(Self {
            key: Arc::new(key),
            hash,
            not_after,
        })
    }
}

/// The rotating development certificates: the one served, and the one before it
/// (whose hash a page loaded just before a rotation may still hold; it is no
/// longer served, so listing it only spares that page a failed attempt's wait).
#[derive(Debug)]
struct Rotation {
    names: Vec<String>,
    current: DevCertificate,
    previous_hash: Option<String>,
}

#[derive(Debug)]
enum WebIdentity {
    /// The same certificate as native clients get (CA-issued: browsers check it
    /// the ordinary way, with no hashes).
    Shared,
    /// Self-signed, short-lived, rotated.
    Rotating(RwLock<Rotation>),
}

/// Chooses each handshake's certificate by ALPN; see the module's documentation.
#[derive(Debug)]
pub struct CertificateResolver {
    native: Arc<CertifiedKey>,
    web: WebIdentity,
    provider: Arc<CryptoProvider>,
}

impl CertificateResolver {
    /// Native clients and browsers get the same `identity` (a CA-issued
    /// certificate given with `--cert/--key`).
    pub fn shared(identity: &Identity, provider: Arc<CryptoProvider>) -> Result<Self, NetError> {
        Ok(Self {
            native: certified(identity, &provider)?,
            web: WebIdentity::Shared,
            provider,
        })
    }

    /// Native clients get `identity`; browsers a development certificate for
    /// `names` made now (at `now`), replaced by [`Self::rotate_if_due`].
    pub fn with_dev_certificate(
        identity: &Identity,
        names: Vec<String>,
        now: SystemTime,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, NetError> {
        let current = DevCertificate::make(&names, now, &provider)?;
        Ok(Self {
            native: certified(identity, &provider)?,
            web: WebIdentity::Rotating(RwLock::new(Rotation {
                names,
                current,
                previous_hash: None,
            })),
            provider,
        })
    }

    /// The SHA-256 hashes (lowercase hex) a page passes as
    /// `serverCertificateHashes`, newest first; empty when browsers check the
    /// certificate the ordinary way.
    pub fn certificate_hashes(&self) -> Vec<String> {
        match &self.web {
            WebIdentity::Shared => Vec::new(),
            WebIdentity::Rotating(rotation) => {
                let rotation = rotation.read().unwrap_or_else(|e| e.into_inner());
                std::iter::once(rotation.current.hash.clone())
                    .chain(rotation.previous_hash.clone())
                    .collect()
            }
        }
    }

    /// When the served development certificate expires (`None` for a shared one).
    pub fn web_expiry(&self) -> Option<SystemTime> {
        match &self.web {
            WebIdentity::Shared => None,
            WebIdentity::Rotating(rotation) => Some(
                rotation
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .current
                    .not_after,
            ),
        }
    }

    /// Replaces the development certificate when less than
    /// [`ROTATE_BEFORE_EXPIRY`] of it is left at `now`. Returns whether it did.
    /// The new key is made before the lock is taken, so handshakes never wait on it.
    pub fn rotate_if_due(&self, now: SystemTime) -> Result<bool, NetError> {
        let WebIdentity::Rotating(rotation) = &self.web else {
            return Ok(false);
        };
        let (due, names) = {
            let rotation = rotation.read().unwrap_or_else(|e| e.into_inner());
            let left = rotation
                .current
                .not_after
                .duration_since(now)
                .unwrap_or_default();
            (left < ROTATE_BEFORE_EXPIRY, rotation.names.clone())
        };
        if !due {
            return Ok(false);
        }
        let fresh = DevCertificate::make(&names, now, &self.provider)?;
        let mut rotation = rotation.write().unwrap_or_else(|e| e.into_inner());
        let old = std::mem::replace(&mut rotation.current, fresh);
        rotation.previous_hash = Some(old.hash);
        tracing::info!(hash = %rotation.current.hash, "rotated the browsers' development certificate");
        Ok(true)
    }
}

fn certified(
    identity: &Identity,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, NetError> {
    CertifiedKey::from_der(identity.chain.clone(), identity.key.clone_key(), provider)
        .map(Arc::new)
        .map_err(|e| NetError::Tls(e.to_string()))
}

/// Whether a handshake offers WebTransport's ALPN and not the native one.
fn wants_web(hello: &ClientHello<'_>) -> bool {
    let Some(offered) = hello.alpn() else {
        return false;
    };
    let mut web = false;
    for protocol in offered {
        if protocol == callsync_core::wire::ALPN {
            return false;
        }
        web |= protocol == WEBTRANSPORT_ALPN;
    }
    web
}

impl ResolvesServerCert for CertificateResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match &self.web {
            WebIdentity::Rotating(rotation) if wants_web(&hello) => Some(
                rotation
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .current
                    .key
                    .clone(),
            ),
            _ => Some(self.native.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver(now: SystemTime) -> CertificateResolver {
        let identity = Identity::self_signed(vec!["localhost".to_owned()]).unwrap();
        CertificateResolver::with_dev_certificate(
            &identity,
            vec!["localhost".to_owned()],
            now,
            crate::tls::crypto_provider(),
        )
        .unwrap()
    }

    #[test]
    fn the_development_certificate_is_valid_for_less_than_fourteen_days() {
        let now = SystemTime::now();
        let resolver = resolver(now);
        let expiry = resolver.web_expiry().unwrap();
        let left = expiry.duration_since(now).unwrap();
        assert!(left <= MAX_WEB_VALIDITY - BACKDATE, "{left:?}");
        assert!(left > ROTATE_BEFORE_EXPIRY);
    }

    #[test]
    fn it_rotates_once_a_week_is_left_and_lists_the_previous_hash() {
        let now = SystemTime::now();
        let resolver = resolver(now);
        let first = resolver.certificate_hashes();
        assert_eq!(first.len(), 1);
        assert!(!resolver.rotate_if_due(now).unwrap());
        assert!(
            !resolver
                .rotate_if_due(now + Duration::from_secs(5 * 24 * 3600))
                .unwrap()
        );
        let later = now + Duration::from_secs(7 * 24 * 3600);
        assert!(resolver.rotate_if_due(later).unwrap());
        let second = resolver.certificate_hashes();
        assert_eq!(second.len(), 2);
        assert_ne!(second[0], first[0]);
        assert_eq!(second[1], first[0]);
        assert!(resolver.web_expiry().unwrap() > later + ROTATE_BEFORE_EXPIRY);
    }

    #[test]
    fn a_shared_certificate_hands_out_no_hashes_and_never_rotates() {
        let identity = Identity::self_signed(vec!["localhost".to_owned()]).unwrap();
        let resolver =
            CertificateResolver::shared(&identity, crate::tls::crypto_provider()).unwrap();
        assert!(resolver.certificate_hashes().is_empty());
        assert!(resolver.web_expiry().is_none());
        assert!(
            !resolver
                .rotate_if_due(SystemTime::now() + MAX_WEB_VALIDITY)
                .unwrap()
        );
    }
}
