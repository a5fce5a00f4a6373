//! Builders shared by the benchmarks: customer documents with many completed calls.
//!
//! Owns: deterministic bench fixtures. Does not own: timing (criterion does).
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod fleet;

use callsync_core::{
    ActorId, CallEvent, CallId, CustomerDoc, DeviceId, DeviceKind, EventId, EventKind, PhoneNumber,
    ResultCatalog, ResultOption, ResultTypeId, RuleContext, SavedResultFields, Stamp, Timestamp,
    UserId,
};
use callsync_testkit::{NUMBER, START, sample_customer};

/// The bench actor.
pub fn actor() -> ActorId {
    ActorId::from(b"bench".as_slice())
}

/// One event of call `n`, the `step`-th of its life, from the right device.
pub fn event(n: u64, step: u64, kind: EventKind) -> CallEvent {
    let device_kind = match kind {
        EventKind::Started | EventKind::PhoneEnded { .. } => DeviceKind::Phone,
        _ => DeviceKind::Desk,
    };
    let device = if device_kind == DeviceKind::Phone {
        "phone-1"
    } else {
        "desk-1"
    };
    CallEvent {
        id: EventId::new(format!("c{n}-e{step}")).unwrap(),
        call: CallId::new(format!("c{n}")).unwrap(),
        stamp: Stamp {
            at: call_time(n).plus_millis(step as i64 * 10_000),
            device: DeviceId::new(device).unwrap(),
            device_kind,
            user: UserId::new("rep@a.example").unwrap(),
            device_at: None,
        },
        kind,
    }
}

/// When call `n` is requested: one every 10 minutes from the start.
pub fn call_time(n: u64) -> Timestamp {
    START.plus_millis(n as i64 * 600_000)
}

/// The five events of a completed call.
pub fn completed_call(n: u64) -> Vec<CallEvent> {
    let result = SavedResultFields {
        result_type: ResultTypeId::new("no-answer").unwrap(),
        option: ResultOption::None,
        customer_status: None,
        memo: "不在のため後日".to_owned(),
        decision: None,
        kept_as_picked: None,
    };
    vec![
        event(
            n,
            0,
            EventKind::Requested {
                destination: PhoneNumber::parse(NUMBER).unwrap(),
                origin: DeviceId::new("phone-1").unwrap(),
                recording: true,
            },
        ),
        event(n, 1, EventKind::Started),
        event(n, 2, EventKind::PhoneEnded { duration_secs: 42 }),
        event(n, 3, EventKind::BrowserEnded),
        event(n, 4, EventKind::ResultSaved(result)),
    ]
}

/// A customer document with `calls` completed calls, each recorded through the
/// rules, one change per event (as devices would write them).
pub fn customer_with_calls(calls: u64) -> CustomerDoc {
    let mut doc = CustomerDoc::create(&sample_customer(), START, actor()).unwrap();
    let catalog = ResultCatalog::standard();
    let ctx = RuleContext::new(&catalog);
    for n in 0..calls {
        for event in completed_call(n) {
            doc.record(event, &ctx).unwrap();
        }
    }
    doc
}

/// The wall clock, for the bench programs that run real servers.
pub fn now() -> Timestamp {
    Timestamp::from_millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    )
}

/// CPU seconds used so far by this process's threads whose name starts with one
/// of `prefixes` (`&[""]` for all of them), from `/proc`.
pub fn thread_cpu(prefixes: &[&str]) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    let mut total = 0.0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !prefixes.iter().any(|p| comm.trim().starts_with(p)) {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is field 3; utime 14, stime 15.
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let stime: f64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        total += (utime + stime) / ticks;
    }
    total
}

/// This process's peak resident set since it started (or since
/// [`reset_peak_rss`]), in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
}

/// Starts [`peak_rss_kib`] again from the current resident set (Linux's
/// `clear_refs` 5), so a phase's peak is not the set-up's. False where the kernel
/// refuses.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Pins this process (and every thread it starts from now on) to `cpu` with
/// `taskset`; returns whether it could. Load benches pin the server to one core
/// and the load generator to the other, so neither measures the other's CPU.
pub fn pin_self_to(cpu: usize) -> bool {
    std::process::Command::new("taskset")
        .args(["-cp", &cpu.to_string(), &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A command that runs `program` pinned to `cpu` (`taskset -c CPU program`), or
/// unpinned if `taskset` is missing; and whether it is pinned.
pub fn pinned_command(cpu: usize, program: &std::path::Path) -> (std::process::Command, bool) {
    let taskset = std::process::Command::new("taskset")
        .arg("-V")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if taskset {
        let mut command = std::process::Command::new("taskset");
        command.arg("-c").arg(cpu.to_string()).arg(program);
        (command, true)
    } else {
        (std::process::Command::new(program), false)
    }
}

/// The `p` quantile (0–1) of `sorted`, NaN if empty.
pub fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        f64::NAN
    } else {
        sorted[((sorted.len() - 1) as f64 * p).round() as usize]
    }
}
