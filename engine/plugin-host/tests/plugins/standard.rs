//! The standard plugin on a table of cases: the manual's result types, recall at the
//! picked time or a delay after the call, restriction until the picked time, and
//! the pick checks every plugin gets from the SDK.

use callsync_core::result_type::{OptionKind, ResultOption, TimeEntry};
use callsync_shipped_plugins::{EXAMPLE, STANDARD};

use crate::support::*;

#[test]
fn declares_the_manuals_result_types() {
    let (_host, plugin, info) = installed(STANDARD, &[]);
    assert_eq!(
        (info.id.as_str(), info.version.as_str()),
        ("standard", "1.0.0")
    );
    assert_eq!(plugin.name(), "standard@1.0.0");
    let ids: Vec<&str> = info.result_types.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "no-answer",
            "gatekeeper-refused",
            "send-materials",
            "appointment",
            "do-not-call"
        ]
    );
    let labels: Vec<&str> = info
        .result_types
        .iter()
        .map(|t| t.label_ja.as_str())
        .collect();
    assert_eq!(
        labels,
        ["不在", "受付拒否", "資料送付", "アポ獲得", "NG・コール禁止"]
    );
    let dnc = spec(&info, "do-not-call");
    assert_eq!(dnc.options, [OptionKind::Restriction]);
    assert_eq!(dnc.time_entry, TimeEntry::Required);
    assert!(dnc.reached_person);
    assert!(!spec(&info, "no-answer").reached_person);
}

#[test]
fn recalls_and_restrictions_on_a_table_of_cases() {
    let tz = chrono_tz::Asia::Tokyo;
    let (_host, plugin, info) = installed(STANDARD, &[]);
    // (what, type, option, picked, ended, saved, expected option time)
    let table = [
        (
            "no time: an hour after the call",
            "no-answer",
            OptionKind::Recall,
            None,
            "2026-11-24 10:00",
            "2026-11-24 10:03",
            Some("2026-11-24 11:00"),
        ),
        (
            "no time, saved late: the next step after the save",
            "no-answer",
            OptionKind::Recall,
            None,
            "2026-11-24 10:00",
            "2026-11-24 12:07",
            Some("2026-11-24 12:10"),
        ),
        (
            "no time, odd end: rounded up",
            "gatekeeper-refused",
            OptionKind::Recall,
            None,
            "2026-11-24 10:01:30",
            "2026-11-24 10:02",
            Some("2026-11-24 11:05"),
        ),
        (
            "picked: kept, even at night",
            "appointment",
            OptionKind::Recall,
            Some("2026-11-24 23:55"),
            "2026-11-24 10:00",
            "2026-11-24 10:02",
            Some("2026-11-24 23:55"),
        ),
        (
            "restriction until the picked time",
            "do-not-call",
            OptionKind::Restriction,
            Some("2027-11-24 00:00"),
            "2026-11-24 10:00",
            "2026-11-24 10:02",
            Some("2027-11-24 00:00"),
        ),
        (
            "no option",
            "send-materials",
            OptionKind::None,
            None,
            "2026-11-24 10:00",
            "2026-11-24 10:02",
            None,
        ),
    ];
    for (what, ty, option, picked, ended, saved, expected) in table {
        let inputs = inputs(tz, tokyo(ended), tokyo(saved), &[]);
        let pick = pick(ty, option, picked.map(tokyo));
        assert_eq!(plugin.validate(&pick, &inputs).unwrap(), Ok(()), "{what}");
        let decision = plugin.evaluate(&pick, &inputs, spec(&info, ty)).unwrap();
        assert_eq!(decision.option.kind(), option, "{what}");
        assert_eq!(
            decision.option.time().map(|t| show(tz, t)),
            expected.map(str::to_owned),
            "{what}"
        );
        assert!(!decision.reason.is_empty(), "{what}");
    }
}

#[test]
fn the_status_is_the_users_pick_or_the_types_default() {
    let (_host, plugin, info) = installed(STANDARD, &[]);
    let inputs = inputs(
        chrono_tz::Asia::Tokyo,
        tokyo("2026-11-24 10:00"),
        tokyo("2026-11-24 10:01"),
        &[],
    );
    let default = plugin
        .evaluate(
            &pick("appointment", OptionKind::None, None),
            &inputs,
            spec(&info, "appointment"),
        )
        .unwrap();
    assert_eq!(default.customer_status.unwrap().as_str(), "アポ獲得");
    let picked = plugin
        .evaluate(
            &with_status(pick("appointment", OptionKind::None, None), "検討中"),
            &inputs,
            spec(&info, "appointment"),
        )
        .unwrap();
    assert_eq!(picked.customer_status.unwrap().as_str(), "検討中");
    let none = plugin
        .evaluate(
            &pick("no-answer", OptionKind::None, None),
            &inputs,
            spec(&info, "no-answer"),
        )
        .unwrap();
    assert_eq!(none.customer_status, None);
}

#[test]
fn picks_are_refused_with_a_code_and_both_languages() {
    let (_host, plugin, _info) = installed(STANDARD, &[]);
    let saved = tokyo("2026-11-24 10:01");
    let inputs = inputs(
        chrono_tz::Asia::Tokyo,
        tokyo("2026-11-24 10:00"),
        saved,
        &[],
    );
    let cases = [
        (
            "unknown-result-type",
            pick("voicemail", OptionKind::None, None),
        ),
        (
            "option-not-allowed",
            pick(
                "do-not-call",
                OptionKind::Recall,
                Some(tokyo("2026-11-25 10:00")),
            ),
        ),
        (
            "time-required",
            pick("do-not-call", OptionKind::Restriction, None),
        ),
        (
            "time-not-on-step",
            pick(
                "no-answer",
                OptionKind::Recall,
                Some(tokyo("2026-11-25 10:01")),
            ),
        ),
        (
            "time-in-past",
            pick(
                "no-answer",
                OptionKind::Recall,
                Some(tokyo("2026-11-24 09:00")),
            ),
        ),
        (
            "time-without-option",
            pick(
                "no-answer",
                OptionKind::None,
                Some(tokyo("2026-11-25 10:00")),
            ),
        ),
    ];
    for (code, pick) in cases {
        let refusal = plugin.validate(&pick, &inputs).unwrap().unwrap_err();
        assert_eq!(refusal.code, code);
        assert!(
            !refusal.message_ja.is_empty() && !refusal.message_en.is_empty(),
            "{code}"
        );
    }
}

#[test]
fn give_up_after_stops_recalling_no_answers_from_that_attempt() {
    let settings = settings(&[("give-up-after", "3")]);
    let (_host, plugin, info) = installed(STANDARD, &settings);
    let mut inputs = inputs(
        chrono_tz::Asia::Tokyo,
        tokyo("2026-11-24 10:00"),
        tokyo("2026-11-24 10:01"),
        &settings,
    );
    let recall = pick("no-answer", OptionKind::Recall, None);
    inputs.attempt = 2;
    let second = plugin
        .evaluate(&recall, &inputs, spec(&info, "no-answer"))
        .unwrap();
    assert!(matches!(second.option, ResultOption::Recall { .. }));
    inputs.attempt = 3;
    let third = plugin
        .evaluate(&recall, &inputs, spec(&info, "no-answer"))
        .unwrap();
    assert_eq!(third.option, ResultOption::None);
    assert!(third.reason.contains("attempt 3"), "{}", third.reason);
}

#[test]
fn same_inputs_same_decision_in_fresh_hosts() {
    let (_shared, first, info) = installed(STANDARD, &[]);
    let fresh = host();
    let inspected = inspect_in_tokyo(&fresh, STANDARD, &[]).unwrap();
    let second = fresh.load(inspected.hash, &inspected.component).unwrap();
    assert!(!std::ptr::eq(&*first, &*second));
    let inputs = inputs(
        chrono_tz::Asia::Tokyo,
        tokyo("2026-11-24 10:00"),
        tokyo("2026-11-24 10:04"),
        &[],
    );
    let pick = pick("no-answer", OptionKind::Recall, None);
    let spec = spec(&info, "no-answer");
    assert_eq!(
        first.evaluate(&pick, &inputs, spec).unwrap(),
        second.evaluate(&pick, &inputs, spec).unwrap()
    );
    assert_eq!(
        first.evaluate_fuel(&pick, &inputs).unwrap(),
        second.evaluate_fuel(&pick, &inputs).unwrap()
    );
}

#[test]
fn the_guides_example_installs_and_recalls_two_days_later() {
    let (_host, plugin, info) = installed(EXAMPLE, &[]);
    assert_eq!(plugin.name(), "two-days-later@1.0.0");
    let inputs = inputs(
        chrono_tz::Asia::Tokyo,
        tokyo("2026-11-24 10:02"),
        tokyo("2026-11-24 10:03"),
        &[],
    );
    let decision = plugin
        .evaluate(
            &pick("no-answer", OptionKind::Recall, None),
            &inputs,
            spec(&info, "no-answer"),
        )
        .unwrap();
    assert_eq!(
        decision.option,
        ResultOption::Recall {
            at: tokyo("2026-11-26 10:05")
        }
    );
}
