//! The tenant's UTC offsets over the window a rule can reach, from a zone name.
//!
//! Plugins carry no time-zone database; the host gives them the offsets in force
//! from the day before the call to [`WINDOW_DAYS`] days after it, found by scanning
//! day by day and bisecting to the exact instant of each change.

use callsync_core::Timestamp;
use callsync_core::plugin::UtcOffset;
use chrono::{Offset, TimeZone};
use chrono_tz::Tz;

/// How many days after the call's day the offsets cover (rules may look 400 days
/// ahead; one more day either side for local-date arithmetic).
pub const WINDOW_DAYS: i64 = 402;

const DAY_MS: i64 = 86_400_000;

fn offset_seconds(tz: Tz, at_ms: i64) -> i32 {
    match chrono::DateTime::from_timestamp_millis(at_ms) {
        Some(utc) => tz
            .offset_from_utc_datetime(&utc.naive_utc())
            .fix()
            .local_minus_utc(),
        None => 0,
    }
}

/// The offsets of `tz` from the start of the day (UTC) before `around` to
/// [`WINDOW_DAYS`] days later: the first entry starts the window, each next one is
/// an instant the offset changes.
pub fn utc_offsets(tz: Tz, around: Timestamp) -> Vec<UtcOffset> {
    // Times far outside any calendar (a hostile input) saturate instead of
    // overflowing; chrono answers offset 0 there.
    let start = around
        .as_millis()
        .div_euclid(DAY_MS)
        .saturating_sub(1)
        .saturating_mul(DAY_MS);
    let mut offsets = vec![UtcOffset {
        since: Timestamp::from_millis(start),
        offset_seconds: offset_seconds(tz, start),
    }];
    let mut previous = (start, offsets[0].offset_seconds);
    for day in 1..=WINDOW_DAYS + 1 {
        let at = start.saturating_add(day * DAY_MS);
        let offset = offset_seconds(tz, at);
        if offset != previous.1 {
            // The change lies in (previous.0, at]: bisect to the millisecond.
            let (mut before, mut after) = (previous.0, at);
            while after.saturating_sub(before) > 1 {
                let middle = before + (after - before) / 2;
                if offset_seconds(tz, middle) == previous.1 {
                    before = middle;
                } else {
                    after = middle;
                }
            }
            offsets.push(UtcOffset {
                since: Timestamp::from_millis(after),
                offset_seconds: offset,
            });
        }
        previous = (at, offset);
    }
    offsets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> Timestamp {
        Timestamp::from_millis(
            chrono::DateTime::parse_from_rfc3339(text)
                .unwrap()
                .timestamp_millis(),
        )
    }

    #[test]
    fn tokyo_has_one_offset_all_year() {
        let offsets = utc_offsets(chrono_tz::Asia::Tokyo, utc("2026-11-24T12:00:00Z"));
        assert_eq!(offsets.len(), 1);
        assert_eq!(offsets[0].offset_seconds, 9 * 3600);
        assert_eq!(offsets[0].since, utc("2026-11-23T00:00:00Z"));
    }

    #[test]
    fn new_york_changes_at_the_exact_instants() {
        // The window (2026-01-31 to 2027-03-09) holds two changes; 2027-03-14 is past it.
        let offsets = utc_offsets(chrono_tz::America::New_York, utc("2026-02-01T12:00:00Z"));
        let changes: Vec<(Timestamp, i32)> = offsets
            .iter()
            .skip(1)
            .map(|o| (o.since, o.offset_seconds))
            .collect();
        assert_eq!(
            changes,
            [
                (utc("2026-03-08T07:00:00Z"), -4 * 3600),
                (utc("2026-11-01T06:00:00Z"), -5 * 3600),
            ]
        );
    }
}
