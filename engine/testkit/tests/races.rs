//! Every race of DOMAIN.md, driven on the simulated network (the real hub and
//! client sessions: admission, rejection, the catch-up cursor, reconnects) and
//! checked on all three replicas' storage (server, desk, phone).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use automerge::{ROOT, ReadDoc, transaction::Transactable};
use callsync_core::{
    AnomalyReason, CallView, CoreError, CustomerStatus, EventKind, Flag, Phase, RecordingRef,
    ResultOption, Timestamp,
};
use callsync_testkit::{MOBILE, NUMBER, PeerId, SimNetwork};

const REP: &str = "rep@a.example";

fn three(seed: u64) -> (SimNetwork, PeerId, PeerId, PeerId) {
    let mut net = SimNetwork::seeded(seed);
    let desk = net.desk(REP);
    let phone = net.phone(REP);
    (net, 0, desk, phone)
}

/// The state of `call` on every peer, asserting they agree.
fn agreed(net: &SimNetwork, call: &callsync_core::CallId) -> CallView {
    let views: Vec<CallView> = net
        .peers()
        .map(|p| net.call_state(p, call).expect("call on every peer"))
        .collect();
    for view in &views[1..] {
        assert_eq!(view, &views[0], "replicas disagree on {call}");
    }
    views[0].clone()
}

fn tomorrow_at_ten() -> Timestamp {
    callsync_testkit::START.plus_millis(24 * 3600 * 1000)
}

#[test]
fn the_whole_call_flow_reaches_completed_on_every_replica() {
    let (mut net, _server, desk, phone) = three(1);
    let call = net.desk_requests_call(desk, NUMBER, phone);
    net.run_until_quiescent();
    assert_eq!(agreed(&net, &call).phase, Phase::AwaitingStart);
    net.advance(10_000);
    net.phone_starts(phone, &call).unwrap();
    net.run_until_quiescent();
    assert_eq!(agreed(&net, &call).phase, Phase::InCall);
    net.advance(120_000);
    net.phone_ends(phone, &call, 120).unwrap();
    net.run_until_quiescent();
    assert_eq!(agreed(&net, &call).phase, Phase::PhoneEnded);
    net.advance(5_000);
    net.desk_ends(desk, &call).unwrap();
    net.run_until_quiescent();
    let view = agreed(&net, &call);
    assert_eq!(view.phase, Phase::AwaitingResult);
    assert_eq!(view.flags, [Flag::RecordingPending]);
    net.save_result(
        desk,
        &call,
        "no-answer",
        ResultOption::Recall {
            at: tomorrow_at_ten(),
        },
    )
    .unwrap();
    net.run_until_quiescent();
    let view = agreed(&net, &call);
    assert_eq!(view.phase, Phase::Completed);
    assert_eq!(view.phone_ended.map(|(_, d)| d), Some(120));
    for peer in net.peers() {
        let customer = net.customer(peer);
        assert_eq!(customer.status.as_str(), CustomerStatus::CONTACTED);
        assert_eq!(customer.recall_at, Some(tomorrow_at_ten()));
    }
}

#[test]
fn cancel_racing_start_is_shown_on_both_devices() {
    for seed in 0..8 {
        let (mut net, server, desk, phone) = three(seed);
        let call = net.desk_requests_call(desk, NUMBER, phone);
        net.run_until_quiescent();
        net.partition(desk, server);
        net.advance(20_000);
        net.desk_cancels(desk, &call).unwrap();
        net.phone_starts(phone, &call).unwrap();
        net.run_until_quiescent();
        net.heal(desk, server);
        net.run_until_quiescent();
        let view = agreed(&net, &call);
        assert_eq!(view.phase, Phase::InCall, "seed {seed}");
        assert!(view.has(Flag::StartedAfterCancel), "seed {seed}");
        // The call really happened: a result is still required after both ends.
        net.advance(30_000);
        net.phone_ends(phone, &call, 30).unwrap();
        net.desk_ends(desk, &call).unwrap();
        net.run_until_quiescent();
        let view = agreed(&net, &call);
        assert_eq!(view.phase, Phase::AwaitingResult);
        assert!(view.has(Flag::StartedAfterCancel));
        for peer in net.peers() {
            let due: Vec<_> = net
                .customer(peer)
                .calls_awaiting_result()
                .map(|c| c.call.clone())
                .collect();
            assert_eq!(
                due,
                std::slice::from_ref(&call),
                "the result is still required on every replica"
            );
        }
    }
}

#[test]
fn a_phone_that_knows_of_the_cancel_cannot_start() {
    let (mut net, _server, desk, phone) = three(2);
    let call = net.desk_requests_call(desk, NUMBER, phone);
    net.desk_cancels(desk, &call).unwrap();
    net.run_until_quiescent();
    let err = net.phone_starts(phone, &call).unwrap_err();
    assert!(
        matches!(
            err,
            CoreError::NotAwaitingStart {
                phase: Phase::Cancelled,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(agreed(&net, &call).phase, Phase::Cancelled);
}

#[test]
fn start_after_the_limit_is_shown_as_started_after_expiry() {
    for seed in 0..8 {
        let (mut net, server, desk, phone) = three(seed);
        let call = net.desk_requests_call(desk, NUMBER, phone);
        net.run_until_quiescent();
        net.partition(phone, server);
        // The phone's clock runs 15 s slow: by its own clock it starts in time.
        net.set_clock_skew(phone, -15_000);
        net.advance(70_000);
        net.phone_starts(phone, &call).unwrap();
        assert_eq!(net.server_expires_due(), std::slice::from_ref(&call));
        net.run_until_quiescent();
        assert_eq!(net.call_state(desk, &call).unwrap().phase, Phase::Expired);
        net.heal(phone, server);
        net.run_until_quiescent();
        let view = agreed(&net, &call);
        assert_eq!(view.phase, Phase::InCall, "seed {seed}");
        assert!(view.has(Flag::StartedAfterExpiry), "seed {seed}");
    }
}

#[test]
fn the_phone_refuses_to_start_past_the_limit_by_its_own_clock() {
    let (mut net, _server, desk, phone) = three(3);
    let call = net.desk_requests_call(desk, NUMBER, phone);
    net.run_until_quiescent();
    net.advance(60_000);
    let err = net.phone_starts(phone, &call).unwrap_err();
    assert!(matches!(err, CoreError::StartLimitPassed { .. }), "{err}");
    assert_eq!(net.server_expires_due(), std::slice::from_ref(&call));
    net.run_until_quiescent();
    assert_eq!(agreed(&net, &call).phase, Phase::Expired);
}

#[test]
fn the_server_does_not_expire_a_request_before_the_limit() {
    let (mut net, _server, desk, phone) = three(4);
    let call = net.desk_requests_call(desk, NUMBER, phone);
    net.run_until_quiescent();
    net.advance(59_999);
    assert!(net.server_expires_due().is_empty());
    let err = net.record(0, &call, EventKind::Expired).unwrap_err();
    assert!(matches!(err, CoreError::NotYetExpired { .. }), "{err}");
}

#[test]
fn browser_ended_before_the_phone_is_flagged_on_every_replica() {
    for seed in 0..8 {
        let (mut net, server, desk, phone) = three(seed);
        let call = net.desk_requests_call(desk, NUMBER, phone);
        net.run_until_quiescent();
        net.advance(5_000);
        net.phone_starts(phone, &call).unwrap();
        net.run_until_quiescent();
        net.partition(phone, server);
        net.advance(60_000);
        net.desk_ends(desk, &call).unwrap();
        net.run_until_quiescent();
        let on_desk = net.call_state(desk, &call).unwrap();
        assert_eq!(on_desk.phase, Phase::BrowserEnded);
        assert!(on_desk.has(Flag::BrowserEndedFirst));
        // A result cannot be saved while the phone has not ended? It can: the rule is
        // the browser's end. But the phone is still in the call, which both sides see.
        net.advance(30_000);
        net.phone_ends(phone, &call, 85).unwrap();
        net.heal(phone, server);
        net.run_until_quiescent();
        let view = agreed(&net, &call);
        assert_eq!(view.phase, Phase::AwaitingResult, "seed {seed}");
        assert!(view.has(Flag::BrowserEndedFirst), "seed {seed}");
    }
}

#[test]
fn ending_in_the_right_order_raises_no_flag() {
    let (mut net, _server, desk, phone) = three(5);
    let call = net.desk_requests_call(desk, NUMBER, phone);
    net.phone_starts(phone, &call).unwrap_err(); // not yet synced: the phone does not know the call
    net.run_until_quiescent();
    net.phone_starts(phone, &call).unwrap();
    net.advance(1_000);
    net.phone_ends(phone, &call, 1).unwrap();
    net.run_until_quiescent();
    net.advance(1_000);
    net.desk_ends(desk, &call).unwrap();
    net.run_until_quiescent();
    let view = agreed(&net, &call);
    assert!(!view.has(Flag::BrowserEndedFirst));
    assert_eq!(view.phase, Phase::AwaitingResult);
}

#[test]
fn results_saved_on_two_devices_are_both_kept_and_the_latest_wins_everywhere() {
    for seed in 0..8 {
        let (mut net, server, desk, phone) = three(seed);
        let call = net.call_awaiting_result(desk, phone);
        net.partition(desk, server);
        net.partition(phone, server);
        net.advance(1_000);
        net.save_result(phone, &call, "no-answer", ResultOption::None)
            .unwrap();
        net.advance(1_000);
        net.save_result(desk, &call, "appointment", ResultOption::None)
            .unwrap();
        net.heal(desk, server);
        net.heal(phone, server);
        net.run_until_quiescent();
        let view = agreed(&net, &call);
        assert_eq!(view.phase, Phase::Completed);
        assert!(view.has(Flag::ConcurrentResults));
        assert_eq!(view.results.len(), 2);
        assert_eq!(
            view.result_in_force().unwrap().fields.result_type.as_str(),
            "appointment",
            "seed {seed}"
        );
        for peer in net.peers() {
            assert_eq!(net.customer(peer).status.as_str(), "アポ獲得");
        }
    }
}

#[test]
fn results_saved_at_the_same_instant_are_decided_by_device_id() {
    let (mut net, server, desk, phone) = three(6);
    let call = net.call_awaiting_result(desk, phone);
    net.partition(desk, server);
    net.partition(phone, server);
    net.save_result(desk, &call, "appointment", ResultOption::None)
        .unwrap();
    net.save_result(phone, &call, "no-answer", ResultOption::None)
        .unwrap();
    net.heal(desk, server);
    net.heal(phone, server);
    net.run_until_quiescent();
    let view = agreed(&net, &call);
    // Same time: the larger device id ("phone-2" > "desk-1") is in force.
    assert_eq!(
        view.result_in_force().unwrap().stamp.device.as_str(),
        "phone-2"
    );
}

#[test]
fn a_result_for_a_call_that_never_started_is_refused_and_a_forged_one_is_ignored_everywhere() {
    let (mut net, server, desk, phone) = three(7);
    let call = net.desk_requests_call(desk, NUMBER, phone);
    net.desk_cancels(desk, &call).unwrap();
    net.run_until_quiescent();
    let err = net
        .save_result(desk, &call, "no-answer", ResultOption::None)
        .unwrap_err();
    assert!(matches!(err, CoreError::CallNeverStarted { .. }), "{err}");
    // A misbehaving replica writes one anyway, bypassing the rules: the server's
    // admission refuses it, and the replica forgets it (fetching the server's copy).
    let forged = serde_json::json!({
        "id": "forged-1", "call": call.as_str(),
        "stamp": {"at": 1_795_482_100_000_i64, "device": "desk-1", "device_kind": "desk", "user": REP},
        "kind": {"result-saved": {"result_type": "no-answer", "option": {"kind": "none"}}}
    });
    forge(&mut net, desk, &format!("{call}/forged-1"), &forged);
    net.run_until_quiescent();
    let view = agreed(&net, &call);
    assert_eq!(view.phase, Phase::Cancelled);
    assert!(view.results.is_empty());
    assert!(view.anomalies.is_empty(), "{:?}", view.anomalies);
    for peer in net.peers() {
        assert!(!net.event_keys(peer).contains(&format!("{call}/forged-1")));
    }
    // Had one slipped into the server's own copy, every replica would still ignore
    // it the same way.
    forge(&mut net, server, &format!("{call}/forged-1"), &forged);
    net.run_until_quiescent();
    let view = agreed(&net, &call);
    assert_eq!(view.phase, Phase::Cancelled);
    assert!(view.results.is_empty());
    assert_eq!(view.anomalies.len(), 1);
    assert_eq!(view.anomalies[0].reason, AnomalyReason::NeverStarted);
}

/// Plays a misbehaving replica: writes `event` under `key` straight into the
/// Automerge document, bypassing the rules.
fn forge(net: &mut SimNetwork, peer: PeerId, key: &str, event: &serde_json::Value) {
    net.with_doc(peer, |doc| {
        let doc = doc.automerge_mut();
        let events = doc.get(ROOT, "events").unwrap().unwrap().1;
        doc.put(&events, key, event.to_string()).unwrap();
        doc.commit();
    });
}

#[test]
fn only_the_origin_phone_may_start_and_a_forged_start_is_ignored() {
    let mut net = SimNetwork::seeded(8);
    let desk = net.desk(REP);
    let phone = net.phone(REP);
    let other_phone = net.phone("other@a.example");
    let call = net.desk_requests_call(desk, MOBILE, phone);
    net.run_until_quiescent();
    let err = net.phone_starts(other_phone, &call).unwrap_err();
    assert!(matches!(err, CoreError::NotOriginPhone { .. }), "{err}");
    let err = net.record(desk, &call, EventKind::Started).unwrap_err();
    assert!(matches!(err, CoreError::WrongDeviceKind { .. }), "{err}");
    let forged = serde_json::json!({
        "id": "forged-2", "call": call.as_str(),
        "stamp": {"at": 1_795_482_010_000_i64, "device": "phone-3", "device_kind": "phone", "user": "other@a.example"},
        "kind": "started"
    });
    // The server refuses it (not the origin phone), and the forger forgets it.
    forge(&mut net, other_phone, &format!("{call}/forged-2"), &forged);
    net.run_until_quiescent();
    let view = agreed(&net, &call);
    assert_eq!(view.phase, Phase::AwaitingStart);
    assert!(view.anomalies.is_empty(), "{:?}", view.anomalies);
    for peer in net.peers() {
        assert!(!net.event_keys(peer).contains(&format!("{call}/forged-2")));
    }
    // Had it slipped into the server's copy, every replica would ignore it, and
    // the timeline shows it marked as ignored everywhere.
    forge(&mut net, 0, &format!("{call}/forged-2"), &forged);
    net.run_until_quiescent();
    let view = agreed(&net, &call);
    assert_eq!(view.phase, Phase::AwaitingStart);
    assert_eq!(view.anomalies[0].reason, AnomalyReason::NotOriginPhone);
    for peer in net.peers() {
        let timeline = net.with_doc(peer, |d| d.timeline());
        let forged = timeline
            .iter()
            .find(|e| e.event.as_str() == "forged-2")
            .unwrap();
        assert_eq!(forged.ignored, Some(AnomalyReason::NotOriginPhone));
        assert!(
            timeline
                .iter()
                .filter(|e| e.event.as_str() != "forged-2")
                .all(|e| e.ignored.is_none())
        );
    }
}

#[test]
fn a_recording_deleted_before_its_upload_finishes_stays_deleted() {
    let (mut net, server, desk, phone) = three(9);
    // Deleting a recording takes a manager (the server refuses a user's).
    net.set_role(desk, callsync_core::Role::Manager);
    let call = net.call_awaiting_result(desk, phone);
    assert!(agreed(&net, &call).has(Flag::RecordingPending));
    net.partition(desk, server);
    net.record(desk, &call, EventKind::RecordingDeleted)
        .unwrap();
    let recording = RecordingRef {
        sha256: "ab".repeat(32),
        size: 1_000,
        duration_ms: 10_000,
        format: "wav/pcm16".into(),
    };
    net.record(server, &call, EventKind::RecordingAttached(recording))
        .unwrap();
    net.heal(desk, server);
    net.run_until_quiescent();
    let view = agreed(&net, &call);
    assert!(view.has(Flag::RecordingDeleted));
    assert!(!view.has(Flag::RecordingStored));
}

#[test]
fn a_new_request_is_refused_while_a_result_is_pending_and_during_a_restriction() {
    let (mut net, _server, desk, phone) = three(10);
    let call = net.call_awaiting_result(desk, phone);
    let second = callsync_core::CallId::new("call-second").unwrap();
    let request = |net: &SimNetwork| EventKind::Requested {
        destination: callsync_core::PhoneNumber::parse(NUMBER).unwrap(),
        origin: net.device_id(phone).clone(),
        recording: true,
    };
    let err = net.record(desk, &second, request(&net)).unwrap_err();
    assert!(matches!(err, CoreError::PendingResult { .. }), "{err}");
    let until = tomorrow_at_ten();
    net.save_result(
        desk,
        &call,
        "do-not-call",
        ResultOption::Restriction { until },
    )
    .unwrap();
    net.run_until_quiescent();
    // The restriction reaches the phone's replica too, so it holds offline.
    for peer in net.peers() {
        assert_eq!(net.customer(peer).restricted_until(net.now()), Some(until));
    }
    let err = net.record(desk, &second, request(&net)).unwrap_err();
    assert_eq!(err, CoreError::CustomerRestricted { until });
    net.advance(24 * 3600 * 1000);
    net.record(desk, &second, request(&net)).unwrap();
}

#[test]
fn a_later_result_of_another_kind_does_not_lift_a_call_restriction() {
    let (mut net, _server, desk, phone) = three(11);
    let call = net.call_awaiting_result(desk, phone);
    let until = tomorrow_at_ten();
    net.save_result(
        desk,
        &call,
        "do-not-call",
        ResultOption::Restriction { until },
    )
    .unwrap();
    // The customer calls back; the rep logs it by hand with a plain result.
    net.advance(60_000);
    let manual = callsync_core::CallId::new("manual-1").unwrap();
    let number = callsync_core::PhoneNumber::parse(NUMBER).unwrap();
    net.record(desk, &manual, EventKind::ManualCall { number })
        .unwrap();
    net.save_result(
        desk,
        &manual,
        "no-answer",
        ResultOption::Recall { at: until },
    )
    .unwrap();
    net.run_until_quiescent();
    for peer in net.peers() {
        let customer = net.customer(peer);
        assert_eq!(
            customer.restricted_until(net.now()),
            Some(until),
            "peer {peer}"
        );
        assert_eq!(customer.recall_at, Some(until));
    }
}

#[test]
fn a_restriction_kept_for_review_without_a_decision_restricts_nothing_on_any_replica() {
    use callsync_core::plugin::{ContentHash, DecisionRecord, PluginRef};
    use callsync_core::{ResultTypeId, SavedResultFields};
    let (mut net, _server, desk, phone) = three(12);
    let call = net.call_awaiting_result(desk, phone);
    let until = tomorrow_at_ten();
    // A result whose rules "failed" on the device (a deadline, which depends on
    // the machine): the pick was kept as made and never checked by the rules.
    let decision = DecisionRecord {
        ruleset: ContentHash::from_bytes([1; 32]),
        plugin: PluginRef {
            id: "standard".to_owned(),
            version: "1.0.0".to_owned(),
            hash: ContentHash::from_bytes([2; 32]),
        },
        picked_option: callsync_core::OptionKind::Restriction,
        picked_at: Some(until),
        picked_status: None,
        call_ended_at: net.now(),
        attempt: 1,
        reason: "kept for review".to_owned(),
        needs_review: Some("deadline: the plugin ran out of time".to_owned()),
    };
    let fields = SavedResultFields {
        result_type: ResultTypeId::new("do-not-call").unwrap(),
        option: ResultOption::Restriction { until },
        customer_status: None,
        memo: String::new(),
        decision: Some(Box::new(decision)),
        kept_as_picked: None,
    };
    net.record(desk, &call, EventKind::ResultSaved(fields))
        .unwrap();
    net.run_until_quiescent();
    for peer in net.peers() {
        let customer = net.customer(peer);
        assert_eq!(customer.restricted_until(net.now()), None, "peer {peer}");
        assert_eq!(
            net.call_state(peer, &call).unwrap().phase,
            Phase::Completed,
            "the result itself counts"
        );
    }
}

#[test]
fn past_the_tenants_share_of_plugin_time_a_result_is_answered_busy_and_arrives_later() {
    let (mut net, server, desk, phone) = three(31);
    // Each re-checked result costs a minute of plugin time: the first spends the
    // 2 s burst and more, the second finds none left.
    net.set_plugin_cost_ms(60_000);
    let first = net.call_awaiting_result(desk, phone);
    net.save_result(desk, &first, "no-answer", ResultOption::None)
        .unwrap();
    net.run_until_quiescent();
    assert_eq!(agreed(&net, &first).phase, Phase::Completed);
    let second = net.call_awaiting_result(desk, phone);
    net.save_result(desk, &second, "no-answer", ResultOption::None)
        .unwrap();
    let errors_before = net.delivered().iter().filter(|d| d.kind == "error").count();
    // The desk sends it, is told to come back later, reconnects and is told again
    // (the allowance refills at 250 ms a second of the server's clock).
    net.run_steps(400);
    let busy = net.delivered().iter().filter(|d| d.kind == "error").count() - errors_before;
    assert!(busy >= 1, "the desk was not told to come back later");
    assert_eq!(
        net.call_state(server, &second).map(|v| v.phase),
        Some(Phase::AwaitingResult),
        "a result past the tenant's share was stored"
    );
    // Four minutes later the tenant has plugin time again: the result arrives,
    // nothing of it refused or lost.
    net.partition(desk, server);
    net.advance(240_000);
    net.heal(desk, server);
    net.run_until_quiescent();
    assert_eq!(agreed(&net, &second).phase, Phase::Completed);
}
