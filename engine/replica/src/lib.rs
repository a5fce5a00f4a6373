//! A device's replica: its own SQLite copy of the documents it needs, and the
//! client that keeps it in sync with the server.
//!
//! Owns: carrying a device's login ([`session`]) and its device session
//! ([`client::SyncClient`]): the QUIC and SQLite host of the device session in
//! `callsync-session`, which decides everything (when to connect and retry, the
//! join with the saved cursor, the server's clock, catching up, the outbox,
//! requests, what a refusal means, the rep's actions). [`run`] is the
//! long-running loop a phone runs.
//! Does not own: the rules for acting on a call (the core, through the CLI's local
//! commands, which work with no connection at all) or the transport (`callsync-net`).
//!
//! Every change the client applies is saved in one SQLite transaction before the
//! client answers the server, and a local change leaves the outbox only once the
//! server's heads include it, i.e. once the server has committed it.
#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod capture;
pub mod client;
pub mod download;
pub mod recorder;
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

/// The device's wall clock, for the device session (which corrects it to the
/// server's).
pub mod clock {
    use std::sync::atomic::{AtomicI64, Ordering};

    use callsync_core::Timestamp;

    static SKEW_MS: AtomicI64 = AtomicI64::new(0);

    /// Makes this process's clock read `ms` off the system's, as a device whose
    /// clock is wrong would (`callsync --clock-skew-secs`, to try it).
    pub fn set_skew_ms(ms: i64) {
        SKEW_MS.store(ms, Ordering::Relaxed);
    }

    /// Now, by this device's clock.
    pub fn now() -> Timestamp {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Timestamp::from_millis(ms).plus_millis(SKEW_MS.load(Ordering::Relaxed))
    }
}
