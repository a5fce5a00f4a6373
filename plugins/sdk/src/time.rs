//! Local time from the UTC offsets the host passes, and the 5-minute option step.
//!
//! Plugins carry no time-zone database: the host passes the tenant's offsets over
//! the window a rule can reach (see `context.zone` in the WIT), so a rule gives the
//! same answer on every device whatever its own clock or zone.

use chrono::{DateTime, NaiveDateTime};

use crate::{Timestamp, UtcOffset};

/// A wall-clock date and time in the tenant's zone.
pub type LocalDateTime = NaiveDateTime;

/// Option times (recall, restriction) sit on this step: 5 minutes.
pub const STEP_MS: i64 = 300_000;

/// The first instant on the 5-minute step at or after `at`.
pub fn round_up_to_step(at: Timestamp) -> Timestamp {
    let rest = at.rem_euclid(STEP_MS);
    if rest == 0 { at } else { at - rest + STEP_MS }
}

pub(crate) fn offset_at(zone: &[UtcOffset], at: Timestamp) -> i32 {
    // The last entry starting at or before `at`; before the first, the first.
    let index = zone.partition_point(|o| o.since <= at);
    zone.get(index.saturating_sub(1))
        .map_or(0, |o| o.offset_seconds)
}

pub(crate) fn local(zone: &[UtcOffset], at: Timestamp) -> LocalDateTime {
    let shifted = at.saturating_add(i64::from(offset_at(zone, at)) * 1000);
    DateTime::from_timestamp_millis(shifted)
        .unwrap_or_default()
        .naive_utc()
}

pub(crate) fn utc(zone: &[UtcOffset], local_time: LocalDateTime) -> Timestamp {
    let wall = local_time.and_utc().timestamp_millis();
    if zone.is_empty() {
        return wall;
    }
    // The earliest instant that reads `local_time` under the offset in force then.
    for (index, span) in zone.iter().enumerate() {
        let candidate = wall - i64::from(span.offset_seconds) * 1000;
        let starts = if index == 0 { i64::MIN } else { span.since };
        let ends = zone.get(index + 1).map_or(i64::MAX, |next| next.since);
        if candidate >= starts && candidate < ends {
            return candidate;
        }
    }
    // A skipped wall-clock time (daylight saving starts): the first transition
    // after which local time has passed it.
    zone.iter()
        .skip(1)
        .map(|span| span.since)
        .find(|&since| local(zone, since) > local_time)
        .unwrap_or(wall)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn at(y: i32, m: u32, d: u32, h: u32, min: u32) -> LocalDateTime {
        NaiveDate::from_ymd_opt(y, m, d)
            .and_then(|d| d.and_hms_opt(h, min, 0))
            .unwrap()
    }

    /// America/New_York around the 2026-03-08 spring-forward (07:00Z) and the
    /// 2026-11-01 fall-back (06:00Z).
    fn new_york() -> Vec<UtcOffset> {
        let utc = |l: LocalDateTime| l.and_utc().timestamp_millis();
        vec![
            UtcOffset {
                since: utc(at(2026, 1, 1, 0, 0)),
                offset_seconds: -5 * 3600,
            },
            UtcOffset {
                since: utc(at(2026, 3, 8, 7, 0)),
                offset_seconds: -4 * 3600,
            },
            UtcOffset {
                since: utc(at(2026, 11, 1, 6, 0)),
                offset_seconds: -5 * 3600,
            },
        ]
    }

    #[test]
    fn rounding_up_keeps_steps_and_moves_the_rest_forward() {
        assert_eq!(round_up_to_step(0), 0);
        assert_eq!(round_up_to_step(1), STEP_MS);
        assert_eq!(round_up_to_step(STEP_MS), STEP_MS);
        assert_eq!(round_up_to_step(-1), 0);
    }

    #[test]
    fn local_and_utc_round_trip_outside_transitions() {
        let zone = new_york();
        let noon = at(2026, 6, 1, 12, 0);
        let instant = utc(&zone, noon);
        assert_eq!(instant, at(2026, 6, 1, 16, 0).and_utc().timestamp_millis());
        assert_eq!(local(&zone, instant), noon);
    }

    #[test]
    fn a_skipped_local_time_maps_to_the_end_of_the_gap() {
        let zone = new_york();
        let skipped = at(2026, 3, 8, 2, 30);
        assert_eq!(
            utc(&zone, skipped),
            at(2026, 3, 8, 7, 0).and_utc().timestamp_millis()
        );
    }

    #[test]
    fn a_repeated_local_time_maps_to_its_first_occurrence() {
        let zone = new_york();
        let twice = at(2026, 11, 1, 1, 30);
        // 01:30 EDT (UTC-4) comes first.
        assert_eq!(
            utc(&zone, twice),
            at(2026, 11, 1, 5, 30).and_utc().timestamp_millis()
        );
    }
}
