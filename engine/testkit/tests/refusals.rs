//! The core's remaining refusal paths: each gives its typed error and leaves the
//! replica's document exactly as it was (same heads).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use callsync_core::{
    ActorId, CallEvent, CallId, CoreError, CustomerDoc, EventKind, PhoneEntry, PhoneNumber,
    ResultOption, ResultTypeId, SavedResultFields,
};
use callsync_testkit::{NUMBER, PeerId, START, SimNetwork, sample_customer};

const REP: &str = "rep@a.example";

/// Asserts that `act` is refused with an error matching `expected` and that the
/// peer's document did not change.
fn refused_unchanged(
    net: &mut SimNetwork,
    peer: PeerId,
    act: impl FnOnce(&mut SimNetwork) -> Result<callsync_core::CallView, CoreError>,
    expected: fn(&CoreError) -> bool,
) {
    let heads = net.heads(peer);
    let customer = net.customer(peer);
    let err = act(net).unwrap_err();
    assert!(expected(&err), "unexpected error: {err}");
    assert!(!err.message_ja().is_empty());
    assert_eq!(net.heads(peer), heads);
    assert_eq!(net.customer(peer), customer);
}

fn request(net: &SimNetwork, phone: PeerId, recording: bool) -> EventKind {
    EventKind::Requested {
        destination: PhoneNumber::parse(NUMBER).unwrap(),
        origin: net.device_id(phone).clone(),
        recording,
    }
}

#[test]
fn ending_twice_on_the_same_side_is_refused() {
    let mut net = SimNetwork::seeded(1);
    let (desk, phone) = (net.desk(REP), net.phone(REP));
    let call = net.desk_requests_call(desk, NUMBER, phone);
    net.run_until_quiescent();
    net.phone_starts(phone, &call).unwrap();
    net.phone_ends(phone, &call, 5).unwrap();
    refused_unchanged(
        &mut net,
        phone,
        |n| n.phone_ends(phone, &call, 6),
        |e| matches!(e, CoreError::AlreadyEnded { side: "phone", .. }),
    );
    net.run_until_quiescent();
    net.desk_ends(desk, &call).unwrap();
    refused_unchanged(
        &mut net,
        desk,
        |n| n.desk_ends(desk, &call),
        |e| {
            matches!(
                e,
                CoreError::AlreadyEnded {
                    side: "browser",
                    ..
                }
            )
        },
    );
}

#[test]
fn reusing_a_call_id_or_an_event_id_is_refused() {
    let mut net = SimNetwork::seeded(2);
    let (desk, phone) = (net.desk(REP), net.phone(REP));
    let call = net.desk_requests_call(desk, NUMBER, phone);
    net.desk_cancels(desk, &call).unwrap();
    let again = request(&net, phone, true);
    refused_unchanged(
        &mut net,
        desk,
        |n| n.record(desk, &call, again),
        |e| matches!(e, CoreError::DuplicateCall { .. }),
    );
    // The same event delivered to `record` twice (a retried command, say).
    let event = net
        .with_doc(desk, |d| d.call_events(&call))
        .into_iter()
        .next()
        .unwrap();
    let catalog = callsync_core::ResultCatalog::standard();
    let ctx = callsync_core::RuleContext::new(&catalog);
    let heads = net.heads(desk);
    let err = net.with_doc(desk, |d| d.record(event, &ctx)).unwrap_err();
    assert!(matches!(err, CoreError::DuplicateEvent { .. }), "{err}");
    assert_eq!(net.heads(desk), heads);
}

#[test]
fn recordings_are_refused_on_calls_not_recorded_or_without_one() {
    let mut net = SimNetwork::seeded(3);
    let (desk, phone) = (net.desk(REP), net.phone(REP));
    net.set_role(desk, callsync_core::Role::Manager);
    let call = CallId::new("quiet-call").unwrap();
    let kind = request(&net, phone, false);
    net.record(desk, &call, kind).unwrap();
    net.run_until_quiescent();
    net.phone_starts(phone, &call).unwrap();
    net.run_until_quiescent();
    let recording = callsync_core::RecordingRef {
        sha256: "00".repeat(32),
        size: 1,
        duration_ms: 1,
        format: "wav/pcm16".into(),
    };
    refused_unchanged(
        &mut net,
        0,
        |n| n.record(0, &call, EventKind::RecordingAttached(recording)),
        |e| matches!(e, CoreError::NoRecording { .. }),
    );
    refused_unchanged(
        &mut net,
        desk,
        |n| n.record(desk, &call, EventKind::RecordingDeleted),
        |e| matches!(e, CoreError::NoRecording { .. }),
    );
}

#[test]
fn a_memo_over_the_limit_is_refused() {
    let mut net = SimNetwork::seeded(4);
    let (desk, phone) = (net.desk(REP), net.phone(REP));
    let call = net.desk_requests_call(desk, NUMBER, phone);
    net.run_until_quiescent();
    net.phone_starts(phone, &call).unwrap();
    net.run_until_quiescent();
    net.desk_ends(desk, &call).unwrap();
    let fields = SavedResultFields {
        result_type: ResultTypeId::new("no-answer").unwrap(),
        option: ResultOption::None,
        customer_status: None,
        memo: "あ".repeat(callsync_core::rules::MAX_MEMO_CHARS + 1),
        decision: None,
        kept_as_picked: None,
    };
    refused_unchanged(
        &mut net,
        desk,
        |n| n.record(desk, &call, EventKind::ResultSaved(fields)),
        |e| matches!(e, CoreError::FieldTooLong { field: "memo", .. }),
    );
}

#[test]
fn a_customer_without_a_name_a_number_or_within_limits_is_not_created() {
    let actor = || ActorId::from(b"t".as_slice());
    let mut c = sample_customer();
    c.company = "  ".into();
    assert!(matches!(
        CustomerDoc::create(&c, START, actor()),
        Err(CoreError::EmptyField { field: "company" })
    ));
    let mut c = sample_customer();
    c.phones.clear();
    assert!(matches!(
        CustomerDoc::create(&c, START, actor()),
        Err(CoreError::NoPhoneNumbers)
    ));
    let mut c = sample_customer();
    c.contact = "名".repeat(callsync_core::document::MAX_NAME_CHARS + 1);
    assert!(matches!(
        CustomerDoc::create(&c, START, actor()),
        Err(CoreError::FieldTooLong {
            field: "contact",
            ..
        })
    ));
    let mut c = sample_customer();
    let phone = PhoneEntry {
        label: "代表".into(),
        number: PhoneNumber::parse(NUMBER).unwrap(),
    };
    c.phones = vec![phone; callsync_core::document::MAX_PHONES + 1];
    assert!(matches!(
        CustomerDoc::create(&c, START, actor()),
        Err(CoreError::FieldTooLong {
            field: "phones",
            ..
        })
    ));
}

#[test]
fn a_batch_with_an_event_for_another_call_is_refused_whole() {
    let mut net = SimNetwork::seeded(5);
    let (desk, phone) = (net.desk(REP), net.phone(REP));
    let call = net.desk_requests_call(desk, NUMBER, phone);
    let requested = net.with_doc(desk, |d| d.call_events(&call)).remove(0);
    // A valid cancel, then an event that names another call.
    let cancel = CallEvent {
        id: callsync_core::EventId::new("cancel-1").unwrap(),
        kind: EventKind::Cancelled,
        ..requested.clone()
    };
    let stray = CallEvent {
        id: callsync_core::EventId::new("stray-1").unwrap(),
        call: CallId::new("other").unwrap(),
        kind: EventKind::Cancelled,
        ..requested
    };
    let catalog = callsync_core::ResultCatalog::standard();
    let heads = net.heads(desk);
    let err = net
        .with_doc(desk, |d| {
            d.record_all(
                vec![cancel, stray],
                &callsync_core::RuleContext::new(&catalog),
            )
        })
        .unwrap_err();
    assert!(matches!(err, CoreError::UnknownCall { .. }), "{err}");
    assert_eq!(net.heads(desk), heads);
    assert_eq!(
        net.call_state(desk, &call).unwrap().phase,
        callsync_core::Phase::AwaitingStart
    );
}

#[test]
fn a_rep_s_device_refuses_to_delete_a_recording_and_records_nothing() {
    let mut net = SimNetwork::seeded(5);
    let (desk, phone) = (net.desk(REP), net.phone(REP));
    let call = CallId::new("recorded-call").unwrap();
    let kind = request(&net, phone, true);
    net.record(desk, &call, kind).unwrap();
    net.run_until_quiescent();
    net.phone_starts(phone, &call).unwrap();
    net.run_until_quiescent();
    let heads = net.heads(desk);
    let customer = net.customer(desk);
    let refused = net
        .act_in(
            desk,
            &callsync_core::CustomerId::new(callsync_testkit::CUSTOMER).unwrap(),
            &call,
            EventKind::RecordingDeleted,
        )
        .unwrap_err();
    assert_eq!(refused.code(), "role-required", "{refused}");
    assert!(
        refused.message_ja().contains("マネージャー"),
        "{}",
        refused.message_ja()
    );
    assert_eq!(net.heads(desk), heads);
    assert_eq!(net.customer(desk), customer);
    // A manager's device records it (the role arrives with the next join).
    net.set_role(desk, callsync_core::Role::Manager);
    net.run_until_quiescent();
    let view = net
        .record(desk, &call, EventKind::RecordingDeleted)
        .unwrap();
    assert!(view.has(callsync_core::Flag::RecordingDeleted));
}
