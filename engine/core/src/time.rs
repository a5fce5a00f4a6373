//! Time as the core sees it: a [`Timestamp`] in UTC milliseconds, passed in by the host.
//!
//! Owns: the 5-minute step rule for option times and the 1-minute start limit.
//! Does not own: reading a clock or time zones (hosts format times for people).

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, UTC. Every event carries the recording device's
/// wall-clock time as one of these.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(i64);

/// The step option times (recall, call restriction) must sit on: 5 minutes.
pub const OPTION_TIME_STEP_MS: i64 = 5 * 60 * 1000;

/// How long a phone has to press *Start call* after a request: 1 minute (the manual).
pub const DEFAULT_START_LIMIT_MS: i64 = 60 * 1000;

impl Timestamp {
    /// A timestamp from UTC milliseconds since the epoch.
    pub const fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    /// UTC milliseconds since the epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// This time plus `ms` milliseconds (saturating).
    pub const fn plus_millis(self, ms: i64) -> Self {
        Self(self.0.saturating_add(ms))
    }

    /// Whether the time sits on a 5-minute step. Every real time zone offset is a
    /// multiple of 5 minutes, so a step in UTC is a step in the tenant's zone too.
    pub const fn is_on_option_step(self) -> bool {
        self.0.rem_euclid(OPTION_TIME_STEP_MS) == 0
    }

    /// The first 5-minute step at or after this time.
    pub const fn ceil_to_option_step(self) -> Self {
        let rem = self.0.rem_euclid(OPTION_TIME_STEP_MS);
        if rem == 0 {
            self
        } else {
            Self(
                self.0
                    .saturating_sub(rem)
                    .saturating_add(OPTION_TIME_STEP_MS),
            )
        }
    }
}

impl std::fmt::Display for Timestamp {
    /// RFC 3339 in UTC to the second (`2026-11-25T01:00:00Z`); hosts show local time.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match chrono::DateTime::from_timestamp_millis(self.0) {
            Some(t) => write!(f, "{}", t.format("%Y-%m-%dT%H:%M:%SZ")),
            None => write!(f, "{}ms", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_minute_steps_are_recognised_and_rounded_up() {
        let step =
            Timestamp::from_millis(1_700_000_100_000 - 1_700_000_100_000 % OPTION_TIME_STEP_MS);
        assert!(step.is_on_option_step());
        assert!(!step.plus_millis(60_000).is_on_option_step());
        assert_eq!(
            step.plus_millis(1).ceil_to_option_step(),
            step.plus_millis(OPTION_TIME_STEP_MS)
        );
        assert_eq!(step.ceil_to_option_step(), step);
        assert!(Timestamp::from_millis(-OPTION_TIME_STEP_MS).is_on_option_step());
        assert_eq!(
            Timestamp::from_millis(1_764_032_400_000).to_string(),
            "2025-11-25T01:00:00Z"
        );
    }
}
