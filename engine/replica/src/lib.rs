//! A device's replica: its own SQLite copy of the documents it needs, and the
//! client that keeps it in sync with the server.
//!
//! Owns: logging a device in and keeping its session ([`session`]), and the sync
//! client ([`client::SyncClient`]), the QUIC and SQLite driver of the client
//! session in `callsync-session` (which decides: `join` with the saved cursor,
//! catching up on exactly the documents the server lists, pushing the outbox,
//! applying what the server sends, saving the new cursor only once every listed
//! document has caught up). [`run`] keeps a connection up with capped exponential
//! backoff and jitter.
//! Does not own: the rules for acting on a call (the core, through the CLI's local
//! commands, which work with no connection at all) or the transport (`callsync-net`).
//!
//! Every change the client applies is saved in one SQLite transaction before the
//! client answers the server, and a local change leaves the outbox only once the
//! server's heads include it, i.e. once the server has committed it.
#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod client;
pub mod run;
pub mod session;

pub use client::{ClientEvent, SyncClient};
pub use session::{SavedSession, login};

use callsync_core::wire::ErrorBody;
use callsync_net::NetError;
use callsync_store::StoreError;

/// The database file in a device's data directory.
pub const DB_FILE: &str = "callsync.sqlite";

/// Why a device operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The local database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The connection failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The server refused, with its reason.
    #[error("{}", .0.message)]
    Refused(ErrorBody),
    /// This data directory has not logged in.
    #[error("not logged in: run `login` first")]
    NotLoggedIn,
    /// The server broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A local document could not be used.
    #[error(transparent)]
    Core(#[from] callsync_core::CoreError),
    /// Local storage failed or held something unreadable (through the session).
    #[error(transparent)]
    Storage(#[from] callsync_session::storage::StorageError),
}

impl From<callsync_session::client::ClientFailure> for ClientError {
    fn from(e: callsync_session::client::ClientFailure) -> Self {
        use callsync_session::client::ClientFailure;
        match e {
            ClientFailure::Storage(e) => Self::Storage(e),
            ClientFailure::Protocol(detail) => Self::Protocol(detail),
            ClientFailure::Refused(body) => Self::Refused(body),
        }
    }
}

impl ClientError {
    /// Whether retrying cannot help (the session is refused): a running client
    /// stops instead of reconnecting.
    pub fn is_fatal(&self) -> bool {
        match self {
            Self::Refused(body) => matches!(
                body.code.as_str(),
                "invalid-session"
                    | "session-expired"
                    | "contract-required"
                    | "invalid-credentials"
                    | "unsupported-protocol"
                    | "device-taken"
                    | "actor-taken"
            ),
            Self::NotLoggedIn | Self::Store(_) | Self::Storage(_) => true,
            _ => false,
        }
    }
}
