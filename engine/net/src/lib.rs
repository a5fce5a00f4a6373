//! QUIC transport for callsync: TLS identities, endpoints, and framed messages.
//!
//! Owns: the server's certificate (self-signed and persisted, or given), pinning it
//! by SHA-256 fingerprint on clients, the browsers' short-lived certificate
//! ([`web`]), quinn endpoint and transport settings (ALPN,
//! stream limits, idle timeout, a 4 MiB UDP receive buffer so a reconnect storm
//! does not drop packets), and reading and writing one [`Message`] per frame
//! with the core's limits checked before anything is allocated.
//! Does not own: what messages mean (the server hub and the device replica), or
//! accounts.
//!
//! Call order: a server makes a [`web::CertificateResolver`] from its
//! [`tls::Identity`], builds [`tls::server_config`] from it and binds with [`endpoint::bind_server`]; a client builds
//! [`tls::client_config`] from a [`tls::Trust`], connects with
//! [`endpoint::connect`], and both exchange messages over one bidirectional stream
//! with [`framing::read_message`] and [`framing::write_message`].
#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod endpoint;
pub mod framing;
pub mod tls;
pub mod web;

pub use callsync_core::wire::Message;

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A file or socket operation failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// TLS configuration or a certificate was refused.
    #[error("TLS: {0}")]
    Tls(String),
    /// The connection could not be started.
    #[error("could not connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was closed.
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// A stream could not be read.
    #[error("read failed: {0}")]
    Read(String),
    /// A stream could not be written.
    #[error("write failed: {0}")]
    Write(String),
    /// The peer sent bytes that are not a valid frame or message.
    #[error(transparent)]
    Wire(#[from] callsync_core::wire::WireError),
    /// The peer did not answer in time.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
}
