//! The server's clock: the one place it reads the time.

use callsync_core::Timestamp;

/// Now, in UTC milliseconds.
pub(crate) fn now() -> Timestamp {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    Timestamp::from_millis(millis)
}
