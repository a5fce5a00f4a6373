//! The protocol's guarantees on the simulated network, through the real sessions:
//! expiry as the hub's wake-up in virtual time, a reconnect that syncs exactly the
//! documents that changed, and, over random schedules with crashes of any peer
//! (the server even mid-batch), no acknowledged change lost and every replica
//! deriving the same calls.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use callsync_core::{CallId, CustomerId, EventKind, Phase, PhoneNumber, ResultOption};
use callsync_testkit::{CUSTOMER, MOBILE, NUMBER, SimNetwork};
use proptest::prelude::*;

const REP: &str = "rep@a.example";

#[test]
fn a_request_not_started_expires_at_the_limit_in_virtual_time_on_every_replica() {
    let mut net = SimNetwork::seeded(21);
    let desk = net.desk(REP);
    let phone = net.phone(REP);
    let call = net.desk_requests_call(desk, NUMBER, phone);
    net.run_until_quiescent();
    net.advance(59_000);
    net.run_until_quiescent();
    assert_eq!(
        net.call_state(0, &call).unwrap().phase,
        Phase::AwaitingStart,
        "not before the limit"
    );
    // No explicit expiry: the hub's wake-up falls due at the limit.
    net.advance(1_001);
    net.run_until_quiescent();
    for peer in net.peers() {
        assert_eq!(net.call_state(peer, &call).unwrap().phase, Phase::Expired);
    }
}

#[test]
fn a_reconnect_syncs_exactly_the_documents_that_changed() {
    const N: usize = 40;
    const K: usize = 5;
    let mut net = SimNetwork::seeded(22);
    let desk = net.desk(REP);
    let phone = net.phone(REP);
    let extra = net.add_customers(N - 1);
    net.run_until_quiescent();
    for customer in net.customers() {
        assert!(!net.heads_of(phone, &customer).is_empty(), "{customer}");
    }
    // The phone goes offline; the desk changes K of the N documents meanwhile.
    net.partition(phone, 0);
    let changed: BTreeSet<CustomerId> = extra.iter().take(K).cloned().collect();
    for (i, customer) in changed.iter().enumerate() {
        let call = CallId::new(format!("offline-{i}")).unwrap();
        let request = EventKind::Requested {
            destination: PhoneNumber::parse(NUMBER).unwrap(),
            origin: net.device_id(phone).clone(),
            recording: false,
        };
        net.record_in(desk, customer, &call, request).unwrap();
        net.record_in(desk, customer, &call, EventKind::Cancelled)
            .unwrap();
    }
    net.run_until_quiescent();
    let before = net.delivered().len();
    net.heal(phone, 0);
    net.run_until_quiescent();
    let reconnect = &net.delivered()[before..];
    let of_phone: Vec<_> = reconnect.iter().filter(|d| d.device == phone).collect();
    let listed: BTreeSet<CustomerId> = of_phone
        .iter()
        .filter(|d| d.kind == "peer")
        .flat_map(|d| d.listed.iter().cloned())
        .collect();
    assert_eq!(listed, changed, "the server lists exactly what changed");
    let synced: BTreeSet<CustomerId> = of_phone.iter().filter_map(|d| d.document.clone()).collect();
    assert_eq!(synced, changed, "sync runs for exactly those documents");
    // One message each way per changed document, plus join and peer.
    let syncs = of_phone.iter().filter(|d| d.kind == "sync").count();
    assert!(
        syncs <= 2 * K + 2,
        "{syncs} sync messages for {K} documents"
    );
    for customer in &changed {
        assert_eq!(net.heads_of(phone, customer), net.heads_of(0, customer));
    }
    // Reconnecting again with nothing changed syncs no document at all.
    let before = net.delivered().len();
    net.partition(phone, 0);
    net.heal(phone, 0);
    net.run_until_quiescent();
    let again: Vec<&str> = net.delivered()[before..]
        .iter()
        .filter(|d| d.device == phone && d.kind != "presence")
        .map(|d| d.kind)
        .collect();
    assert_eq!(again, ["join", "peer"], "nothing but the handshake");
}

#[derive(Debug, Clone)]
enum Step {
    Request { phone: usize },
    Cancel { call: usize },
    Start { phone: usize, call: usize },
    PhoneEnd { phone: usize, call: usize },
    DeskEnd { call: usize },
    Result { call: usize, recall: bool },
    Cut { device: usize },
    Heal { device: usize },
    CrashServer,
    CrashServerMidBatch,
    CrashDevice { device: usize },
    Deliver,
    Sync,
    Wait { secs: u8 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..2usize).prop_map(|phone| Step::Request { phone }),
        (0..4usize).prop_map(|call| Step::Cancel { call }),
        (0..2usize, 0..4usize).prop_map(|(phone, call)| Step::Start { phone, call }),
        (0..2usize, 0..4usize).prop_map(|(phone, call)| Step::PhoneEnd { phone, call }),
        (0..4usize).prop_map(|call| Step::DeskEnd { call }),
        (0..4usize, any::<bool>()).prop_map(|(call, recall)| Step::Result { call, recall }),
        (0..3usize).prop_map(|device| Step::Cut { device }),
        (0..3usize).prop_map(|device| Step::Heal { device }),
        Just(Step::CrashServer),
        Just(Step::CrashServerMidBatch),
        (0..3usize).prop_map(|device| Step::CrashDevice { device }),
        Just(Step::Deliver),
        Just(Step::Sync),
        any::<u8>().prop_map(|secs| Step::Wait { secs }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, rng_seed: proptest::test_runner::RngSeed::Fixed(23), ..ProptestConfig::default() })]

    #[test]
    fn acknowledged_changes_survive_crashes_and_every_replica_derives_the_same_calls(
        seed in any::<u64>(),
        steps in prop::collection::vec(step(), 1..40),
    ) {
        let mut net = SimNetwork::seeded(seed);
        // One rep: a desk and two phones (so a phone may act on a call it is not
        // the origin of, which the server refuses).
        let desk = net.desk(REP);
        let phones = [net.phone(REP), net.phone(REP)];
        let devices = [desk, phones[0], phones[1]];
        let mut calls: Vec<CallId> = Vec::new();
        let pick = |calls: &Vec<CallId>, i: usize| calls.get(i % calls.len().max(1)).cloned();
        for step in steps {
            match step {
                Step::Request { phone } => {
                    let call = CallId::new(format!("c{}", calls.len())).unwrap();
                    let kind = EventKind::Requested {
                        destination: PhoneNumber::parse(MOBILE).unwrap(),
                        origin: net.device_id(phones[phone]).clone(),
                        recording: true,
                    };
                    if net.record(desk, &call, kind).is_ok() { calls.push(call); }
                }
                Step::Cancel { call } => if let Some(c) = pick(&calls, call) { let _ = net.desk_cancels(desk, &c); },
                Step::Start { phone, call } => if let Some(c) = pick(&calls, call) { let _ = net.phone_starts(phones[phone], &c); },
                Step::PhoneEnd { phone, call } => if let Some(c) = pick(&calls, call) { let _ = net.phone_ends(phones[phone], &c, 30); },
                Step::DeskEnd { call } => if let Some(c) = pick(&calls, call) { let _ = net.desk_ends(desk, &c); },
                Step::Result { call, recall } => if let Some(c) = pick(&calls, call) {
                    let option = if recall {
                        ResultOption::Recall { at: net.now().plus_millis(86_400_000).ceil_to_option_step() }
                    } else {
                        ResultOption::None
                    };
                    let _ = net.save_result(desk, &c, "no-answer", option);
                },
                Step::Cut { device } => net.partition(devices[device], 0),
                Step::Heal { device } => net.heal(devices[device], 0),
                Step::CrashServer => net.crash(0),
                Step::CrashServerMidBatch => net.crash_server_in_next_batch(),
                Step::CrashDevice { device } => net.crash(devices[device]),
                Step::Deliver => { net.run_steps(3); }
                Step::Sync => { net.run_until_quiescent(); }
                Step::Wait { secs } => net.advance(i64::from(secs) * 1000),
            }
        }
        for device in devices { net.heal(device, 0); }
        net.run_until_quiescent();
        let kept = net.event_keys(0);
        // Nothing the server acknowledged to a device, or ever committed, is lost.
        for key in net.acknowledged() {
            prop_assert!(kept.contains(key), "acknowledged {} lost", key);
        }
        for key in net.ever_committed() {
            prop_assert!(kept.contains(key), "committed {} lost", key);
        }
        // Every replica holds the server's document and derives the same calls,
        // and no device still waits to send anything.
        let heads = net.heads(0);
        let customer = net.customer(0);
        for peer in devices {
            prop_assert_eq!(&net.heads(peer), &heads);
            prop_assert_eq!(&net.customer(peer), &customer);
            prop_assert!(net.outbox(peer).is_empty());
        }
        prop_assert_eq!(net.fresh_customer(0), customer);
        prop_assert!(net.customers().contains(&CustomerId::new(CUSTOMER).unwrap()));
    }
}

#[test]
fn a_device_catching_up_on_more_documents_than_the_rate_allows_is_not_cut_off() {
    // 1,050 documents the phone has never held: answering the server's catch-up
    // takes more messages than the 2,000 burst, all at one virtual instant.
    let mut net = SimNetwork::seeded(24);
    let phone = net.phone(REP);
    let added = net.add_customers(1_050);
    net.run_until_quiescent();
    let refused: Vec<_> = net
        .delivered()
        .iter()
        .filter(|d| d.kind == "error")
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
    let joins = net.delivered().iter().filter(|d| d.kind == "join").count();
    assert_eq!(joins, 1, "caught up in one connection");
    for customer in &added {
        assert_eq!(net.heads_of(phone, customer), net.heads_of(0, customer));
    }
}

/// Accepts every decision; no standard rule set.
struct NoRules;

impl callsync_session::rules::ResultRules for NoRules {
    fn verify(
        &self,
        _: &callsync_core::tenant_config::TenantConfig,
        _: &callsync_core::tenant_config::TenantConfigDoc,
        _: &callsync_core::SavedResultFields,
        _: callsync_core::Timestamp,
    ) -> callsync_session::rules::Verified {
        callsync_session::rules::Verified {
            outcome: Ok(()),
            spent: std::time::Duration::ZERO,
        }
    }

    fn standard_install(
        &self,
        _: &callsync_core::TenantId,
        _: callsync_core::Timestamp,
    ) -> Result<callsync_core::tenant_config::PreparedInstall, String> {
        Err("none".to_owned())
    }
}

#[test]
fn a_hub_refuses_a_connection_of_another_tenant_and_changes_nothing() {
    use callsync_core::{ActorId, DeviceId, DeviceKind, Role, TenantId, UserId};
    use callsync_session::hub::{HubEvent, HubInput, HubSession, HubSettings, Room};
    let mut disk = callsync_testkit::mem::ServerDisk::default();
    let mut hub: HubSession<callsync_testkit::mem::MemDoc> = HubSession::new(
        TenantId::new("tenant-a").unwrap(),
        HubSettings {
            start_limit_ms: 60_000,
            max_customers: 10,
            cache_docs: 4,
            server_device: DeviceId::new("server").unwrap(),
            server_user: UserId::new("system").unwrap(),
            server_actor: ActorId::from(b"server".as_slice()),
            epoch: "e".to_owned(),
            max_held: callsync_session::hub::MAX_HELD_MESSAGES,
        },
        std::sync::Arc::new(NoRules),
    );
    let stranger = callsync_session::Authenticated {
        tenant: TenantId::new("tenant-b").unwrap(),
        user: UserId::new("rep@b.example").unwrap(),
        role: Role::Owner,
        device: DeviceId::new("desk-b").unwrap(),
        kind: DeviceKind::Desk,
        expires_at: callsync_testkit::START.plus_millis(86_400_000),
    };
    let mut tx = disk.begin();
    let open = HubInput::Open {
        conn: 7,
        member: stranger,
        cursor: None,
    };
    let unlimited = |_| Room::UNLIMITED;
    let output = hub.handle_event(
        callsync_testkit::START,
        &mut tx,
        &unlimited,
        HubEvent::Input(open),
    );
    assert!(output.is_empty() && !output.end_batch, "{output:?}");
    let released = hub.handle_event(
        callsync_testkit::START,
        &mut tx,
        &unlimited,
        HubEvent::EndOfBatch,
    );
    assert!(released.failed.is_none(), "{:?}", released.failed);
    assert!(released.sends.is_empty(), "{:?}", released.sends);
    let codes: Vec<(u64, String)> = released
        .closes
        .into_iter()
        .map(|(conn, body)| (conn, body.code))
        .collect();
    assert_eq!(codes, [(7, "wrong-tenant".to_owned())]);
    assert_eq!(hub.connections(), 0, "nothing opened");
    assert!(disk.customer_ids().is_empty(), "nothing stored");
}

/// A hub over `disk` with nobody connected.
fn hub_over_disk() -> callsync_session::hub::HubSession<callsync_testkit::mem::MemDoc> {
    use callsync_core::{ActorId, DeviceId, TenantId, UserId};
    use callsync_session::hub::{HubSession, HubSettings};
    HubSession::new(
        TenantId::new("tenant-a").unwrap(),
        HubSettings {
            start_limit_ms: 60_000,
            max_customers: 10_000,
            cache_docs: 64,
            server_device: DeviceId::new("server").unwrap(),
            server_user: UserId::new("system").unwrap(),
            server_actor: ActorId::from(b"server".as_slice()),
            epoch: "e".to_owned(),
            max_held: callsync_session::hub::MAX_HELD_MESSAGES,
        },
        std::sync::Arc::new(NoRules),
    )
}

#[test]
fn a_joining_devices_catch_up_starts_at_most_256_documents_a_batch_and_only_into_room() {
    use callsync_core::wire::Message;
    use callsync_core::{ActorId, CustomerDoc, DeviceId, DeviceKind, Role, TenantId, UserId};
    use callsync_session::hub::{CATCH_UP_PER_BATCH, HubEvent, HubInput, Room, SYNC_ROOM_BYTES};
    use callsync_session::storage::HubStore;

    let tenant = TenantId::new("tenant-a").unwrap();
    let phone = DeviceId::new("phone-1").unwrap();
    let mut disk = callsync_testkit::mem::ServerDisk::default();
    {
        let mut tx = disk.begin();
        for i in 0..600 {
            let mut customer = callsync_testkit::sample_customer();
            customer.id = CustomerId::new(format!("c-{i:03}")).unwrap();
            let mut doc = CustomerDoc::create(
                &customer,
                callsync_testkit::START,
                ActorId::from(b"server".as_slice()),
            )
            .unwrap();
            tx.insert(&mut doc).unwrap();
            tx.subscribe(&phone, &tenant, &customer.id).unwrap();
        }
        tx.commit();
    }
    let mut hub = hub_over_disk();
    let member = callsync_session::Authenticated {
        tenant: tenant.clone(),
        user: UserId::new(REP).unwrap(),
        role: Role::User,
        device: phone,
        kind: DeviceKind::Phone,
        expires_at: callsync_testkit::START.plus_millis(86_400_000),
    };
    // One batch with the given room in the phone's queue: the syncs it starts.
    let mut batch_with =
        |hub: &mut callsync_session::hub::HubSession<_>, input: Option<HubInput>, room: Room| {
            let room_of = move |_| room;
            let mut tx = disk.begin();
            if let Some(input) = input {
                let output = hub.handle_event(
                    callsync_testkit::START,
                    &mut tx,
                    &room_of,
                    HubEvent::Input(input),
                );
                assert!(!output.end_batch, "{:?}", output.failed);
            }
            let released = hub.handle_event(
                callsync_testkit::START,
                &mut tx,
                &room_of,
                HubEvent::EndOfBatch,
            );
            assert!(released.failed.is_none(), "{:?}", released.failed);
            released
                .sends
                .iter()
                .filter(|(_, m)| matches!(m, Message::Sync { .. }))
                .count()
        };
    let plenty = Room {
        frames: 4_096,
        bytes: 1 << 30,
    };
    let open = HubInput::Open {
        conn: 1,
        member,
        cursor: None,
    };
    assert_eq!(batch_with(&mut hub, Some(open), plenty), CATCH_UP_PER_BATCH);
    // A queue without room for a slice's frames, or for the largest document's
    // bytes, starts nothing; the catch-up waits for it.
    let few_frames = Room {
        frames: 10,
        bytes: 1 << 30,
    };
    assert_eq!(batch_with(&mut hub, None, few_frames), 0);
    let few_bytes = Room {
        frames: 4_096,
        bytes: SYNC_ROOM_BYTES - 1,
    };
    assert_eq!(batch_with(&mut hub, None, few_bytes), 0);
    // Then the rest, a slice at a time.
    assert_eq!(batch_with(&mut hub, None, plenty), CATCH_UP_PER_BATCH);
    assert_eq!(
        batch_with(&mut hub, None, plenty),
        600 - 2 * CATCH_UP_PER_BATCH
    );
}
