//! `layout`: what Automerge charges to apply one new call event, by where the
//! document keeps its events (`cargo run --release -p callsync-benches --bin
//! layout [CALLS…]`, default 100 and 1,000 calls), printing one JSON object.
//!
//! Today's layout keeps every event in one `events` map keyed `<call>/<event>`.
//! Automerge 0.12 merges a change into the object it touches by walking that
//! object's existing operations from the start, so one new event costs a walk
//! over the whole history. The alternative measured here keeps each call's events
//! in a map of their own under `calls/<call>`: a new event touches a five-key
//! map, a new call one key of the calls map. Both documents hold the same events
//! (five per call, each a JSON string of a typical event's size); the timed part
//! is `apply_changes` of one change adding one event (the first of a new call, or
//! a later one of an existing call), on a fresh copy of the document each time
//! (the copy is not timed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, Change, ObjType, ROOT};
use serde_json::json;

const EVENTS_PER_CALL: usize = 5;
const RUNS: usize = 200;

fn event_json(call: usize, step: usize) -> String {
    json!({
        "kind": "started",
        "call": format!("call-{call:05}"),
        "at": 1_764_000_000_000_i64 + (call * 600_000 + step * 10_000) as i64,
        "device": "phone-0001",
        "deviceKind": "phone",
        "user": "rep0001@acme.example",
    })
    .to_string()
}

/// A document of `calls` calls in the flat layout (`nested` false) or per call.
fn document(calls: usize, nested: bool) -> AutoCommit {
    let mut doc = AutoCommit::new().with_actor(ActorId::from(b"server".as_slice()));
    let root = doc
        .put_object(ROOT, if nested { "calls" } else { "events" }, ObjType::Map)
        .unwrap();
    doc.commit();
    for call in 0..calls {
        let call_map = nested.then(|| {
            doc.put_object(&root, format!("call-{call:05}"), ObjType::Map)
                .unwrap()
        });
        for step in 0..EVENTS_PER_CALL {
            let value = event_json(call, step);
            match &call_map {
                Some(map) => doc.put(map, format!("e{step}"), value).unwrap(),
                None => doc
                    .put(&root, format!("call-{call:05}/e{step}"), value)
                    .unwrap(),
            }
            // One change per event, as devices write them.
            doc.commit();
        }
    }
    doc
}

/// One device's change adding an event: the first of a new call, or (`existing`)
/// a sixth to the last call (a call's later events: started, ended, result).
fn new_event_change(base: &mut AutoCommit, calls: usize, nested: bool, existing: bool) -> Change {
    let mut device = base.fork().with_actor(ActorId::from(b"phone".as_slice()));
    let key = if nested { "calls" } else { "events" };
    let (_, root) = automerge::ReadDoc::get(&device, ROOT, key)
        .unwrap()
        .unwrap();
    let (call, step) = if existing {
        (calls - 1, EVENTS_PER_CALL)
    } else {
        (calls, 0)
    };
    let value = event_json(call, step);
    if nested && existing {
        let (_, map) = automerge::ReadDoc::get(&device, &root, format!("call-{call:05}"))
            .unwrap()
            .unwrap();
        device.put(&map, format!("e{step}"), value).unwrap();
    } else if nested {
        let map = device
            .put_object(&root, format!("call-{call:05}"), ObjType::Map)
            .unwrap();
        device.put(&map, format!("e{step}"), value).unwrap();
    } else {
        device
            .put(&root, format!("call-{call:05}/e{step}"), value)
            .unwrap();
    }
    device.commit();
    let heads = base.get_heads();
    device
        .get_changes(&heads)
        .into_iter()
        .next()
        .unwrap()
        .clone()
}

fn median_apply_us(calls: usize, nested: bool, existing: bool) -> (f64, usize) {
    let mut base = document(calls, nested);
    let change = new_event_change(&mut base, calls, nested, existing);
    let bytes = base.save().len();
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let mut copy = base.clone();
        let started = Instant::now();
        copy.apply_changes([change.clone()]).unwrap();
        times.push(started.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    (times[RUNS / 2], bytes)
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![100, 1_000]
    } else {
        sizes
    };
    let mut rows = Vec::new();
    for calls in sizes {
        let (flat_new, flat_bytes) = median_apply_us(calls, false, false);
        let (flat_existing, _) = median_apply_us(calls, false, true);
        let (nested_new, nested_bytes) = median_apply_us(calls, true, false);
        let (nested_existing, _) = median_apply_us(calls, true, true);
        rows.push(json!({
            "calls": calls,
            "events": calls * EVENTS_PER_CALL,
            "flat": {
                "apply_new_call_median_us": flat_new,
                "apply_event_of_existing_call_median_us": flat_existing,
                "saved_bytes": flat_bytes,
            },
            "per_call_maps": {
                "apply_new_call_median_us": nested_new,
                "apply_event_of_existing_call_median_us": nested_existing,
                "saved_bytes": nested_bytes,
            },
        }));
    }
    println!("{}", json!({ "runs": RUNS, "layouts": rows }));
}
