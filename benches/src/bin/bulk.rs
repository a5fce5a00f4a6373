//! `bulk`: whole-document figures for a 1,000-call customer, printed as one JSON
//! object so two builds can be compared side by side (`cargo run --release -p
//! callsync-benches --bin bulk`). Each figure is the median of several runs.
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
    println!(
        "{{\"calls\":{CALLS},\"events\":{events},\"doc_bytes\":{},\"bytes_per_call\":{:.1},\"build_by_rules_ms\":{build_ms:.1},\"record_avg_ms\":{:.3},\"automerge_load_ms\":{load_ms:.2},\"derive_cold_ms\":{cold_ms:.2},\"derive_warm_ms\":{warm_ms:.3}}}",
        bytes.len(),
        bytes.len() as f64 / CALLS as f64,
        build_ms / events as f64,
    );
}
