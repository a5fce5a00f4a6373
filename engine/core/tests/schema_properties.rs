//! Properties of schema 2 (each call's events in a map of their own), on raw
//! replicas writing through the rules and merging in any order:
//! - merge order cannot matter: every order of delivering every replica's changes,
//!   with any of them delivered twice, gives the same heads and the same customer;
//! - a duplicate delivery collapses: the same event written by two replicas
//!   independently (the same id, the same JSON) reads as one event;
//! - no call's map is created twice: whoever acts, each call has exactly one map
//!   (writers create a call's map only with its origin, and act on a call only
//!   once they hold it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use automerge::ReadDoc;
use automerge::transaction::Transactable;
use callsync_core::{
    ActorId, CallEvent, CallId, CustomerDoc, CustomerId, DeviceId, DeviceKind, EventId, EventKind,
    NewCustomer, PhoneEntry, PhoneNumber, ResultCatalog, RuleContext, Stamp, TenantId, Timestamp,
    UserId,
};
use proptest::prelude::*;

const T0: i64 = 1_795_482_000_000;
const REPLICAS: usize = 3;

fn customer() -> NewCustomer {
    NewCustomer {
        tenant: TenantId::new("tenant-a").unwrap(),
        id: CustomerId::new("cus-1").unwrap(),
        company: "株式会社さくら".to_owned(),
        contact: "佐藤".to_owned(),
        owner: UserId::new("rep@a.example").unwrap(),
        phones: vec![PhoneEntry {
            label: "代表".to_owned(),
            number: PhoneNumber::parse("03-1234-5678").unwrap(),
        }],
    }
}

/// Replica `r` is desk-`r` (`r` even) or phone-`r`; all of one user.
fn stamp(replica: usize, at: i64) -> Stamp {
    let (device, kind) = if replica.is_multiple_of(2) {
        (format!("desk-{replica}"), DeviceKind::Desk)
    } else {
        (format!("phone-{replica}"), DeviceKind::Phone)
    };
    Stamp {
        at: Timestamp::from_millis(T0 + at),
        device: DeviceId::new(device).unwrap(),
        device_kind: kind,
        user: UserId::new("rep@a.example").unwrap(),
        device_at: None,
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// Replica logs a manual call (a new call, its map created with it).
    Manual { replica: usize },
    /// Replica records a later event on a call it holds (a desk's browser end or
    /// a result; refusals by the rules are expected and skipped).
    Later {
        replica: usize,
        call: usize,
        result: bool,
    },
    /// `to` takes every change `from` holds.
    Merge { from: usize, to: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (0..REPLICAS).prop_map(|replica| Step::Manual { replica }),
        3 => (0..REPLICAS, 0..8usize, any::<bool>())
            .prop_map(|(replica, call, result)| Step::Later { replica, call, result }),
        3 => (0..REPLICAS, 0..REPLICAS)
            .prop_filter("two replicas", |(a, b)| a != b)
            .prop_map(|(from, to)| Step::Merge { from, to }),
    ]
}

/// Plays `steps` on replicas of one document; returns them.
fn play(steps: &[Step]) -> (CustomerDoc, Vec<CustomerDoc>) {
    let catalog = ResultCatalog::standard();
    let base = CustomerDoc::create(
        &customer(),
        Timestamp::from_millis(T0),
        ActorId::from(b"server".as_slice()),
    )
    .unwrap();
    let mut replicas: Vec<CustomerDoc> = (0..REPLICAS)
        .map(|r| {
            let mut doc = base.clone();
            doc.automerge_mut()
                .set_actor(ActorId::from(format!("replica-{r}").as_bytes()));
            doc
        })
        .collect();
    let mut calls: Vec<CallId> = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let at = (i as i64 + 1) * 60_000;
        match *step {
            Step::Manual { replica } => {
                if !replica.is_multiple_of(2) {
                    continue; // only desks log manual calls
                }
                let call = CallId::new(format!("call-{}", calls.len())).unwrap();
                let event = CallEvent {
                    id: EventId::new(format!("m-{i}")).unwrap(),
                    call: call.clone(),
                    stamp: stamp(replica, at),
                    kind: EventKind::ManualCall {
                        number: PhoneNumber::parse("03-1234-5678").unwrap(),
                    },
                };
                if replicas[replica]
                    .record(event, &RuleContext::new(&catalog))
                    .is_ok()
                {
                    calls.push(call);
                }
            }
            Step::Later {
                replica,
                call,
                result,
            } => {
                let Some(call) = calls.get(call % calls.len().max(1)).cloned() else {
                    continue;
                };
                if replicas[replica].call(&call).is_none() {
                    continue; // not held yet: no replica acts on a call it does not hold
                }
                let kind = if result {
                    EventKind::ResultSaved(callsync_core::SavedResultFields {
                        result_type: callsync_core::ResultTypeId::new("no-answer").unwrap(),
                        option: callsync_core::ResultOption::None,
                        customer_status: None,
                        memo: String::new(),
                        decision: None,
                        kept_as_picked: None,
                    })
                } else {
                    EventKind::BrowserEnded
                };
                let event = CallEvent {
                    id: EventId::new(format!("l-{i}")).unwrap(),
                    call,
                    stamp: stamp(replica, at),
                    kind,
                };
                let _ = replicas[replica].record(event, &RuleContext::new(&catalog));
            }
            Step::Merge { from, to } => {
                let mut source = replicas[from].clone();
                replicas[to].merge(&mut source).unwrap();
            }
        }
    }
    (base, replicas)
}

/// Every key of every bucket holds one map.
fn one_map_per_call(doc: &CustomerDoc) -> usize {
    let am = doc.automerge();
    let (_, calls) = am.get(automerge::ROOT, "calls").unwrap().unwrap();
    let mut maps = 0;
    for bucket in am.map_range(&calls, ..) {
        let bucket = bucket.id();
        for call in am.map_range(&bucket, ..) {
            assert_eq!(am.get_all(&bucket, call.key.as_ref()).unwrap().len(), 1);
            maps += 1;
        }
    }
    maps
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, rng_seed: proptest::test_runner::RngSeed::Fixed(7), ..ProptestConfig::default() })]

    #[test]
    fn merge_order_and_repeated_delivery_cannot_matter(
        steps in prop::collection::vec(step(), 1..40),
        order in any::<u64>(),
    ) {
        let (base, mut replicas) = play(&steps);
        // Every change any replica holds, as raw changes.
        let mut changes = Vec::new();
        for replica in &mut replicas {
            let base_heads = base.clone().heads();
            changes.extend(replica.automerge_mut().get_changes(&base_heads));
        }
        // Delivered in several orders, some twice.
        let mut reference: Option<(Vec<automerge::ChangeHash>, callsync_core::Customer)> = None;
        let mut seed = order | 1;
        for _ in 0..4 {
            let mut shuffled = changes.clone();
            // A small xorshift shuffle, seeded by proptest.
            for i in (1..shuffled.len()).rev() {
                seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17;
                shuffled.swap(i, (seed % (i as u64 + 1)) as usize);
            }
            let repeat = shuffled.iter().take(shuffled.len() / 2).cloned().collect::<Vec<_>>();
            let mut doc = base.clone();
            doc.automerge_mut().apply_changes(shuffled).unwrap();
            doc.automerge_mut().apply_changes(repeat).unwrap();
            let mut heads = doc.heads();
            heads.sort();
            let customer = doc.customer().unwrap();
            prop_assert_eq!(one_map_per_call(&doc), customer.calls.len());
            match &reference {
                None => reference = Some((heads, customer)),
                Some((h, c)) => {
                    prop_assert_eq!(&heads, h);
                    prop_assert_eq!(&customer, c);
                }
            }
        }
    }
}

#[test]
fn the_same_event_written_by_two_replicas_reads_as_one() {
    let (_, mut replicas) = play(&[Step::Manual { replica: 0 }, Step::Merge { from: 0, to: 1 }]);
    let call = CallId::new("call-0").unwrap();
    let event = CallEvent {
        id: EventId::new("dup-1").unwrap(),
        call: call.clone(),
        stamp: stamp(0, 120_000),
        kind: EventKind::BrowserEnded,
    };
    let json = serde_json::to_string(&event).unwrap();
    // Both replicas write it, each unaware of the other (a re-sent write).
    for r in [0, 1] {
        let am = replicas[r].automerge_mut();
        let (_, calls) = am.get(automerge::ROOT, "calls").unwrap().unwrap();
        let bucket_key = callsync_core::document::call_bucket(&call);
        let (_, bucket) = am.get(&calls, bucket_key).unwrap().unwrap();
        let (_, map) = am.get(&bucket, call.as_str()).unwrap().unwrap();
        am.put(&map, event.id.as_str(), json.as_str()).unwrap();
        am.commit();
    }
    let mut other = replicas[1].clone();
    replicas[0].merge(&mut other).unwrap();
    let (events, unreadable) = replicas[0].events();
    assert!(unreadable.is_empty());
    assert_eq!(
        events.iter().filter(|e| e.id == event.id).count(),
        1,
        "one event, not two"
    );
    assert_eq!(
        replicas[0].call_events(&call).len(),
        2,
        "the manual call and its end"
    );
}

/// The script the property draws from, spelled out once: two desks each log a
/// call, act on each other's after merging, and every replica ends with one map
/// per call.
#[test]
fn two_desks_logging_calls_and_acting_on_each_others_keep_one_map_per_call() {
    use Step::{Later, Manual, Merge};
    let (_, mut replicas) = play(&[
        Manual { replica: 0 },
        Manual { replica: 2 },
        Merge { from: 0, to: 2 },
        Merge { from: 2, to: 0 },
        Later {
            replica: 0,
            call: 1,
            result: true,
        },
        Later {
            replica: 2,
            call: 0,
            result: true,
        },
        Merge { from: 0, to: 1 },
        Merge { from: 2, to: 1 },
    ]);
    let customer = replicas[1].customer().unwrap();
    assert_eq!(customer.calls.len(), 2);
    assert!(
        customer.calls.iter().all(|c| c.results.len() == 1),
        "{customer:?}"
    );
    assert_eq!(one_map_per_call(&replicas[1]), 2);
    let mut other = replicas[1].clone();
    replicas[0].merge(&mut other).unwrap();
    assert_eq!(replicas[0].customer().unwrap(), customer);
}

/// A forged document where two replicas created the same call's map at once
/// (admission refuses that, a crafted file need not): the maps conflict under
/// the call's key, and derivation still reads every map, incrementally and from
/// scratch alike, rather than only the one Automerge shows as the winner.
#[test]
fn a_call_whose_map_two_replicas_created_at_once_is_read_from_both_maps() {
    let (_, mut replicas) = play(&[Step::Manual { replica: 0 }, Step::Merge { from: 0, to: 1 }]);
    let call = CallId::new("forged-call").unwrap();
    for r in [0, 1] {
        let event = CallEvent {
            id: EventId::new(format!("forged-{r}")).unwrap(),
            call: call.clone(),
            stamp: stamp(r, 120_000),
            kind: EventKind::BrowserEnded,
        };
        let json = serde_json::to_string(&event).unwrap();
        let am = replicas[r].automerge_mut();
        let (_, calls) = am.get(automerge::ROOT, "calls").unwrap().unwrap();
        let bucket_key = callsync_core::document::call_bucket(&call);
        let (_, bucket) = am.get(&calls, bucket_key).unwrap().unwrap();
        let map = am
            .put_object(&bucket, call.as_str(), automerge::ObjType::Map)
            .unwrap();
        am.put(&map, event.id.as_str(), json.as_str()).unwrap();
        am.commit();
    }
    // The derivation is kept across the merge (incremental)…
    assert_eq!(derived_events_of(&replicas[0], &call), 1);
    let mut other = replicas[1].clone();
    replicas[0].merge(&mut other).unwrap();
    {
        let am = replicas[0].automerge_mut();
        let (_, calls) = am.get(automerge::ROOT, "calls").unwrap().unwrap();
        let (_, bucket) = am
            .get(&calls, callsync_core::document::call_bucket(&call))
            .unwrap()
            .unwrap();
        assert_eq!(
            am.get_all(&bucket, call.as_str()).unwrap().len(),
            2,
            "the maps conflict"
        );
    }
    assert_eq!(
        derived_events_of(&replicas[0], &call),
        2,
        "an event hidden in the losing map"
    );
    // …and from scratch.
    let bytes = replicas[0].save();
    let fresh = CustomerDoc::load(&bytes, ActorId::random()).unwrap();
    assert_eq!(derived_events_of(&fresh, &call), 2);
    assert_eq!(fresh.events(), replicas[0].events());
}

/// The events of `call` in the document's derivation (every event, read by a
/// scan of the whole document when the derivation is not up to date).
fn derived_events_of(doc: &CustomerDoc, call: &CallId) -> usize {
    doc.events().0.iter().filter(|e| e.call == *call).count()
}
