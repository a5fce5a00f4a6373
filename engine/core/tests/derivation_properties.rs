//! Property: a call's derived state depends only on its set of events — not on
//! arrival order, not on duplicates.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use callsync_core::lifecycle::derive_call;
use callsync_core::{
    CallEvent, CallId, DeviceId, DeviceKind, EventId, EventKind, PhoneNumber, RecordingRef,
    ResultOption, ResultTypeId, SavedResultFields, Stamp, Timestamp, UserId,
};
use proptest::prelude::*;

const T0: i64 = 1_795_482_000_000;

/// One arbitrary event on call-1: any kind, from any of four devices (some of
/// them the wrong kind or not the origin), at any of a few times (ties included).
fn event(index: usize, kind: u8, device: u8, at: u8) -> CallEvent {
    let (device_name, device_kind) = match device % 4 {
        0 => ("desk-1", DeviceKind::Desk),
        1 => ("phone-1", DeviceKind::Phone),
        2 => ("phone-2", DeviceKind::Phone),
        _ => ("server", DeviceKind::Server),
    };
    let result = |t: &str| {
        EventKind::ResultSaved(SavedResultFields {
            result_type: ResultTypeId::new(t).unwrap(),
            option: ResultOption::None,
            customer_status: None,
            memo: String::new(),
            decision: None,
            kept_as_picked: None,
        })
    };
    let kind = match kind % 12 {
        0 | 1 => EventKind::Requested {
            destination: PhoneNumber::parse("03-1234-5678").unwrap(),
            origin: DeviceId::new("phone-1").unwrap(),
            recording: kind.is_multiple_of(2),
        },
        2 => EventKind::Cancelled,
        3 => EventKind::Expired,
        4 => EventKind::Started,
        5 => EventKind::PhoneEnded {
            duration_secs: u32::from(at),
        },
        6 => EventKind::BrowserEnded,
        7 => result("no-answer"),
        8 => result("appointment"),
        9 => EventKind::RecordingAttached(RecordingRef {
            sha256: "00".repeat(32),
            size: 10,
            duration_ms: 10,
            format: "wav/pcm16".into(),
        }),
        10 => EventKind::RecordingDeleted,
        _ => EventKind::ManualCall {
            number: PhoneNumber::parse("090-1234-5678").unwrap(),
        },
    };
    CallEvent {
        id: EventId::new(format!("e{index}")).unwrap(),
        call: CallId::new("call-1").unwrap(),
        stamp: Stamp {
            at: Timestamp::from_millis(T0 + i64::from(at % 8) * 1000),
            device: DeviceId::new(device_name).unwrap(),
            device_kind,
            user: UserId::new("rep@a.example").unwrap(),
            device_at: None,
        },
        kind,
    }
}

/// Like [`events`], but ids drawn from a handful, so different events share an id
/// (a forgery or a buggy device): replicas must still pick the same one.
fn colliding_events() -> impl Strategy<Value = Vec<CallEvent>> {
    prop::collection::vec((any::<u8>(), any::<u8>(), any::<u8>(), 0..4usize), 0..14).prop_map(
        |specs| {
            let mut out = vec![event(0, 0, 0, 0)];
            out.extend(
                specs
                    .into_iter()
                    .map(|(k, d, t, id)| event(id + 1, k, d, t)),
            );
            out
        },
    )
}

fn events() -> impl Strategy<Value = Vec<CallEvent>> {
    prop::collection::vec((any::<u8>(), any::<u8>(), any::<u8>()), 0..14).prop_map(|specs| {
        // Most sets start with a proper request so the interesting phases come up.
        let mut out = vec![event(0, 0, 0, 0)];
        out.extend(
            specs
                .into_iter()
                .enumerate()
                .map(|(i, (k, d, t))| event(i + 1, k, d, t)),
        );
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, rng_seed: proptest::test_runner::RngSeed::Fixed(7), ..ProptestConfig::default() })]

    #[test]
    fn any_permutation_and_duplication_of_a_calls_events_derives_the_same_state(
        (original, shuffled) in events().prop_flat_map(|e| (Just(e.clone()), Just(e).prop_shuffle())),
        dupes in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let call = CallId::new("call-1").unwrap();
        let mut delivered = shuffled.clone();
        for d in &dupes {
            delivered.push(shuffled[d.index(shuffled.len())].clone());
        }
        prop_assert_eq!(derive_call(&call, &original), derive_call(&call, &delivered));
    }

    #[test]
    fn events_that_share_an_id_derive_the_same_state_in_any_order(
        shuffled in colliding_events().prop_flat_map(|e| (Just(e.clone()), Just(e).prop_shuffle())),
    ) {
        let call = CallId::new("call-1").unwrap();
        let (original, shuffled) = shuffled;
        prop_assert_eq!(derive_call(&call, &original), derive_call(&call, &shuffled));
    }
}
