//! The server's clock as a device knows it: an offset from the device's own
//! wall clock, learnt from a round trip the way NTP does, kept while offline.
//!
//! Owns: estimating the offset from one exchange (the device's time of sending,
//! the server's time in its answer, the device's time of receiving), its
//! uncertainty, and turning a device time into a server time.
//! Does not own: reading any clock (the host passes the device's wall-clock time
//! in) or storing the estimate (the device session saves it with its storage).
//!
//! # How time is treated
//! - Every event a device records is stamped on the **server's clock**: the
//!   device's wall clock plus the offset learnt at its last join (`at`), with the
//!   device's own reading beside it (`device_at`) for the record.
//! - The offset is `server_time − (sent + received) / 2`; its uncertainty is half
//!   the round trip (the server's answer left it somewhere in between). A device
//!   learns a new offset at every join (and a first one at login) and keeps the
//!   last one while offline.
//! - While offline the device's clock drifts from the server's by its crystal's
//!   error (tens of ppm: about a second a day); the rules' windows are minutes, so
//!   the kept offset serves for weeks. A device whose wall clock is *set* while
//!   offline (by hand, or by the phone network) is off by that step until its next
//!   join; its raw time, kept beside each stamp, shows what happened.
//! - A device that has never reached the server knows no offset: it stamps its own
//!   clock (`device_at` absent), as before this existed. Every device logs in
//!   online, so this is a device whose saved estimate was lost.

use callsync_core::Timestamp;
use serde::{Deserialize, Serialize};

/// The offset from a device's wall clock to the server's.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerClock {
    /// Server time minus device time, in milliseconds.
    pub offset_ms: i64,
    /// How far the offset may be off, in milliseconds (half the round trip).
    pub uncertainty_ms: i64,
    /// When it was learnt, on the device's clock.
    pub learnt_at: Timestamp,
}

impl ServerClock {
    /// The estimate from one exchange: the device sent at `sent` and received at
    /// `received` (both its own clock) an answer the server stamped `server`.
    /// `None` when the device's clock went backwards in between (it was set
    /// meanwhile: the exchange tells nothing).
    pub fn learn(sent: Timestamp, server: Timestamp, received: Timestamp) -> Option<Self> {
        let round_trip = received.as_millis().checked_sub(sent.as_millis())?;
        if round_trip < 0 {
            return None;
        }
        let midpoint = sent.as_millis().saturating_add(round_trip / 2);
        Some(Self {
            offset_ms: server.as_millis().saturating_sub(midpoint),
            uncertainty_ms: round_trip / 2 + round_trip % 2,
            learnt_at: received,
        })
    }

    /// The server's time when the device's clock reads `device_now`.
    pub fn server_time(&self, device_now: Timestamp) -> Timestamp {
        device_now.plus_millis(self.offset_ms)
    }

    /// The device's time when the server's clock reads `server`.
    pub fn device_time(&self, server: Timestamp) -> Timestamp {
        server.plus_millis(self.offset_ms.saturating_neg())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn the_offset_is_measured_from_the_midpoint_of_the_round_trip() {
        // The device is 10 minutes fast: it sends at 10:10:00.000 (its clock), the
        // server answers at 10:00:00.050, the answer arrives at 10:10:00.100.
        let fast = 600_000;
        let clock = ServerClock::learn(t(fast), t(50), t(fast + 100)).unwrap();
        assert_eq!(clock.offset_ms, -fast);
        assert_eq!(clock.uncertainty_ms, 50);
        assert_eq!(clock.server_time(t(fast + 5_000)), t(5_000));
        assert_eq!(clock.device_time(t(5_000)), t(fast + 5_000));
        // And 10 minutes slow.
        let clock = ServerClock::learn(t(-fast), t(50), t(-fast + 100)).unwrap();
        assert_eq!(clock.offset_ms, fast);
    }

    #[test]
    fn an_exchange_across_a_clock_set_backwards_teaches_nothing() {
        assert_eq!(ServerClock::learn(t(1_000), t(5_000), t(999)), None);
    }

    #[test]
    fn extreme_readings_saturate_instead_of_overflowing() {
        let clock = ServerClock::learn(t(i64::MIN), t(i64::MAX), t(i64::MIN)).unwrap();
        assert_eq!(clock.server_time(t(0)), t(i64::MAX));
        assert_eq!(ServerClock::learn(t(i64::MIN), t(0), t(i64::MAX)), None);
    }
}
