//! Criterion benchmarks: the baseline later work must not regress.
//!
//! - `derive/customer_1000_calls_{cold,warm}`: read a 1,000-call customer (every
//!   call's state, status, follow-up) from its Automerge document, first read after
//!   a load (cold) and again (warm).
//! - `append/record_and_save_incrementally`: record one event on that customer
//!   through the rules and save it to SQLite as one appended chunk, committed. The
//!   document grows by one event per iteration; `bulk` measures from a fixed start.
//! - `load/sqlite_1000_calls`: load the 1,000-call document from SQLite in one read.
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

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(5));
    targets = derive, append_and_load
}
criterion_main!(benches);
