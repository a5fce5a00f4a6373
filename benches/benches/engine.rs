//! Criterion benchmarks: the baseline later work must not regress.
//!
//! - `derive/customer_1000_calls_{cold,warm}`: read a 1,000-call customer (every
//!   call's state, status, follow-up) from its Automerge document, first read after
//!   a load (cold) and again (warm).
//! - `append/record_and_save_incrementally`: record one event on that customer
//!   through the rules and save it to SQLite as one appended chunk, committed. The
//!   document grows by one event per iteration; `bulk` measures from a fixed start.
//! - `load/sqlite_1000_calls`: load the 1,000-call document from SQLite in one read.
//! - `admission/screen_one_change`: the server's pre-apply screen of a device's sync
//!   message carrying one new event; `admission/screen_1000_call_document`: of one
//!   carrying the whole 1,000-call document (as Automerge sends when a device has
//!   more than a third of it to send).
//! - `admission/admit_one_event_on_1000_calls`: admission of that one new event on
//!   the 1,000-call document, read from the change's own operations.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use callsync_benches::{actor, customer_with_calls, event};
use callsync_core::{CustomerDoc, EventKind, PhoneNumber, ResultCatalog, RuleContext};
use callsync_store::Store;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

const CALLS: u64 = 1_000;

fn derive(c: &mut Criterion) {
    let mut doc = customer_with_calls(CALLS);
    let bytes = doc.save();
    // Cold: the first read of a freshly loaded document parses every event.
    c.bench_function("derive/customer_1000_calls_cold", |b| {
        b.iter_batched(
            || CustomerDoc::load(&bytes, actor()).unwrap(),
            |doc| {
                let customer = black_box(&doc).customer().unwrap();
                assert_eq!(customer.calls.len(), CALLS as usize);
                customer
            },
            BatchSize::LargeInput,
        )
    });
    // Warm: a document already read, as a host keeps it between actions.
    c.bench_function("derive/customer_1000_calls_warm", |b| {
        b.iter(|| {
            let customer = black_box(&doc).customer().unwrap();
            assert_eq!(customer.calls.len(), CALLS as usize);
            customer
        })
    });
}

fn append_and_load(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("bench.sqlite")).unwrap();
    let mut doc = customer_with_calls(CALLS);
    let mut tx = store.write().unwrap();
    let mut stored = tx.insert(&mut doc).unwrap();
    tx.commit().unwrap();
    // Loading first, while the document holds exactly 1,000 calls.
    let tenant = stored.doc.tenant().clone();
    let id = stored.doc.id().clone();
    c.bench_function("load/sqlite_1000_calls", |b| {
        b.iter(|| store.load(&tenant, &id, actor()).unwrap())
    });
    let catalog = ResultCatalog::standard();
    let ctx = RuleContext::new(&catalog);
    // The document grows by one event per iteration (a few thousand over the run).
    // Each iteration requests a new call, then cancels it on the next: one event
    // and one committed chunk per iteration, and the rules never block.
    let mut n = CALLS;
    let mut step = 0u64;
    c.bench_function("append/record_and_save_incrementally", |b| {
        b.iter(|| {
            let kind = if step == 0 {
                EventKind::Requested {
                    destination: PhoneNumber::parse(callsync_testkit::NUMBER).unwrap(),
                    origin: callsync_core::DeviceId::new("phone-1").unwrap(),
                    recording: true,
                }
            } else {
                EventKind::Cancelled
            };
            let mut tx = store.write().unwrap();
            stored.doc.record(event(n, step, kind), &ctx).unwrap();
            let outcome = tx.save(&mut stored).unwrap();
            tx.commit().unwrap();
            if step == 1 {
                n += 1;
            }
            step = 1 - step;
            outcome
        })
    });
}

/// Every actor is bound to the sender and every phone is the user's: admission's
/// full path runs.
struct AnyDevice;

impl callsync_core::admission::Directory for AnyDevice {
    fn actor_is_bound_to(&self, _: &callsync_core::ActorId, _: &callsync_core::DeviceId) -> bool {
        true
    }
    fn is_phone_of(&self, _: &callsync_core::DeviceId, _: &callsync_core::UserId) -> bool {
        true
    }
}

fn admission(c: &mut Criterion) {
    use automerge::sync::SyncDoc;
    use callsync_core::admission::{Sender, admit};
    use callsync_core::screen::{ScreenLimits, screen_message};
    let mut server = customer_with_calls(CALLS);
    let before = server.heads();
    let catalog = ResultCatalog::standard();
    // A desk's replica records one request.
    let mut desk = server.clone();
    desk.automerge_mut()
        .set_actor(callsync_core::ActorId::from(b"desk-1".as_slice()));
    let request = EventKind::Requested {
        destination: PhoneNumber::parse(callsync_testkit::NUMBER).unwrap(),
        origin: callsync_core::DeviceId::new("phone-1").unwrap(),
        recording: true,
    };
    desk.record(event(CALLS + 1, 0, request), &RuleContext::new(&catalog))
        .unwrap();
    let change = desk
        .automerge_mut()
        .get_last_local_change()
        .unwrap()
        .raw_bytes()
        .to_vec();
    let mut state = automerge::sync::State::new();
    let mut one = desk
        .automerge_mut()
        .sync()
        .generate_sync_message(&mut state)
        .unwrap();
    one.changes = vec![change.clone()].into();
    let limits = ScreenLimits::default();
    c.bench_function("admission/screen_one_change", |b| {
        b.iter(|| screen_message(black_box(&one), &limits).unwrap())
    });
    let mut whole = one.clone();
    whole.changes = vec![server.save()].into();
    c.bench_function("admission/screen_1000_call_document", |b| {
        b.iter(|| screen_message(black_box(&whole), &limits).unwrap())
    });
    let sender = Sender {
        tenant: server.tenant().clone(),
        user: callsync_core::UserId::new("rep@a.example").unwrap(),
        role: callsync_core::Role::User,
        device: callsync_core::DeviceId::new("desk-1").unwrap(),
        kind: callsync_core::DeviceKind::Desk,
    };
    let _ = server.customer().unwrap();
    c.bench_function("admission/admit_one_event_on_1000_calls", |b| {
        b.iter_batched(
            || {
                let mut copy = server.clone();
                copy.automerge_mut().load_incremental(&change).unwrap();
                copy
            },
            |mut copy| {
                let admitted = admit(&mut copy, &before, &sender, &AnyDevice, &catalog).unwrap();
                assert_eq!(admitted.len(), 1);
                admitted
            },
            BatchSize::LargeInput,
        )
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(5));
    targets = derive, append_and_load, admission
}
criterion_main!(benches);
