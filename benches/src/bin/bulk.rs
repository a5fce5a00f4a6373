//! `bulk`: whole-document figures for a 1,000-call customer, printed as one JSON
//! object so two builds can be compared side by side (`cargo run --release -p
//! callsync-benches --bin bulk`). Each figure is the median of several runs;
//! `append_*` are over 400 appends (request, then cancel) to a 1,000-call customer
//! in a fresh SQLite file: record through the rules, save the chunk, commit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use callsync_benches::{actor, customer_with_calls};
use callsync_core::CustomerDoc;

const CALLS: u64 = 1_000;
const RUNS: usize = 15;

fn median(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e3
}

fn main() {
    let started = Instant::now();
    let mut doc = customer_with_calls(CALLS);
    let build_ms = started.elapsed().as_secs_f64() * 1e3;
    let bytes = doc.save();
    let events = doc.events().0.len();

    let load_ms = median(
        (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                let d = CustomerDoc::load(&bytes, actor()).unwrap();
                let e = t.elapsed();
                drop(d);
                e
            })
            .collect(),
    );
    let docs: Vec<CustomerDoc> = (0..RUNS)
        .map(|_| CustomerDoc::load(&bytes, actor()).unwrap())
        .collect();
    let cold_ms = median(
        docs.iter()
            .map(|d| {
                let t = Instant::now();
                let c = d.customer().unwrap();
                let e = t.elapsed();
                assert_eq!(c.calls.len(), CALLS as usize);
                e
            })
            .collect(),
    );
    let warm_ms = median(
        (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                let c = doc.customer().unwrap();
                let e = t.elapsed();
                assert_eq!(c.calls.len(), CALLS as usize);
                e
            })
            .collect(),
    );
    let (append_median_ms, append_p99_ms) = appends(&mut doc);
    println!(
        "{{\"append_median_ms\":{append_median_ms:.3},\"append_p99_ms\":{append_p99_ms:.3},\"calls\":{CALLS},\"events\":{events},\"doc_bytes\":{},\"bytes_per_call\":{:.1},\"build_by_rules_ms\":{build_ms:.1},\"record_avg_ms\":{:.3},\"automerge_load_ms\":{load_ms:.2},\"derive_cold_ms\":{cold_ms:.2},\"derive_warm_ms\":{warm_ms:.3}}}",
        bytes.len(),
        bytes.len() as f64 / CALLS as f64,
        build_ms / events as f64,
    );
}

/// Median and p99 of 400 appends, each its own committed write.
fn appends(doc: &mut CustomerDoc) -> (f64, f64) {
    use callsync_core::{DeviceId, EventKind, PhoneNumber, ResultCatalog, RuleContext};
    let dir = std::env::temp_dir().join(format!("callsync-bulk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut store = callsync_store::Store::open(&dir.join("bulk.sqlite")).unwrap();
    let mut tx = store.write().unwrap();
    let mut stored = tx.insert(doc).unwrap();
    tx.commit().unwrap();
    let catalog = ResultCatalog::standard();
    let ctx = RuleContext::new(&catalog);
    let mut samples = Vec::with_capacity(400);
    for i in 0..400u64 {
        let (n, step) = (CALLS + i / 2, i % 2);
        let kind = if step == 0 {
            EventKind::Requested {
                destination: PhoneNumber::parse(callsync_testkit::NUMBER).unwrap(),
                origin: DeviceId::new("phone-1").unwrap(),
                recording: true,
            }
        } else {
            EventKind::Cancelled
        };
        let t = Instant::now();
        let mut tx = store.write().unwrap();
        stored
            .doc
            .record(callsync_benches::event(n, step, kind), &ctx)
            .unwrap();
        tx.save(&mut stored).unwrap();
        tx.commit().unwrap();
        samples.push(t.elapsed());
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() * 99 / 100]),
    )
}
