//! Offline work and crashes: what a phone does without a connection arrives once,
//! and a server killed mid-sync keeps everything it acknowledged.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::network::{NUMBER, PhoneRun, World, call_id, callsync};
use crate::support::{Run, callsync_bin};

/// The phone stays on cellular: its recording waits, so the replicas compared
/// here hold the same events (an upload would attach one on the server first).
const CELLULAR: &[&str] = &["--network", "cellular"];

/// How many of each event kind a replica's timeline holds for `call`.
fn kinds(timeline: &Value, call: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for entry in timeline.as_array().expect("timeline") {
        if entry["call"] == call {
            // Unit kinds are strings; kinds with fields are `{name: {…}}`.
            let kind = match &entry["kind"] {
                Value::String(name) => name.clone(),
                Value::Object(map) => map.keys().next().cloned().unwrap_or_default(),
                other => other.to_string(),
            };
            *out.entry(kind).or_default() += 1;
        }
    }
    out
}

#[test]
fn work_done_on_both_sides_while_the_phone_is_cut_off_converges_once() {
    let world = World::start(&[]);
    let (desk, phone) = world.rep_devices();
    let mut run = PhoneRun::start_args(&phone, CELLULAR);
    let call = call_id(&callsync(&desk, &["desk", "request", "cus-1", "--number", NUMBER]).ok());
    run.wait_for(|v| v["event"] == "call-requested");
    callsync(&phone, &["phone", "start", &call]).ok();
    run.wait_for(|v| v["event"] == "acknowledged");
    run.stop();

    // Cut off: the phone ends the call; the desk ends it too.
    callsync(&phone, &["phone", "end", &call, "--duration", "61"]).ok();
    callsync(&desk, &["desk", "end", &call]).ok();

    let mut run = PhoneRun::start_args(&phone, CELLULAR);
    run.wait_for(|v| v["event"] == "acknowledged");
    run.wait_for(|v| v["event"] == "caught-up");
    let on_phone = callsync(&phone, &["phone", "show", &call]).ok();
    let on_desk = callsync(&desk, &["desk", "show", &call]).ok();
    assert_eq!(on_phone["phase"], "awaiting-result");
    assert_eq!(on_phone, on_desk);
    let phone_timeline = callsync(&phone, &["timeline", "cus-1"]).ok();
    let desk_timeline = callsync(&desk, &["timeline", "cus-1"]).ok();
    assert_eq!(phone_timeline, desk_timeline);
    let counts = kinds(&phone_timeline, &call);
    assert!(
        counts.values().all(|n| *n == 1),
        "no duplicates: {counts:?}"
    );
    assert_eq!(counts.len(), 4, "{counts:?}");
    run.stop();
}

#[test]
fn a_phone_keeps_working_while_the_server_is_down_and_syncs_when_it_returns() {
    let mut world = World::start(&[]);
    let (desk, phone) = world.rep_devices();
    let mut run = PhoneRun::start(&phone);
    let call = call_id(&callsync(&desk, &["desk", "request", "cus-1", "--number", NUMBER]).ok());
    run.wait_for(|v| v["event"] == "call-requested");

    world.server.stop();
    run.wait_for(|v| v["event"] == "disconnected");
    // Offline: the phone starts and ends the call on its own replica.
    callsync(&phone, &["phone", "start", &call]).ok();
    callsync(&phone, &["phone", "end", &call, "--duration", "5"]).ok();
    // The desk cannot reach the server and says so.
    let down = callsync(&desk, &["desk", "show", &call]);
    assert_eq!(down.code, 2, "{down:?}");
    assert_eq!(down.json()["error"]["code"], "unreachable");

    world.server.restart();
    // `phone run` reconnects by itself (backoff) and pushes what it did.
    run.wait_for(|v| v["event"] == "acknowledged");
    let on_desk = callsync(&desk, &["desk", "show", &call]).ok();
    assert_eq!(on_desk["phase"], "phone-ended");
    run.stop();
}

/// Server kills, each landing while a desk command is syncing.
const KILLS: usize = 6;
/// How long a desk command may wait for the server (just restarted) before the
/// kill: generous, so a loaded machine still reaches the send.
const DESK_TIMEOUT_SECS: &str = "20";

/// Runs a desk command and SIGKILLs `server` `delay` after the command has sent
/// its change (the desk logs each send of changes at debug level): the kill lands
/// while the server is taking the change, committing it or answering. Returns
/// the command's outcome and whether it sent a change at all.
fn run_killing_mid_sync(desk: &Path, args: &[&str], server: u32, delay: Duration) -> (Run, bool) {
    let mut child = Command::new(callsync_bin())
        .arg("--json")
        .arg("--data")
        .arg(desk)
        .args(["--timeout-secs", DESK_TIMEOUT_SECS])
        .args(args)
        .env("RUST_LOG", "callsync_replica=debug")
        .env_remove("CALLSYNC_USER")
        .env_remove("CALLSYNC_TENANT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = Vec::new();
    let mut sent = false;
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if !sent && line.contains("sent changes to the server") {
            sent = true;
            std::thread::sleep(delay);
            let _ = Command::new("kill")
                .args(["-KILL", &server.to_string()])
                .status();
        }
        lines.push(line);
    }
    let out = child.wait_with_output().unwrap();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: lines.join("\n"),
    };
    (run, sent)
}

#[test]
fn a_server_killed_mid_sync_keeps_every_change_it_acknowledged() {
    let mut world = World::start(&[]);
    let (desk, phone) = world.rep_devices();
    let mut run = PhoneRun::start(&phone);
    run.wait_for(|v| v["event"] == "caught-up");
    let mut acknowledged = Vec::new();
    let mut cancelled = Vec::new();
    let mut lost_answers = 0;
    // From at once to past the server's usual answer (a few milliseconds), so
    // kills land before, during and after its commit.
    let delays_us: [u64; KILLS] = [0, 11_000, 500, 6_000, 1_500, 3_000];
    for (round, delay_us) in delays_us.into_iter().enumerate() {
        let delay = Duration::from_micros(delay_us);
        let pid = world.server.pid();
        // Every other round the kill lands in the request, else in its cancel.
        let (outcome, sent) = if round % 2 == 0 {
            let (request, sent) = run_killing_mid_sync(
                &desk,
                &["desk", "request", "cus-1", "--number", NUMBER],
                pid,
                delay,
            );
            if request.code == 0 {
                acknowledged.push(call_id(&request.json()));
            }
            (request, sent)
        } else {
            let call =
                call_id(&callsync(&desk, &["desk", "request", "cus-1", "--number", NUMBER]).ok());
            acknowledged.push(call.clone());
            let (cancel, sent) =
                run_killing_mid_sync(&desk, &["desk", "cancel", &call], pid, delay);
            if cancel.code == 0 {
                cancelled.push(call);
            }
            (cancel, sent)
        };
        assert!(
            sent,
            "round {round}: the desk sent no change: {}",
            outcome.stderr
        );
        if outcome.code != 0 {
            lost_answers += 1;
        }
        world.server.reap();
        world.server.restart();
        // An acknowledged cancel survived the kill: checked before anything below
        // could cancel the call again.
        {
            let conn = rusqlite::Connection::open(world.server.db()).unwrap();
            for call in &cancelled {
                let phase: String = conn
                    .query_row("SELECT phase FROM calls WHERE call_id = ?1", [call], |r| {
                        r.get(0)
                    })
                    .unwrap();
                assert_eq!(
                    phase, "cancelled",
                    "round {round}: acknowledged cancel of {call} was lost"
                );
            }
        }
        // A request the desk holds but could not cancel (or whose answer was lost)
        // still blocks new ones: cancel it now, the server being back.
        let held = callsync(&desk, &["desk", "calls"]).ok();
        for call in held.as_array().unwrap() {
            if call["phase"] == "awaiting-start" {
                let id = call["call"].as_str().unwrap();
                callsync(&desk, &["desk", "cancel", id]).ok();
            }
        }
        // Everything acknowledged so far is in the server's database.
        let conn = rusqlite::Connection::open(world.server.db()).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        for call in &acknowledged {
            let n: i64 = conn
                .query_row(
                    "SELECT count(*) FROM calls WHERE call_id = ?1",
                    [call],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(n, 1, "round {round}: acknowledged call {call} was lost");
        }
    }
    eprintln!(
        "server kills: {KILLS}, each after the desk sent its change; {lost_answers} commands lost their answer"
    );
    // Some cancels were acknowledged before their kill (so the check above ran).
    assert!(!cancelled.is_empty(), "no cancel was acknowledged");
    // The kills did cut commands off (not all landed after the answer).
    assert!(
        lost_answers > 0,
        "every kill landed after the server answered"
    );
    // A desk that logs in fresh sees every acknowledged call.
    let fresh = world.dir("fresh-desk");
    world.login(&fresh, "desk", crate::network::REP).ok();
    callsync(&fresh, &["desk", "open", "cus-1"]).ok();
    let calls = callsync(&fresh, &["desk", "calls"]).ok();
    for call in &acknowledged {
        assert!(
            calls
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["call"] == call.as_str()),
            "{call} missing on a fresh desk"
        );
    }
    run.stop();
}
