//! Recordings across real processes: a recorded call captured by `phone run`,
//! held on cellular, uploaded on Wi-Fi on a stream of its own, verified and
//! referenced on every replica, downloaded by the desk byte for byte, and
//! deleted so that the bytes leave the server's blob store.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::network::{NUMBER, PhoneRun, World, call_id, callsync};

/// The server's stored recordings (blob files), whatever their names.
fn stored_blobs(world: &World) -> Vec<PathBuf> {
    let root = world.dir("server").join("recordings").join("blobs");
    let mut found = Vec::new();
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Requests a recorded call from the rep's desk and has the phone start it,
/// record for `secs`, and end it; returns the call id.
fn recorded_call(desk: &Path, phone: &Path, run: &mut PhoneRun, secs: f64) -> String {
    let requested = callsync(desk, &["desk", "request", "cus-1", "--number", NUMBER]).ok();
    let call = call_id(&requested);
    run.wait_for(|v| v["event"] == "call-requested" && v["call"] == call.as_str());
    callsync(phone, &["phone", "start", &call]).ok();
    run.wait_for(|v| v["event"] == "recording-started" && v["call"] == call.as_str());
    std::thread::sleep(Duration::from_secs_f64(secs));
    callsync(phone, &["phone", "end", &call, "--duration", "2"]).ok();
    call
}

fn event<'a>(call: &'a str, name: &'a str) -> impl Fn(&Value) -> bool + 'a {
    move |v: &Value| v["event"] == name && v["call"] == call
}

#[test]
fn a_recorded_call_waits_for_wifi_uploads_plays_on_the_desk_and_is_really_deleted() {
    let world = World::start(&[]);
    let (desk, phone) = world.rep_devices();
    let mut run = PhoneRun::start_args(&phone, &["--network", "cellular", "--sample-rate", "8000"]);
    run.wait_for(|v| v["event"] == "caught-up");
    let call = recorded_call(&desk, &phone, &mut run, 1.5);

    let captured = run.wait_for(event(&call, "recording-captured"));
    assert_eq!(captured["cut_short"], false);
    let bytes = captured["bytes"].as_u64().unwrap();
    // 8 kHz, 16-bit mono: 16,000 bytes a second after the 44-byte header.
    assert!(bytes > 16_000, "{captured}");
    let waiting = run.wait_for(event(&call, "upload"));
    assert_eq!(waiting["state"], "waiting-for-wifi", "{waiting}");
    // On cellular nothing leaves the phone.
    std::thread::sleep(Duration::from_secs(1));
    assert!(stored_blobs(&world).is_empty());
    assert_eq!(run.count(event(&call, "recording-uploaded")), 0);
    let on_phone = phone.join("recordings").join(format!("{call}.wav"));
    assert_eq!(std::fs::metadata(&on_phone).unwrap().len(), bytes);

    callsync(&phone, &["phone", "network", "wifi"]).ok();
    let uploaded = run.wait_for(event(&call, "recording-uploaded"));
    assert_eq!(uploaded["sent_bytes"].as_u64(), Some(bytes), "sent once");
    assert!(
        !on_phone.exists(),
        "the phone's copy goes once the server holds it"
    );
    let blobs = stored_blobs(&world);
    assert_eq!(blobs.len(), 1, "{blobs:?}");
    let stored = std::fs::read(&blobs[0]).unwrap();
    assert_eq!(stored.len() as u64, bytes);

    // The reference reaches every replica: the desk's and the phone's.
    let mut shown = Value::Null;
    wait_until("the desk to show the recording stored", || {
        shown = callsync(&desk, &["desk", "show", &call]).ok();
        shown["recording_state"] == "stored"
    });
    let sha256 = shown["recording"]["sha256"].as_str().unwrap().to_owned();
    assert_eq!(
        blobs[0].file_name().unwrap().to_str(),
        Some(sha256.as_str())
    );
    assert_eq!(shown["recording"]["size"].as_u64(), Some(bytes));
    assert_eq!(shown["recording"]["format"], "wav/pcm16");
    let duration = shown["recording"]["duration_ms"].as_u64().unwrap();
    assert!((1_000..10_000).contains(&duration), "{shown}");
    wait_until("the phone to hold the reference", || {
        callsync(&phone, &["phone", "show", &call]).ok()["recording_state"] == "stored"
    });

    // The desk downloads identical bytes.
    let out = world.dir("played.wav");
    let got = callsync(
        &desk,
        &[
            "desk",
            "recording",
            "get",
            &call,
            "-o",
            out.to_str().unwrap(),
        ],
    )
    .ok();
    assert_eq!(got["recording"]["sha256"], sha256.as_str());
    assert_eq!(std::fs::read(&out).unwrap(), stored);

    // A rep may not delete; a manager or above may, and the bytes go.
    callsync(&desk, &["desk", "recording", "delete", &call]).refused("role-required");
    assert_eq!(stored_blobs(&world).len(), 1);
    callsync(&world.admin_desk, &["desk", "open", "cus-1"]).ok();
    let deleted = callsync(&world.admin_desk, &["desk", "recording", "delete", &call]).ok();
    assert_eq!(deleted["recording_state"], "deleted");
    wait_until("the blob store to lose the bytes", || {
        stored_blobs(&world).is_empty()
    });
    // Tombstoned everywhere; nothing plays any more.
    wait_until("the rep's desk to see the tombstone", || {
        callsync(&desk, &["desk", "show", &call]).ok()["recording_state"] == "deleted"
    });
    wait_until("the phone to see the tombstone", || {
        callsync(&phone, &["phone", "show", &call]).ok()["recording_state"] == "deleted"
    });
    let again = world.dir("again.wav");
    callsync(
        &desk,
        &[
            "desk",
            "recording",
            "get",
            &call,
            "-o",
            again.to_str().unwrap(),
        ],
    )
    .refused("recording-deleted");
    assert!(!again.exists());
}

#[test]
fn a_recording_deleted_while_queued_is_dropped_on_the_phone_and_never_uploaded() {
    let world = World::start(&[]);
    let (desk, phone) = world.rep_devices();
    let mut run = PhoneRun::start_args(&phone, &["--network", "cellular", "--sample-rate", "8000"]);
    run.wait_for(|v| v["event"] == "caught-up");
    let call = recorded_call(&desk, &phone, &mut run, 1.0);
    run.wait_for(event(&call, "recording-captured"));
    // The phone's end reaches the server before the manager can see it.
    wait_until("the call to end on the server", || {
        callsync(&world.admin_desk, &["desk", "open", "cus-1"]).ok();
        callsync(&world.admin_desk, &["desk", "show", &call]).ok()["recording_state"] == "pending"
    });
    callsync(&world.admin_desk, &["desk", "recording", "delete", &call]).ok();
    let ended = run.wait_for(event(&call, "upload-ended"));
    assert_eq!(ended["outcome"], "deleted");
    assert!(
        !phone
            .join("recordings")
            .join(format!("{call}.wav"))
            .exists()
    );
    callsync(&phone, &["phone", "network", "wifi"]).ok();
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(run.count(event(&call, "recording-uploaded")), 0);
    assert!(stored_blobs(&world).is_empty());
}

#[test]
fn a_phone_killed_mid_recording_keeps_what_it_captured_and_uploads_it_after_restart() {
    let world = World::start(&[]);
    let (desk, phone) = world.rep_devices();
    let mut run = PhoneRun::start_args(&phone, &["--network", "wifi", "--sample-rate", "8000"]);
    run.wait_for(|v| v["event"] == "caught-up");
    let requested = callsync(&desk, &["desk", "request", "cus-1", "--number", NUMBER]).ok();
    let call = call_id(&requested);
    run.wait_for(event(&call, "call-requested"));
    callsync(&phone, &["phone", "start", &call]).ok();
    run.wait_for(event(&call, "recording-started"));
    std::thread::sleep(Duration::from_millis(2_300));
    drop(run); // SIGKILL mid-recording.
    callsync(&phone, &["phone", "end", &call, "--duration", "2"]).ok();
    let mut run = PhoneRun::start_args(&phone, &["--sample-rate", "8000"]);
    let captured = run.wait_for(event(&call, "recording-captured"));
    assert_eq!(captured["cut_short"], true, "{captured}");
    // At least the seconds synced before the kill: 2 s at 8 kHz.
    assert!(
        captured["duration_ms"].as_u64().unwrap() >= 1_000,
        "{captured}"
    );
    run.wait_for(event(&call, "recording-uploaded"));
    let mut shown = Value::Null;
    wait_until("the desk to show the recording stored", || {
        shown = callsync(&desk, &["desk", "show", &call]).ok();
        shown["recording_state"] == "stored"
    });
    assert_eq!(
        shown["recording"]["size"].as_u64(),
        captured["bytes"].as_u64()
    );
    assert_eq!(stored_blobs(&world).len(), 1);
}

#[test]
fn a_call_recorded_with_the_switch_off_has_no_file_and_other_members_cannot_fetch_recordings() {
    let world = World::start(&[]);
    let (desk, phone) = world.rep_devices();
    let mut run = PhoneRun::start_args(&phone, &["--network", "wifi", "--sample-rate", "8000"]);
    run.wait_for(|v| v["event"] == "caught-up");
    let requested = callsync(
        &desk,
        &[
            "desk",
            "request",
            "cus-1",
            "--number",
            NUMBER,
            "--no-recording",
        ],
    )
    .ok();
    let call = call_id(&requested);
    run.wait_for(event(&call, "call-requested"));
    callsync(&phone, &["phone", "start", &call]).ok();
    std::thread::sleep(Duration::from_millis(1_200));
    callsync(&phone, &["phone", "end", &call, "--duration", "1"]).ok();
    std::thread::sleep(Duration::from_millis(1_200));
    assert_eq!(run.count(event(&call, "recording-started")), 0);
    assert!(
        !phone
            .join("recordings")
            .join(format!("{call}.wav"))
            .exists()
    );
    let out = world.dir("none.wav");
    callsync(
        &desk,
        &[
            "desk",
            "recording",
            "get",
            &call,
            "-o",
            out.to_str().unwrap(),
        ],
    )
    .refused("recording-not-found");

    // Another tenant's member asking for this tenant's call hears of nothing.
    world.add_tenant("beta", "owner@beta.example");
    let beta = world.dir("beta-desk");
    world.login(&beta, "desk", "owner@beta.example").ok();
    callsync(
        &beta,
        &[
            "desk",
            "recording",
            "get",
            &call,
            "-o",
            out.to_str().unwrap(),
        ],
    )
    .refused("recording-not-found");
}
