//! The business-hours result-rule plugin: the standard result types, and every
//! recall lands inside business hours, rounded up to the next 5-minute step.
//!
//! Settings (defaults are the manual's support desk):
//! - `days` (default `mon-fri`): open weekdays, as ranges or lists (`mon-fri`,
//!   `mon,wed,fri`, `mon-sat`).
//! - `hours` (default `10:00-12:00,13:00-17:00`): open windows each open day, in
//!   the tenant's local time; the end is exclusive.
//! - `recall-after-minutes` (default 60): when a recall has no picked time, the
//!   earliest time is this long after the call ended.
//!
//! Days off come from the holiday table the host passes (Japanese public holidays
//! for a tenant in Japan).

use callsync_plugin_sdk::chrono::{Datelike, NaiveDate, NaiveTime, Weekday};
use callsync_plugin_sdk::*;

/// The plugin.
pub struct BusinessHours;

/// How far ahead a recall may be moved looking for an open window.
const SEARCH_DAYS: u32 = 400;

struct Settings {
    days: [bool; 7],
    windows: Vec<(NaiveTime, NaiveTime)>,
    recall_after_minutes: i64,
}

fn parse_weekday(name: &str) -> Option<Weekday> {
    name.trim().parse::<Weekday>().ok()
}

fn parse_days(value: &str) -> Option<[bool; 7]> {
    let mut days = [false; 7];
    for part in value.split(',') {
        match part.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (parse_weekday(from)?, parse_weekday(to)?);
                let mut day = from;
                loop {
                    days[day.num_days_from_monday() as usize] = true;
                    if day == to {
                        break;
                    }
                    day = day.succ();
                }
            }
            None => days[parse_weekday(part)?.num_days_from_monday() as usize] = true,
        }
    }
    days.contains(&true).then_some(days)
}

fn parse_windows(value: &str) -> Option<Vec<(NaiveTime, NaiveTime)>> {
    let mut windows = Vec::new();
    for part in value.split(',') {
        let (start, end) = part.split_once('-')?;
        let start = NaiveTime::parse_from_str(start.trim(), "%H:%M").ok()?;
        let end = NaiveTime::parse_from_str(end.trim(), "%H:%M").ok()?;
        if start >= end
            || windows
                .last()
                .is_some_and(|&(_, prev_end)| start < prev_end)
        {
            return None;
        }
        windows.push((start, end));
    }
    (!windows.is_empty()).then_some(windows)
}

fn settings(settings: &[Setting]) -> Result<Settings, Refusal> {
    let days_value = setting(settings, "days").unwrap_or("mon-fri");
    let days = parse_days(days_value)
        .ok_or_else(|| bad_setting("days", days_value, "weekdays such as mon-fri or mon,wed"))?;
    let hours_value = setting(settings, "hours").unwrap_or("10:00-12:00,13:00-17:00");
    let windows = parse_windows(hours_value).ok_or_else(|| {
        bad_setting(
            "hours",
            hours_value,
            "ascending windows such as 10:00-12:00,13:00-17:00",
        )
    })?;
    let recall_after_minutes =
        minutes_setting(settings, "recall-after-minutes", 60, 5..=60 * 24 * 90)?;
    only_known_settings(settings, &["days", "hours", "recall-after-minutes"])?;
    Ok(Settings {
        days,
        windows,
        recall_after_minutes,
    })
}

/// The first instant at or after `earliest`, on the 5-minute step, inside an open
/// window of an open day that is not a holiday.
fn next_open(settings: &Settings, context: &Context, earliest: Timestamp) -> Option<Timestamp> {
    let mut at = round_up_to_step(earliest);
    for _ in 0..SEARCH_DAYS {
        let date: NaiveDate = context.local(at).date();
        let open_day = settings.days[date.weekday().num_days_from_monday() as usize]
            && !context.is_holiday(date);
        if open_day {
            for &(start, end) in &settings.windows {
                let opens = context.utc(date.and_time(start));
                let closes = context.utc(date.and_time(end));
                let candidate = round_up_to_step(at.max(opens));
                if candidate < closes {
                    return Some(candidate);
                }
            }
        }
        at = context
            .utc(date.succ_opt()?.and_time(NaiveTime::MIN))
            .max(at + 1);
    }
    None
}

impl Rules for BusinessHours {
    fn describe(settings_in: Vec<Setting>) -> Result<PluginInfo, Refusal> {
        settings(&settings_in)?;
        Ok(PluginInfo::new(
            "business-hours",
            env!("CARGO_PKG_VERSION"),
            standard_result_types(),
        ))
    }

    fn validate(pick: Pick, context: Context) -> Result<(), Refusal> {
        settings(&context.settings)?;
        check_pick(&standard_result_types(), &pick, &context)
    }

    fn evaluate(pick: Pick, context: Context) -> Decision {
        let types = standard_result_types();
        let status = status_for(&types, &pick);
        let Ok(settings) = settings(&context.settings) else {
            return Decision::as_picked(&types, &pick, "settings unreadable: kept the pick");
        };
        match pick.option {
            OptionKind::Recall => {
                let wanted = pick
                    .at
                    .unwrap_or(context.call_ended_at + settings.recall_after_minutes * MINUTE_MS);
                let earliest = wanted.max(context.saved_at + 1);
                match next_open(&settings, &context, earliest) {
                    Some(at) if Some(at) == pick.at => {
                        Decision::recall(at, status, "recall at the time picked")
                    }
                    Some(at) => Decision::recall(at, status, "recall at the next business hours"),
                    None => Decision::as_picked(&types, &pick, "no business hours within 400 days"),
                }
            }
            OptionKind::Restriction => match pick.at {
                Some(until) => {
                    Decision::restriction(until, status, "restricted until the time picked")
                }
                None => Decision::none(status, "restriction without a time"),
            },
            OptionKind::None => Decision::none(status, "no follow-up"),
        }
    }
}

export_plugin!(BusinessHours);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_lists_and_ranges_parse() {
        let days = parse_days("mon-fri").unwrap();
        assert_eq!(days, [true, true, true, true, true, false, false]);
        let days = parse_days("sat-mon").unwrap();
        assert_eq!(days, [true, false, false, false, false, true, true]);
        assert!(parse_days("mon,funday").is_none());
    }

    #[test]
    fn windows_must_ascend_without_overlap() {
        assert_eq!(parse_windows("10:00-12:00,13:00-17:00").unwrap().len(), 2);
        assert!(parse_windows("13:00-17:00,10:00-12:00").is_none());
        assert!(parse_windows("10:00-10:00").is_none());
        assert!(parse_windows("").is_none());
    }
}
