//! The device session on the simulated network: one clock (the server's) however
//! wrong a device's own is, refusals that stop what must stop, reconnect timing
//! in virtual time, the result flow online and offline, logout with unsent work,
//! and a disk that fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use callsync_core::wire::{Refusal, RpcCall, RpcResult};
use callsync_core::{CallId, CoreError, Flag, OptionKind, Phase, ResultTypeId, Timestamp};
use callsync_session::client::ClientEvent;
use callsync_session::device::actions::{ResultForm, SaveOutcome};
use callsync_session::device::{Phase as LinkPhase, StopReason};
use callsync_testkit::{NUMBER, PeerId, SimNetwork};
use proptest::prelude::*;

const REP: &str = "rep@a.example";
const TEN_MINUTES: i64 = 10 * 60 * 1000;

fn three(seed: u64) -> (SimNetwork, PeerId, PeerId, PeerId) {
    let mut net = SimNetwork::seeded(seed);
    let server = net.server();
    let desk = net.desk(REP);
    let phone = net.phone(REP);
    net.run_until_quiescent();
    (net, server, desk, phone)
}

/// The device's link drops and comes back: it joins again (and learns the
/// server's clock again).
fn rejoin(net: &mut SimNetwork, peer: PeerId) {
    net.partition(peer, 0);
    net.heal(peer, 0);
    net.run_until_quiescent();
}

fn form(result_type: &str) -> ResultForm {
    ResultForm {
        result_type: ResultTypeId::new(result_type).unwrap(),
        option: OptionKind::None,
        at: None,
        customer_status: None,
        memo: "折り返し希望".to_owned(),
    }
}

/// Runs a call from request to a result decided by the server's rules; every
/// step must be accepted.
fn whole_call(net: &mut SimNetwork, desk: PeerId, phone: PeerId) -> CallId {
    let call = net.desk_requests_call(desk, NUMBER, phone);
    net.run_until_quiescent();
    net.advance(20_000);
    net.phone_starts(phone, &call).expect("start");
    net.run_until_quiescent();
    net.advance(90_000);
    net.phone_ends(phone, &call, 90).expect("phone end");
    net.desk_ends(desk, &call).expect("desk end");
    net.run_until_quiescent();
    let outcome = net
        .save_result_form(desk, &call, form("appointment"))
        .expect("save");
    assert!(
        matches!(outcome, SaveOutcome::Deciding { .. }),
        "{outcome:?}"
    );
    net.run_until_quiescent();
    call
}

#[test]
fn devices_ten_minutes_fast_or_slow_complete_a_call_on_the_server_s_clock() {
    for (desk_skew, phone_skew) in [
        (0, TEN_MINUTES),
        (0, -TEN_MINUTES),
        (TEN_MINUTES, 0),
        (-TEN_MINUTES, 0),
        (TEN_MINUTES, -TEN_MINUTES),
        (-TEN_MINUTES, TEN_MINUTES),
    ] {
        let (mut net, server, desk, phone) = three(5);
        net.set_clock_skew(desk, desk_skew);
        net.set_clock_skew(phone, phone_skew);
        rejoin(&mut net, desk);
        rejoin(&mut net, phone);
        assert_eq!(
            net.session(phone).clock().unwrap().offset_ms,
            -phone_skew,
            "the phone learnt its offset at the join"
        );
        let call = whole_call(&mut net, desk, phone);
        let view = net.call_state(server, &call).unwrap();
        assert_eq!(view.phase, Phase::Completed, "{desk_skew} {phone_skew}");
        // Recorded, the recording not uploaded yet; no race.
        assert_eq!(
            view.flags,
            [Flag::RecordingPending],
            "{desk_skew} {phone_skew}"
        );
        // Every stamp is on the server's clock, the device's own beside it.
        let start = net.now().plus_millis(-200_000);
        let origin = &view.origin_stamp;
        assert!(origin.at >= start && origin.at <= net.now(), "{origin:?}");
        assert_eq!(
            origin.device_at,
            Some(origin.at.plus_millis(desk_skew)),
            "{origin:?}"
        );
        let result = view.result_in_force().unwrap();
        assert!(result.fields.decision.is_some(), "decided by the rules");
        assert_eq!(result.stamp.at, net.now());
        for peer in [desk, phone] {
            assert_eq!(net.call_state(peer, &call), Some(view.clone()));
        }
    }
}

#[test]
fn a_clock_set_ten_minutes_fast_while_offline_is_off_until_the_next_join() {
    let (mut net, _server, desk, phone) = three(6);
    let call = net.desk_requests_call(desk, NUMBER, phone);
    net.run_until_quiescent();
    // Set after the join: the kept offset does not know, so by the session's
    // reckoning the limit has passed.
    net.set_clock_skew(phone, TEN_MINUTES);
    let err = net.phone_starts(phone, &call).unwrap_err();
    assert!(matches!(err, CoreError::StartLimitPassed { .. }), "{err}");
    // The next join puts it right.
    rejoin(&mut net, phone);
    net.phone_starts(phone, &call)
        .expect("start after the join");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, rng_seed: proptest::test_runner::RngSeed::Fixed(19), ..ProptestConfig::default() })]

    /// Whatever each device's clock says (up to a day off either way), an honest
    /// rep's call is accepted at every step once the devices have joined.
    #[test]
    fn honest_calls_succeed_whatever_the_device_clocks_say(
        seed in any::<u64>(),
        desk_skew in -86_400i64..86_400,
        phone_skew in -86_400i64..86_400,
    ) {
        let (mut net, server, desk, phone) = three(seed);
        net.set_clock_skew(desk, desk_skew * 1000);
        net.set_clock_skew(phone, phone_skew * 1000);
        rejoin(&mut net, desk);
        rejoin(&mut net, phone);
        let call = whole_call(&mut net, desk, phone);
        let view = net.call_state(server, &call).unwrap();
        prop_assert_eq!(view.phase, Phase::Completed);
        prop_assert_eq!(&view.flags, &[Flag::RecordingPending]);
    }
}

#[test]
fn a_revoked_contract_stops_the_session_in_the_manual_s_words_and_keeps_unsent_work() {
    let (mut net, _server, desk, phone) = three(7);
    net.partition(desk, 0);
    let call = net.desk_requests_call(desk, NUMBER, phone);
    net.heal(desk, 0);
    // The contract is revoked before the desk's change arrives.
    net.end_sessions(desk, Refusal::ContractRequired);
    net.run_until_quiescent();
    assert_eq!(net.phase(desk), LinkPhase::Stopped);
    assert_eq!(net.stop_reason(desk), Some(StopReason::SessionEnded));
    let (_, ja) = StopReason::SessionEnded.words();
    assert!(
        net.events(desk)
            .iter()
            .any(|e| matches!(e, ClientEvent::Stopped { message_ja, .. } if message_ja == ja))
    );
    // Nothing was dropped: the request waits in the outbox and the ledger.
    assert!(net.call_state(desk, &call).is_some());
    assert_eq!(net.outbox(desk).len(), 1);
    assert_eq!(net.unsent(desk).events, 1);
    // And no connection is tried any more.
    let before = net.delivered().len();
    net.advance(60_000);
    net.run_until_quiescent();
    assert_eq!(net.delivered().len(), before);
}

#[test]
fn a_contract_revoked_while_online_says_authentication_is_required() {
    let (mut net, _server, desk, _phone) = three(8);
    net.end_sessions(desk, Refusal::ContractRequired);
    net.run_until_quiescent();
    assert_eq!(net.stop_reason(desk), Some(StopReason::ContractRevoked));
    assert!(net.events(desk).iter().any(|e| matches!(
        e,
        ClientEvent::Stopped { message_ja, .. } if message_ja == "このデータへのアクセスには認証が必要です"
    )));
    assert_eq!(
        net.session(desk).identity().token,
        None,
        "back to the login"
    );
    // The same user logging in again goes on where they were.
    net.login_again(desk);
    net.run_until_quiescent();
    assert_eq!(net.phase(desk), LinkPhase::Online);
}

#[test]
fn a_password_reset_while_online_ends_the_session_and_says_why() {
    let (mut net, _server, desk, phone) = three(9);
    net.end_sessions(desk, Refusal::InvalidSession);
    net.run_until_quiescent();
    for peer in [desk, phone] {
        assert_eq!(net.stop_reason(peer), Some(StopReason::SessionEnded));
        assert_eq!(net.session(peer).identity().token, None);
    }
    // An action now is refused in the same words, and saves nothing.
    assert_eq!(net.unsent(desk).events, 0);
}

#[test]
fn reconnects_back_off_exponentially_with_jitter_and_cap() {
    let (mut net, _server, desk, _phone) = three(10);
    net.set_backoff(1_000, 8_000);
    net.set_server_unreachable(true);
    net.partition(desk, 0);
    net.heal(desk, 0);
    net.take_events(desk);
    let mut waits = Vec::new();
    let mut last = net.now();
    for _ in 0..8 {
        let retry = net.session(desk).retry_at().expect("waiting to retry");
        waits.push(retry.as_millis() - last.as_millis());
        net.advance(retry.as_millis() - net.now().as_millis());
        last = net.now();
        net.run_until_quiescent();
    }
    // The cut was the first failure (1 s), the failed attempt after the heal
    // the second: 2 s, 4 s, then 8 s at most, each between half and the whole.
    let bases = [2_000, 4_000, 8_000, 8_000, 8_000, 8_000, 8_000, 8_000];
    for (wait, base) in waits.iter().zip(bases) {
        assert!(*wait >= base / 2 && *wait <= base, "{waits:?}");
    }
    assert!(
        waits.windows(2).any(|w| w[0] != w[1]),
        "jittered: {waits:?}"
    );
    // The server is back: the next attempt joins, and the count starts over.
    net.set_server_unreachable(false);
    let retry = net.session(desk).retry_at().unwrap();
    net.advance(retry.as_millis() - net.now().as_millis());
    net.run_until_quiescent();
    assert_eq!(net.phase(desk), LinkPhase::Online);
}

#[test]
fn a_join_the_server_never_answers_is_given_up_after_the_handshake_time() {
    let (mut net, _server, desk, _phone) = three(11);
    net.set_backoff(1_000, 1_000);
    net.set_server_silent(true);
    net.partition(desk, 0);
    net.heal(desk, 0);
    net.run_until_quiescent();
    assert_eq!(net.phase(desk), LinkPhase::Connecting);
    net.advance(15_000);
    net.run_until_quiescent();
    assert_eq!(net.phase(desk), LinkPhase::Offline);
    net.set_server_silent(false);
    net.advance(1_000);
    net.run_until_quiescent();
    assert_eq!(net.phase(desk), LinkPhase::Online);
}

#[test]
fn a_question_asked_offline_is_sent_at_the_join_and_one_unanswered_fails() {
    let (mut net, _server, desk, _phone) = three(12);
    net.partition(desk, 0);
    let ticket = net.ask(desk, RpcCall::Devices);
    net.heal(desk, 0);
    net.run_until_quiescent();
    assert!(net.events(desk).iter().any(|e| matches!(
        e,
        ClientEvent::Reply { ticket: t, result: RpcResult::Devices(_) } if *t == ticket
    )));
    net.set_server_silent(true);
    let ticket = net.ask(desk, RpcCall::Devices);
    net.run_until_quiescent();
    net.advance(10_000);
    net.run_until_quiescent();
    assert!(net.events(desk).iter().any(|e| matches!(
        e,
        ClientEvent::AskFailed { ticket: t, code, .. } if *t == ticket && code == "no-answer"
    )));
}

/// A call of `desk`'s, ended on both sides, waiting for its result.
fn ended_call(net: &mut SimNetwork, desk: PeerId, phone: PeerId) -> CallId {
    let call = net.desk_requests_call(desk, NUMBER, phone);
    net.run_until_quiescent();
    net.phone_starts(phone, &call).unwrap();
    net.phone_ends(phone, &call, 30).unwrap();
    net.run_until_quiescent();
    net.desk_ends(desk, &call).unwrap();
    net.run_until_quiescent();
    call
}

#[test]
fn offline_the_pick_is_saved_as_made_and_says_why() {
    let (mut net, server, desk, phone) = three(13);
    let call = ended_call(&mut net, desk, phone);
    net.partition(desk, 0);
    let outcome = net
        .save_result_form(desk, &call, form("no-answer"))
        .unwrap();
    assert!(
        matches!(
            outcome,
            SaveOutcome::Saved(
                _,
                Some(callsync_session::device::actions::KeptReason::Offline)
            )
        ),
        "{outcome:?}"
    );
    net.heal(desk, 0);
    net.run_until_quiescent();
    let result = net.call_state(server, &call).unwrap();
    let result = result.result_in_force().unwrap();
    assert_eq!(result.fields.kept_as_picked.as_deref(), Some("offline"));
    assert!(result.fields.decision.is_none());
    assert_eq!(net.unsent(desk).results, 0, "confirmed by the server");
}

#[test]
fn a_busy_server_or_a_lost_connection_keeps_the_pick_and_a_rule_refusal_keeps_the_form() {
    // Busy.
    let (mut net, server, desk, phone) = three(14);
    let call = ended_call(&mut net, desk, phone);
    net.set_decide_busy(true);
    let SaveOutcome::Deciding { ticket } = net
        .save_result_form(desk, &call, form("no-answer"))
        .unwrap()
    else {
        panic!("online: the server decides");
    };
    net.run_until_quiescent();
    assert!(net.events(desk).iter().any(|e| matches!(
        e,
        ClientEvent::ResultSaved { ticket: t, kept_as_picked: Some(k), .. } if *t == ticket && k == "server-trouble"
    )));
    assert!(
        net.call_state(server, &call)
            .unwrap()
            .result_in_force()
            .is_some()
    );

    // The connection drops while the server decides.
    let (mut net, server, desk, phone) = three(15);
    let call = ended_call(&mut net, desk, phone);
    net.save_result_form(desk, &call, form("no-answer"))
        .unwrap();
    net.partition(desk, 0);
    net.heal(desk, 0);
    net.run_until_quiescent();
    let view = net.call_state(server, &call).unwrap();
    assert_eq!(
        view.result_in_force()
            .unwrap()
            .fields
            .kept_as_picked
            .as_deref(),
        Some("connection-lost")
    );

    // The rules refuse the pick (a recall with no time): nothing is saved.
    let (mut net, _server, desk, phone) = three(16);
    let call = ended_call(&mut net, desk, phone);
    let mut recall = form("no-answer");
    recall.option = OptionKind::Recall;
    let SaveOutcome::Deciding { ticket } = net.save_result_form(desk, &call, recall).unwrap()
    else {
        panic!("online: the server decides");
    };
    net.run_until_quiescent();
    assert!(net.events(desk).iter().any(|e| matches!(
        e,
        ClientEvent::ResultRefused { ticket: t, code, .. } if *t == ticket && code == "result-not-decided"
    )));
    assert!(net.call_state(desk, &call).unwrap().results.is_empty());
    // Offline, a recall with no time is the rep's to fill in.
    net.partition(desk, 0);
    let mut recall = form("no-answer");
    recall.option = OptionKind::Recall;
    let err = net.save_result_form(desk, &call, recall).unwrap_err();
    assert_eq!(err.code(), "option-time-required");
}

#[test]
fn logging_out_offline_keeps_unsent_results_for_the_same_user_s_next_login() {
    let (mut net, server, desk, phone) = three(17);
    let call = ended_call(&mut net, desk, phone);
    net.partition(desk, 0);
    net.save_result_form(desk, &call, form("no-answer"))
        .unwrap();
    assert_eq!(net.unsent(desk).results, 1);
    net.logout(desk);
    assert_eq!(net.stop_reason(desk), Some(StopReason::LoggedOut));
    let identity = net.session(desk).identity().clone();
    assert_eq!(identity.token, None);
    assert!(
        !identity.revoke.is_empty(),
        "the token is ended at the next chance"
    );
    // Back online: the token is ended on the server; the result is not sent
    // under a session that is over.
    net.heal(desk, 0);
    net.run_until_quiescent();
    assert!(net.session(desk).identity().revoke.is_empty());
    assert!(net.delivered().iter().any(|d| d.kind == "logout"));
    assert!(net.call_state(server, &call).unwrap().results.is_empty());
    assert_eq!(net.unsent(desk).results, 1, "kept");
    // The same user logs in again: the result goes, once.
    net.login_again(desk);
    net.run_until_quiescent();
    let view = net.call_state(server, &call).unwrap();
    assert_eq!(view.results.len(), 1);
    assert_eq!(net.unsent(desk).results, 0);
}

#[test]
fn logging_out_online_sends_unsent_work_first_then_ends_the_session() {
    let (mut net, server, desk, phone) = three(18);
    let call = ended_call(&mut net, desk, phone);
    net.partition(desk, 0);
    net.save_result_form(desk, &call, form("no-answer"))
        .unwrap();
    net.heal(desk, 0);
    // Online again, the result not yet confirmed: the logout waits for it.
    net.run_steps(1);
    net.logout(desk);
    net.run_until_quiescent();
    assert_eq!(net.call_state(server, &call).unwrap().results.len(), 1);
    assert_eq!(net.stop_reason(desk), Some(StopReason::LoggedOut));
    assert!(
        net.session(desk).identity().revoke.is_empty(),
        "ended on the server"
    );
    // The ended token no longer joins.
    assert_eq!(net.unsent(desk).events, 0);
}

#[test]
fn a_failing_disk_sends_nothing_and_says_so() {
    let (mut net, server, desk, phone) = three(20);
    net.set_disk_failing(desk, true);
    let _ = net.record(
        desk,
        &CallId::new("call-lost").unwrap(),
        callsync_core::EventKind::Requested {
            destination: callsync_core::PhoneNumber::parse(NUMBER).unwrap(),
            origin: net.device_id(phone).clone(),
            recording: true,
        },
    );
    assert!(net.events(desk).iter().any(
        |e| matches!(e, ClientEvent::Disconnected { reason, .. } if reason == "storage failed")
    ));
    net.set_disk_failing(desk, false);
    net.run_until_quiescent();
    assert!(
        net.call_state(server, &CallId::new("call-lost").unwrap())
            .is_none(),
        "never sent"
    );
    assert!(
        net.call_state(desk, &CallId::new("call-lost").unwrap())
            .is_none()
    );
    assert_eq!(net.phase(desk), LinkPhase::Online);
    let _ = Timestamp::from_millis(0);
}

#[test]
fn the_customer_list_comes_a_page_at_a_time_and_a_search_finds_the_last_customer() {
    let (mut net, _server, desk, _phone) = three(21);
    net.add_customers(250);
    net.list_customers(desk, None);
    net.run_until_quiescent();
    let listing = net.customer_listing(desk);
    assert_eq!(listing.rows.len(), 100);
    assert!(!listing.complete && !listing.loading);
    while net.more_customers(desk).is_some() {
        net.run_until_quiescent();
    }
    let listing = net.customer_listing(desk);
    assert_eq!(listing.rows.len(), 251, "every customer once");
    assert!(listing.complete);
    let mut ids: Vec<_> = listing.rows.iter().map(|r| r.id.clone()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 251);
    // A search goes to the server and starts the list over; case does not matter.
    let last = listing.rows.last().unwrap().id.to_string();
    let typed = format!("  {} ", last.to_uppercase());
    net.list_customers(desk, Some(&typed));
    net.run_until_quiescent();
    let listing = net.customer_listing(desk);
    assert_eq!(listing.query.as_deref(), Some(last.to_uppercase().as_str()));
    assert_eq!(
        listing
            .rows
            .iter()
            .map(|r| r.id.to_string())
            .collect::<Vec<_>>(),
        [last]
    );
    assert!(listing.complete);
    // Asked offline, the first page waits for the join.
    net.partition(desk, 0);
    net.list_customers(desk, Some("さくら"));
    assert!(net.customer_listing(desk).loading);
    net.heal(desk, 0);
    net.run_until_quiescent();
    let listing = net.customer_listing(desk);
    assert_eq!(
        listing.rows.len(),
        100,
        "the first page: every sample is さくら"
    );
    assert!(!listing.complete);
}

#[test]
fn a_search_longer_than_the_limit_is_refused() {
    let (mut net, _server, desk, _phone) = three(22);
    let ticket = net.ask(
        desk,
        RpcCall::CustomerList {
            after: None,
            limit: Some(10),
            query: Some("あ".repeat(101)),
        },
    );
    net.run_until_quiescent();
    assert!(net.events(desk).iter().any(|e| matches!(
        e,
        ClientEvent::Reply { ticket: t, result: RpcResult::Refused(body) } if *t == ticket && body.code == "bad-request"
    )));
}

#[test]
fn a_role_changed_on_the_server_reaches_the_device_at_its_next_join() {
    let (mut net, _server, desk, _phone) = three(23);
    net.set_role(desk, callsync_core::Role::Manager);
    net.run_until_quiescent();
    assert!(net.events(desk).iter().any(|e| matches!(
        e,
        ClientEvent::RoleChanged {
            role: callsync_core::Role::Manager
        }
    )));
    assert_eq!(
        net.session(desk).identity().role,
        callsync_core::Role::Manager
    );
    assert_eq!(net.phase(desk), LinkPhase::Online);
}

#[test]
fn a_logout_while_the_server_decides_waits_for_the_result_and_sends_it() {
    let (mut net, server, desk, phone) = three(24);
    let call = ended_call(&mut net, desk, phone);
    let outcome = net
        .save_result_form(desk, &call, form("no-answer"))
        .unwrap();
    assert!(matches!(outcome, SaveOutcome::Deciding { .. }));
    assert_eq!(net.unsent(desk).results, 1, "a result being decided counts");
    net.logout(desk);
    net.run_until_quiescent();
    let view = net.call_state(server, &call).unwrap();
    let result = view.result_in_force().expect("delivered before the logout");
    assert!(result.fields.decision.is_some(), "decided by the rules");
    assert_eq!(net.stop_reason(desk), Some(StopReason::LoggedOut));
    assert!(net.session(desk).identity().revoke.is_empty());
}

#[test]
fn two_logouts_made_offline_end_both_tokens_when_the_network_returns() {
    let (mut net, _server, desk, _phone) = three(25);
    net.partition(desk, 0);
    net.logout(desk);
    net.login_again(desk);
    net.logout(desk);
    assert_eq!(net.session(desk).identity().revoke.len(), 2);
    net.heal(desk, 0);
    net.run_until_quiescent();
    assert!(net.session(desk).identity().revoke.is_empty());
    let logouts = net
        .delivered()
        .iter()
        .filter(|d| d.kind == "logout")
        .count();
    assert_eq!(logouts, 2, "each token ended");
}

fn reply_to(net: &SimNetwork, peer: PeerId, ticket: u64) -> Option<RpcResult> {
    net.events(peer).iter().find_map(|e| match e {
        ClientEvent::Reply { ticket: t, result } if *t == ticket => Some(result.clone()),
        _ => None,
    })
}

#[test]
fn a_phone_s_upload_status_reaches_its_user_s_other_devices_only_and_goes_with_the_phone() {
    use callsync_core::{UploadState, UploadStatus};
    let (mut net, _server, desk, phone) = three(31);
    let boss = net.desk("boss@a.example");
    net.run_until_quiescent();
    let c1 = CallId::new("call-rec-1").unwrap();
    let said = |state| RpcCall::UploadStatus {
        uploads: vec![UploadStatus {
            call: c1.clone(),
            state,
        }],
    };
    let ticket = net.ask(phone, said(UploadState::WaitingForWifi));
    net.run_until_quiescent();
    assert_eq!(reply_to(&net, phone, ticket), Some(RpcResult::Done));
    assert_eq!(
        net.session(desk).upload_of(&c1),
        Some(UploadState::WaitingForWifi)
    );
    assert_eq!(
        net.session(boss).upload_of(&c1),
        None,
        "another user hears nothing"
    );
    assert!(
        !net.events(boss)
            .iter()
            .any(|e| matches!(e, ClientEvent::PhoneUploads { .. }))
    );

    // Too soon after the last: refused, and the desk keeps what it heard.
    let ticket = net.ask(phone, said(UploadState::Uploading { percent: 40 }));
    net.run_until_quiescent();
    let refused = reply_to(&net, phone, ticket);
    assert!(
        matches!(&refused, Some(RpcResult::Refused(body)) if body.code == "busy"),
        "{refused:?}"
    );
    assert_eq!(
        net.session(desk).upload_of(&c1),
        Some(UploadState::WaitingForWifi)
    );
    net.advance(callsync_session::hub::UPLOAD_STATUS_GAP_MS);
    net.ask(phone, said(UploadState::Uploading { percent: 40 }));
    net.run_until_quiescent();
    let uploading = Some(UploadState::Uploading { percent: 40 });
    assert_eq!(net.session(desk).upload_of(&c1), uploading);

    // Only a phone says it.
    let ticket = net.ask(desk, said(UploadState::Queued));
    net.run_until_quiescent();
    let refused = reply_to(&net, desk, ticket);
    assert!(
        matches!(&refused, Some(RpcResult::Refused(body)) if body.code == "bad-request"),
        "{refused:?}"
    );

    // A desk that reconnects forgets, then hears it again at its join.
    net.partition(desk, 0);
    assert_eq!(
        net.session(desk).upload_of(&c1),
        None,
        "offline, nothing is known"
    );
    net.heal(desk, 0);
    net.run_until_quiescent();
    assert_eq!(net.session(desk).upload_of(&c1), uploading);

    // The phone goes away: its user's devices hear it holds nothing they can follow.
    net.partition(phone, 0);
    net.run_until_quiescent();
    assert_eq!(net.session(desk).upload_of(&c1), None);
}
