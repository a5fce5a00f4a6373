//! The business-hours plugin on a table of cases: every recall lands inside
//! weekdays 10:00–12:00 or 13:00–17:00 in the tenant's zone, holidays skipped,
//! rounded up to the next 5-minute step.

use callsync_core::result_type::{OptionKind, ResultOption};
use callsync_shipped_plugins::BUSINESS_HOURS;
use chrono_tz::Tz;

use crate::support::*;

/// Evaluates a `no-answer` recall for a call that ended at `ended` (local, `tz`),
/// saved one minute later, picked at `picked` if given; the recall, shown locally.
fn recall(tz: Tz, settings_in: &[(&str, &str)], ended: &str, picked: Option<&str>) -> String {
    let settings = settings(settings_in);
    let (_host, plugin, info) = installed(BUSINESS_HOURS, &settings);
    let ended = local(tz, ended);
    let saved = ended.plus_millis(60_000);
    let pick = pick(
        "no-answer",
        OptionKind::Recall,
        picked.map(|p| local(tz, p)),
    );
    let decision = plugin
        .evaluate(
            &pick,
            &inputs(tz, ended, saved, &settings),
            spec(&info, "no-answer"),
        )
        .unwrap();
    match decision.option {
        ResultOption::Recall { at } => show(tz, at),
        other => panic!("expected a recall, got {other:?}"),
    }
}

#[test]
fn recalls_land_inside_business_hours_in_tokyo() {
    let tokyo = chrono_tz::Asia::Tokyo;
    // (what, call ended (local), picked time, expected recall (local))
    let table = [
        (
            "inside the morning window",
            "2026-11-24 10:30",
            None,
            "2026-11-24 11:30",
        ),
        (
            "into the lunch gap: after lunch",
            "2026-11-24 11:20",
            None,
            "2026-11-24 13:00",
        ),
        (
            "rounded up to the step",
            "2026-11-24 10:02:30",
            None,
            "2026-11-24 11:05",
        ),
        (
            "rounding onto the window's end moves on",
            "2026-11-24 10:56:10",
            None,
            "2026-11-24 13:00",
        ),
        (
            "after hours: next morning",
            "2026-11-25 16:30",
            None,
            "2026-11-26 10:00",
        ),
        (
            "Friday evening: Monday",
            "2026-11-27 16:30",
            None,
            "2026-11-30 10:00",
        ),
        (
            "Friday, then a Monday holiday (勤労感謝の日)",
            "2026-11-20 16:45",
            None,
            "2026-11-24 10:00",
        ),
        (
            "Golden Week: five days off",
            "2026-05-01 16:50",
            None,
            "2026-05-07 10:00",
        ),
        (
            "the substitute holiday 2027-03-22",
            "2027-03-19 16:30",
            None,
            "2027-03-23 10:00",
        ),
        (
            "picked inside hours: kept",
            "2026-11-24 10:30",
            Some("2026-11-25 14:00"),
            "2026-11-25 14:00",
        ),
        (
            "picked on a Saturday: Monday",
            "2026-11-24 10:30",
            Some("2026-11-28 10:00"),
            "2026-11-30 10:00",
        ),
        (
            "picked at lunch: 13:00",
            "2026-11-24 10:30",
            Some("2026-11-25 12:30"),
            "2026-11-25 13:00",
        ),
        (
            "picked at 17:00 (end is exclusive)",
            "2026-11-24 10:30",
            Some("2026-11-25 17:00"),
            "2026-11-26 10:00",
        ),
    ];
    for (what, ended, picked, expected) in table {
        assert_eq!(recall(tokyo, &[], ended, picked), expected, "{what}");
    }
}

#[test]
fn settings_change_the_days_and_hours() {
    let tokyo = chrono_tz::Asia::Tokyo;
    let saturdays = [("days", "mon-sat"), ("hours", "09:00-18:00")];
    assert_eq!(
        recall(tokyo, &saturdays, "2026-11-27 17:30", None),
        "2026-11-28 09:00"
    );
    let later = [("recall-after-minutes", "240")];
    assert_eq!(
        recall(tokyo, &later, "2026-11-24 10:00", None),
        "2026-11-24 14:00"
    );
}

#[test]
fn tokyo_has_no_daylight_saving_but_new_york_does() {
    let new_york = chrono_tz::America::New_York;
    let hours = [("hours", "09:00-17:00")];
    // Friday afternoon before the spring change: Monday 09:00 EDT is 13:00 UTC.
    let monday = recall(new_york, &hours, "2026-03-06 16:30", None);
    assert_eq!(monday, "2026-03-09 09:00");
    assert_eq!(
        local(new_york, &monday).as_millis(),
        chrono::DateTime::parse_from_rfc3339("2026-03-09T13:00:00Z")
            .unwrap()
            .timestamp_millis()
    );
    // The autumn change: Monday 09:00 EST is 14:00 UTC.
    assert_eq!(
        recall(new_york, &hours, "2026-10-30 16:30", None),
        "2026-11-02 09:00"
    );
    // Tokyo: 10:00 is 01:00 UTC in March and November alike.
    let tokyo = chrono_tz::Asia::Tokyo;
    for ended in ["2026-03-06 16:30", "2026-10-30 16:30"] {
        let at = local(tokyo, &recall(tokyo, &[], ended, None)).as_millis();
        assert_eq!(at.rem_euclid(86_400_000), 3_600_000, "{ended}");
    }
}

#[test]
fn restrictions_and_no_option_pass_through_with_the_default_status() {
    let (_host, plugin, info) = installed(BUSINESS_HOURS, &[]);
    let ended = tokyo("2026-11-24 10:00");
    let until = tokyo("2027-05-01 00:00");
    let inputs = inputs(
        chrono_tz::Asia::Tokyo,
        ended,
        ended.plus_millis(60_000),
        &[],
    );
    let restriction = plugin
        .evaluate(
            &pick("do-not-call", OptionKind::Restriction, Some(until)),
            &inputs,
            spec(&info, "do-not-call"),
        )
        .unwrap();
    assert_eq!(restriction.option, ResultOption::Restriction { until });
    assert_eq!(restriction.customer_status.unwrap().as_str(), "NG");
    let none = plugin
        .evaluate(
            &pick("appointment", OptionKind::None, None),
            &inputs,
            spec(&info, "appointment"),
        )
        .unwrap();
    assert_eq!(none.option, ResultOption::None);
    assert_eq!(none.customer_status.unwrap().as_str(), "アポ獲得");
}

#[test]
fn bad_settings_are_refused_at_install_with_the_plugins_words() {
    let host = host();
    for (key, value) in [
        ("hours", "13:00-17:00,10:00-12:00"),
        ("days", "funday"),
        ("colour", "red"),
    ] {
        let settings = settings(&[(key, value)]);
        let err = inspect_in_tokyo(&host, BUSINESS_HOURS, &settings).unwrap_err();
        assert_eq!(
            err.code(),
            "plugin-settings-refused",
            "{key}={value}: {err}"
        );
        assert!(err.to_string().contains(key), "{err}");
    }
}
