//! `plugins`: what a result-rule plugin costs, printed as one JSON object
//! (`cargo run --release -p callsync-benches --bin plugins`).
//!
//! - `evaluate_*`: one `evaluate` of a saved result (a `no-answer` recall with no
//!   picked time, so the plugin computes it), a fresh instance per call from the
//!   `InstancePre`, with fuel, deadline and memory limits armed; median and p99 over
//!   `EVALUATIONS` calls after a warm-up. `validate_*` likewise. Target < 50 µs.
//! - `install_standard_ms`: `inspect` of the standard plugin's module on a fresh host
//!   (wrap into a component, compile, describe, smoke-evaluate every result type and
//!   option, write the compiled artifact to the disk cache). Target < 1 s.
//! - `load_cached_ms`: `load` on a fresh host whose disk cache holds the compiled
//!   plugin (read, digest check, deserialize, `InstancePre`). Target < 1 ms.
//! - `fuel_per_evaluate`: fuel one evaluation uses, against the limit.
//! - `zone_offsets_us`: building the UTC offsets a call's inputs carry (402 days).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use callsync_core::Timestamp;
use callsync_core::id::ResultTypeId;
use callsync_core::plugin::{Pick, RuleInputs};
use callsync_core::result_type::OptionKind;
use callsync_plugin_host::{Limits, PluginHost, holidays, zone};
use callsync_shipped_plugins::{BUSINESS_HOURS, STANDARD};
use serde_json::json;

const EVALUATIONS: usize = 20_000;
const WARM_UP: usize = 500;
const INSTALLS: usize = 7;
const LOADS: usize = 51;

fn quantile_us(samples: &mut [Duration], q: f64) -> f64 {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples[index].as_secs_f64() * 1e6
}

fn median_ms(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e3
}

/// 2026-11-24 10:00 JST.
const ENDED: Timestamp = Timestamp::from_millis(1_795_482_000_000);

fn inputs(at: Timestamp) -> RuleInputs {
    RuleInputs {
        call_ended_at: at,
        saved_at: at.plus_millis(60_000),
        zone: zone::utc_offsets(chrono_tz::Asia::Tokyo, at),
        holidays: holidays::japan(),
        settings: Vec::new(),
        attempt: 1,
    }
}

fn measure_calls(host: &PluginHost, file: &[u8]) -> serde_json::Value {
    let inspected = host.inspect(file, &[], inputs, ENDED).unwrap();
    let plugin = host.load(inspected.hash, &inspected.component).unwrap();
    let spec = inspected
        .info
        .result_types
        .iter()
        .find(|t| t.id.as_str() == "no-answer")
        .unwrap()
        .clone();
    // A Friday-evening call: business hours must skip the weekend.
    let friday_evening = ENDED.plus_millis(3 * 86_400_000 + 7 * 3_600_000);
    let inputs = inputs(friday_evening);
    let pick = Pick {
        result_type: ResultTypeId::new("no-answer").unwrap(),
        option: OptionKind::Recall,
        at: None,
        customer_status: None,
    };
    for _ in 0..WARM_UP {
        plugin.evaluate(&pick, &inputs, &spec).unwrap();
    }
    let mut evaluate: Vec<Duration> = (0..EVALUATIONS)
        .map(|_| {
            let started = Instant::now();
            let decision = plugin.evaluate(&pick, &inputs, &spec).unwrap();
            let elapsed = started.elapsed();
            std::hint::black_box(decision);
            elapsed
        })
        .collect();
    let mut validate: Vec<Duration> = (0..EVALUATIONS)
        .map(|_| {
            let started = Instant::now();
            let answer = plugin.validate(&pick, &inputs).unwrap();
            let elapsed = started.elapsed();
            std::hint::black_box(answer).unwrap();
            elapsed
        })
        .collect();
    json!({
        "plugin": plugin.name(),
        "component_bytes": inspected.component.len(),
        "evaluate_median_us": quantile_us(&mut evaluate, 0.5),
        "evaluate_p99_us": quantile_us(&mut evaluate, 0.99),
        "validate_median_us": quantile_us(&mut validate, 0.5),
        "validate_p99_us": quantile_us(&mut validate, 0.99),
        "fuel_per_evaluate": plugin.evaluate_fuel(&pick, &inputs).unwrap(),
        "fuel_limit": host.limits().fuel,
    })
}

fn main() {
    let host = PluginHost::new(Limits::default(), None).unwrap();
    let standard = measure_calls(&host, STANDARD);
    let business_hours = measure_calls(&host, BUSINESS_HOURS);

    let mut hash = None;
    let mut component = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let installs: Vec<Duration> = (0..INSTALLS)
        .map(|run| {
            let cache = dir.path().join(format!("run-{run}"));
            let fresh = PluginHost::new(Limits::default(), Some(&cache)).unwrap();
            let started = Instant::now();
            let inspected = fresh.inspect(STANDARD, &[], inputs, ENDED).unwrap();
            let elapsed = started.elapsed();
            hash = Some(inspected.hash);
            component = inspected.component;
            elapsed
        })
        .collect();
    let hash = hash.unwrap();
    let cache = dir.path().join("run-0");
    let loads: Vec<Duration> = (0..LOADS)
        .map(|_| {
            let fresh = PluginHost::new(Limits::default(), Some(&cache)).unwrap();
            let started = Instant::now();
            let plugin = fresh.load(hash, &component).unwrap();
            let elapsed = started.elapsed();
            std::hint::black_box(plugin);
            elapsed
        })
        .collect();
    let mut zones: Vec<Duration> = (0..1_000)
        .map(|i| {
            let started = Instant::now();
            let offsets = zone::utc_offsets(
                chrono_tz::America::New_York,
                ENDED.plus_millis(i * 3_600_000),
            );
            let elapsed = started.elapsed();
            std::hint::black_box(offsets);
            elapsed
        })
        .collect();

    let report = json!({
        "standard": standard,
        "business_hours": business_hours,
        "install_standard_ms": median_ms(installs),
        "load_cached_ms": median_ms(loads),
        "zone_offsets_us": quantile_us(&mut zones, 0.5),
        "targets": { "evaluate_us": 50, "install_ms": 1000, "load_cached_ms": 1 },
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}
