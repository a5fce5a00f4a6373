//! `layout`: what Automerge charges to apply one new call event, by where the
//! document keeps its events (`cargo run --release -p callsync-benches --bin
//! layout [CALLS…]`, default 100 and 1,000 calls), printing one JSON object.
//!
//! Three layouts of the same events: schema 1's one `events` map keyed
//! `<call>/<event>`; a map per call under one `calls` map; and schema 2's map per
//! call in one of 16 bucket maps (created with the document). Automerge 0.12
//! merges a change into the object it touches by walking that object's existing
//! operations from the start, so the cost of one new event is the size of the
//! object it lands in: the whole history (flat), the call's few events (a map
//! per call), and for a new call's map the calls map or its bucket. All documents
//! hold the same events (five per call, each a JSON string of a typical event's
//! size); the timed part is `apply_changes` of one change adding one event (the
//! first of a new call, or a later one of an existing call), on a fresh copy of
//! the document each time (the copy is not timed).
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

/// Where a document keeps its events.
#[derive(Clone, Copy)]
enum Layout {
    /// One `events` map keyed `<call>/<event>` (schema v1).
    Flat,
    /// A map per call under one `calls` map.
    PerCall,
    /// A map per call, in one of `n` bucket maps (by the call's hash) created with
    /// the document.
    Buckets(usize),
}

fn bucket_of(call: usize, n: usize) -> String {
    format!("b{:02}", (call.wrapping_mul(2_654_435_761)) % n)
}

/// The map a call's map lives in (creating nothing).
fn container(doc: &AutoCommit, layout: Layout, call: usize) -> automerge::ObjId {
    let (_, top) = automerge::ReadDoc::get(
        doc,
        ROOT,
        match layout {
            Layout::Flat => "events",
            _ => "calls",
        },
    )
    .unwrap()
    .unwrap();
    match layout {
        Layout::Buckets(n) => {
            automerge::ReadDoc::get(doc, &top, bucket_of(call, n))
                .unwrap()
                .unwrap()
                .1
        }
        _ => top,
    }
}

/// A document of `calls` calls in `layout`.
fn document(calls: usize, layout: Layout) -> AutoCommit {
    let mut doc = AutoCommit::new().with_actor(ActorId::from(b"server".as_slice()));
    let top = doc
        .put_object(
            ROOT,
            if matches!(layout, Layout::Flat) {
                "events"
            } else {
                "calls"
            },
            ObjType::Map,
        )
        .unwrap();
    if let Layout::Buckets(n) = layout {
        for b in 0..n {
            doc.put_object(&top, format!("b{b:02}"), ObjType::Map)
                .unwrap();
        }
    }
    doc.commit();
    for call in 0..calls {
        let parent = container(&doc, layout, call);
        let call_map = (!matches!(layout, Layout::Flat)).then(|| {
            doc.put_object(&parent, format!("call-{call:05}"), ObjType::Map)
                .unwrap()
        });
        for step in 0..EVENTS_PER_CALL {
            let value = event_json(call, step);
            match &call_map {
                Some(map) => doc.put(map, format!("e{step}"), value).unwrap(),
                None => doc
                    .put(&parent, format!("call-{call:05}/e{step}"), value)
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
fn new_event_change(base: &mut AutoCommit, calls: usize, layout: Layout, existing: bool) -> Change {
    let mut device = base.fork().with_actor(ActorId::from(b"phone".as_slice()));
    let (call, step) = if existing {
        (calls - 1, EVENTS_PER_CALL)
    } else {
        (calls, 0)
    };
    let parent = container(&device, layout, call);
    let value = event_json(call, step);
    match (layout, existing) {
        (Layout::Flat, _) => {
            device
                .put(&parent, format!("call-{call:05}/e{step}"), value)
                .unwrap();
        }
        (_, true) => {
            let (_, map) = automerge::ReadDoc::get(&device, &parent, format!("call-{call:05}"))
                .unwrap()
                .unwrap();
            device.put(&map, format!("e{step}"), value).unwrap();
        }
        (_, false) => {
            let map = device
                .put_object(&parent, format!("call-{call:05}"), ObjType::Map)
                .unwrap();
            device.put(&map, format!("e{step}"), value).unwrap();
        }
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

#[inline(never)]
fn measured_apply(doc: &mut AutoCommit, change: &Change) {
    doc.apply_changes([change.clone()]).unwrap();
}

fn median_apply_us(calls: usize, layout: Layout, existing: bool) -> (f64, usize) {
    let mut base = document(calls, layout);
    let change = new_event_change(&mut base, calls, layout, existing);
    let bytes = base.save().len();
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let mut copy = base.clone();
        let started = Instant::now();
        measured_apply(&mut copy, &change);
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
        let mut row = serde_json::Map::new();
        row.insert("calls".into(), json!(calls));
        row.insert("events".into(), json!(calls * EVENTS_PER_CALL));
        for (name, layout) in [
            ("flat", Layout::Flat),
            ("per_call_maps", Layout::PerCall),
            ("per_call_maps_in_16_buckets", Layout::Buckets(16)),
        ] {
            let (new, bytes) = median_apply_us(calls, layout, false);
            let (existing, _) = median_apply_us(calls, layout, true);
            row.insert(
                name.into(),
                json!({
                    "apply_new_call_median_us": new,
                    "apply_event_of_existing_call_median_us": existing,
                    "saved_bytes": bytes,
                }),
            );
        }
        rows.push(serde_json::Value::Object(row));
    }
    println!("{}", json!({ "runs": RUNS, "layouts": rows }));
}
