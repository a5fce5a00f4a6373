//! From a pick to a saved decision under the tenant's installed rule set, and the
//! server's check of decisions made elsewhere: same inputs, same decision; a
//! tampered decision is caught; a failing plugin keeps the pick for review.

use callsync_core::event::SavedResultFields;
use callsync_core::id::{TenantId, UserId};
use callsync_core::plugin::CallFacts;
use callsync_core::result_type::{OptionKind, ResultOption};
use callsync_core::tenant_config::TenantConfigDoc;
use callsync_core::{ActorId, Timestamp};
use callsync_plugin_host::decide::{DecideError, VerifyError, decide, verify};
use callsync_plugin_host::holidays;
use callsync_plugin_host::install::{InstallError, InstallRequest, prepare};
use callsync_shipped_plugins::{BUSINESS_HOURS, hostile};

use crate::support::*;

fn config_with(file: &[u8]) -> TenantConfigDoc {
    let host = shared_host();
    let now = tokyo("2026-11-24 09:00");
    let mut doc =
        TenantConfigDoc::create(&TenantId::new("acme").unwrap(), now, ActorId::random()).unwrap();
    let prepared = prepare(
        host,
        InstallRequest {
            file,
            settings: Vec::new(),
            holidays: holidays::japan(),
            time_zone: "Asia/Tokyo".to_owned(),
        },
        now,
    )
    .unwrap();
    prepared
        .publish(&mut doc, &UserId::new("admin@acme.example").unwrap(), now)
        .unwrap();
    doc
}

fn fields(
    pick: &callsync_core::plugin::Pick,
    decided: &callsync_plugin_host::decide::Decided,
) -> SavedResultFields {
    SavedResultFields {
        result_type: pick.result_type.clone(),
        option: decided.option,
        customer_status: decided.customer_status.clone(),
        memo: String::new(),
        decision: Some(Box::new(decided.record.clone())),
        kept_as_picked: None,
    }
}

#[test]
fn a_decision_verifies_and_a_tampered_one_does_not() {
    let host = shared_host();
    let doc = config_with(BUSINESS_HOURS);
    let config = doc.config().unwrap();
    // Friday 16:30 in Tokyo: the recall lands on Monday 10:00.
    let facts = CallFacts {
        ended_at: tokyo("2026-11-27 16:30"),
        attempt: 2,
    };
    let saved = tokyo("2026-11-27 16:32");
    let pick = pick("no-answer", OptionKind::Recall, None);
    let decided = decide(host, &doc, &pick, facts, saved).unwrap();
    assert_eq!(
        decided.option,
        ResultOption::Recall {
            at: tokyo("2026-11-30 10:00")
        }
    );
    assert_eq!(decided.record.plugin.id, "business-hours");
    assert_eq!(decided.record.plugin.version, "1.0.0");
    assert_eq!(decided.record.ruleset, config.active.unwrap());
    assert_eq!(decided.record.needs_review, None);
    let honest = fields(&pick, &decided);
    verify(host, &config, &doc, &honest, saved).unwrap();

    let mut moved = honest.clone();
    moved.option = ResultOption::Recall {
        at: tokyo("2026-11-28 10:00"),
    };
    assert_eq!(
        verify(host, &config, &doc, &moved, saved)
            .unwrap_err()
            .code(),
        "decision-mismatch"
    );
    let mut unknown = honest.clone();
    if let Some(record) = unknown.decision.as_mut() {
        record.ruleset = callsync_core::plugin::ContentHash::from_bytes([7; 32]);
    }
    assert!(matches!(
        verify(host, &config, &doc, &unknown, saved),
        Err(VerifyError::UnknownRuleset(_))
    ));
    let mut impossible = honest.clone();
    if let Some(record) = impossible.decision.as_mut() {
        record.call_ended_at = saved.plus_millis(1);
    }
    assert_eq!(
        verify(host, &config, &doc, &impossible, saved),
        Err(VerifyError::ImpossibleInputs)
    );
}

#[test]
fn a_refused_pick_is_an_error_and_no_rules_is_one_too() {
    let host = shared_host();
    let doc = config_with(BUSINESS_HOURS);
    let facts = CallFacts {
        ended_at: tokyo("2026-11-24 10:00"),
        attempt: 1,
    };
    let err = decide(
        host,
        &doc,
        &pick("do-not-call", OptionKind::Restriction, None),
        facts,
        tokyo("2026-11-24 10:01"),
    )
    .unwrap_err();
    assert_eq!(err.code(), "time-required");
    assert!(!err.message_ja().is_empty());
    let empty = TenantConfigDoc::create(
        &TenantId::new("acme").unwrap(),
        Timestamp::from_millis(0),
        ActorId::random(),
    )
    .unwrap();
    assert_eq!(
        decide(
            host,
            &empty,
            &pick("no-answer", OptionKind::None, None),
            facts,
            tokyo("2026-11-24 10:01")
        ),
        Err(DecideError::NoRules)
    );
}

#[test]
fn a_failing_plugin_keeps_the_pick_for_review_and_that_verifies() {
    let host = shared_host();
    let doc = config_with(hostile::MISBEHAVES);
    let config = doc.config().unwrap();
    let facts = CallFacts {
        ended_at: tokyo("2026-11-24 10:00"),
        attempt: 1,
    };
    let saved = tokyo("2026-11-24 10:01");
    let at = tokyo("2026-11-25 10:00");
    let pick = with_status(pick("no-answer", OptionKind::Recall, Some(at)), "loop");
    let decided = decide(host, &doc, &pick, facts, saved).unwrap();
    assert_eq!(decided.option, ResultOption::Recall { at });
    let review = decided.record.needs_review.clone().unwrap();
    assert!(review.starts_with("plugin-out-of-fuel"), "{review}");
    let kept = fields(&pick, &decided);
    verify(host, &config, &doc, &kept, saved).unwrap();
    // Claiming "kept for review" while saving something else is caught.
    let mut forged = kept;
    forged.option = ResultOption::None;
    assert_eq!(
        verify(host, &config, &doc, &forged, saved)
            .unwrap_err()
            .code(),
        "decision-mismatch"
    );
    // A decision claiming the plugin succeeded where it fails on every device.
    let mut claimed = fields(&pick, &decided);
    if let Some(record) = claimed.decision.as_mut() {
        record.needs_review = None;
    }
    assert_eq!(
        verify(host, &config, &doc, &claimed, saved)
            .unwrap_err()
            .code(),
        "decision-unverifiable"
    );
}

#[test]
fn an_unknown_time_zone_is_refused_at_install() {
    let err = prepare(
        shared_host(),
        InstallRequest {
            file: BUSINESS_HOURS,
            settings: Vec::new(),
            holidays: Vec::new(),
            time_zone: "Mars/Olympus".to_owned(),
        },
        tokyo("2026-11-24 09:00"),
    )
    .unwrap_err();
    assert_eq!(
        err,
        InstallError::UnknownTimeZone("Mars/Olympus".to_owned())
    );
}

#[test]
fn a_call_end_stamped_after_the_save_by_a_fast_clock_still_verifies() {
    let host = shared_host();
    let doc = config_with(BUSINESS_HOURS);
    let config = doc.config().unwrap();
    let saved = tokyo("2026-11-24 10:00");
    // The phone's clock runs 30 s ahead of the desk that saves.
    let facts = CallFacts {
        ended_at: saved.plus_millis(30_000),
        attempt: 1,
    };
    let pick = pick("no-answer", OptionKind::Recall, None);
    let decided = decide(host, &doc, &pick, facts, saved).unwrap();
    assert_eq!(decided.record.call_ended_at, saved);
    verify(host, &config, &doc, &fields(&pick, &decided), saved).unwrap();
}

#[test]
fn review_claims_and_refused_picks_are_checked_again_on_the_server() {
    let host = shared_host();
    let doc = config_with(BUSINESS_HOURS);
    let config = doc.config().unwrap();
    let facts = CallFacts {
        ended_at: tokyo("2026-11-24 10:00"),
        attempt: 1,
    };
    let saved = tokyo("2026-11-24 10:01");
    // "The plugin ran out of fuel, so here is my own time": it does not fail here.
    let at = tokyo("2026-11-28 03:00");
    let recall = pick("no-answer", OptionKind::Recall, Some(at));
    let mut decided = decide(host, &doc, &recall, facts, saved).unwrap();
    decided.option = ResultOption::Recall { at };
    decided.record.needs_review = Some("plugin-out-of-fuel: made up".to_owned());
    decided.record.reason = "the rule failed: the pick was kept as made".to_owned();
    assert_eq!(
        verify(host, &config, &doc, &fields(&recall, &decided), saved)
            .unwrap_err()
            .code(),
        "decision-mismatch"
    );
    // A deadline is this machine's business: the claim stands.
    decided.record.needs_review = Some("plugin-deadline: slow phone".to_owned());
    verify(host, &config, &doc, &fields(&recall, &decided), saved).unwrap();
    // A pick the plugin refuses (a restriction with no time) cannot carry a decision.
    let refused = pick("do-not-call", OptionKind::Restriction, None);
    let mut forged = fields(&refused, &decided);
    forged.option = ResultOption::None;
    if let Some(record) = forged.decision.as_mut() {
        record.needs_review = None;
        record.picked_option = OptionKind::Restriction;
        record.picked_at = None;
    }
    assert_eq!(
        verify(host, &config, &doc, &forged, saved)
            .unwrap_err()
            .code(),
        "decision-mismatch"
    );
    // A time nowhere near the save is refused before any plugin runs.
    let mut ancient = fields(&recall, &decided);
    if let Some(record) = ancient.decision.as_mut() {
        record.call_ended_at = Timestamp::from_millis(i64::MIN);
    }
    assert_eq!(
        verify(host, &config, &doc, &ancient, saved),
        Err(VerifyError::ImpossibleInputs)
    );
}

#[test]
fn a_decision_naming_another_build_or_an_unknown_type_is_refused() {
    let host = shared_host();
    let doc = config_with(BUSINESS_HOURS);
    let config = doc.config().unwrap();
    let facts = CallFacts {
        ended_at: tokyo("2026-11-24 10:00"),
        attempt: 1,
    };
    let saved = tokyo("2026-11-24 10:01");
    let recall = pick("no-answer", OptionKind::Recall, None);
    let decided = decide(host, &doc, &recall, facts, saved).unwrap();
    let mut other_build = fields(&recall, &decided);
    if let Some(record) = other_build.decision.as_mut() {
        record.plugin.version = "9.9.9".to_owned();
    }
    assert_eq!(
        verify(host, &config, &doc, &other_build, saved),
        Err(VerifyError::PluginMismatch)
    );
    let mut unknown_type = fields(&recall, &decided);
    unknown_type.result_type = callsync_core::ResultTypeId::new("voicemail").unwrap();
    assert_eq!(
        verify(host, &config, &doc, &unknown_type, saved)
            .unwrap_err()
            .code(),
        "unknown-result-type"
    );
}
