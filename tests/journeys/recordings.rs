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

/// `desk recording get CALL -o OUT` on `desk`.
fn get_recording(desk: &Path, call: &str, out: &Path) -> crate::support::Run {
    callsync(
        desk,
        &[
            "desk",
            "recording",
            "get",
            call,
            "-o",
            out.to_str().unwrap(),
        ],
    )
}

/// The call as `desk` shows it, once its recording is stored there.
fn shown_stored(desk: &Path, call: &str) -> Value {
    let mut shown = Value::Null;
    wait_until("the desk to show the recording stored", || {
        shown = callsync(desk, &["desk", "show", call]).ok();
        shown["recording_state"] == "stored"
    });
    shown
}

/// `desk recording link CALL`: the path to play the recording from.
fn recording_link(desk: &Path, call: &str) -> String {
    let link = callsync(desk, &["desk", "recording", "link", call]).ok();
    link["path"].as_str().expect("a path").to_owned()
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
    let shown = shown_stored(&desk, &call);
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
    let got = get_recording(&desk, &call, &out).ok();
    assert_eq!(got["recording"]["sha256"], sha256.as_str());
    assert_eq!(std::fs::read(&out).unwrap(), stored);

    // It plays over HTTP from a signed link, whole or by range (as the page's
    // player asks), and a link changed in any way plays nothing.
    let link = recording_link(&desk, &call);
    let (status, headers, body) = crate::support::http_get(&world.server.page, &link, "");
    assert!(status.contains(" 200 "), "{status}");
    assert!(headers.contains("content-type: audio/wav"), "{headers}");
    assert!(headers.contains("accept-ranges: bytes"), "{headers}");
    assert!(headers.contains("cache-control: no-store"), "{headers}");
    assert_eq!(body, stored);
    let (status, headers, body) =
        crate::support::http_get(&world.server.page, &link, "Range: bytes=100-1123\r\n");
    assert!(status.contains(" 206 "), "{status}");
    assert!(
        headers.contains(&format!("content-range: bytes 100-1123/{bytes}")),
        "{headers}"
    );
    assert_eq!(body, stored[100..1124]);
    let (status, _, body) =
        crate::support::http_get(&world.server.page, &link, "Range: bytes=-44\r\n");
    assert!(status.contains(" 206 "), "{status}");
    assert_eq!(body, stored[stored.len() - 44..]);
    let (status, headers, _) = crate::support::http_get(
        &world.server.page,
        &link,
        &format!("Range: bytes={bytes}-\r\n"),
    );
    assert!(status.contains(" 416 "), "{status}");
    assert!(
        headers.contains(&format!("content-range: bytes */{bytes}")),
        "{headers}"
    );
    let mut forged = link.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    let (status, _, body) = crate::support::http_get(&world.server.page, &forged, "");
    assert!(status.contains(" 403 "), "{status}");
    assert!(!body.starts_with(b"RIFF"));
    // Another tenant's member gets no link to this tenant's recording.
    world.add_tenant("beta", "owner@beta.example");
    let beta = world.dir("beta-desk");
    world.login(&beta, "desk", "owner@beta.example").ok();
    callsync(&beta, &["desk", "recording", "link", &call]).refused("recording-not-found");

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
    get_recording(&desk, &call, &again).refused("recording-deleted");
    assert!(!again.exists());
    // The link signed before plays nothing now, and no new one is given.
    let (status, _, _) = crate::support::http_get(&world.server.page, &link, "");
    assert!(status.contains(" 404 "), "{status}");
    callsync(&desk, &["desk", "recording", "link", &call]).refused("recording-deleted");
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
    let shown = shown_stored(&desk, &call);
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
    get_recording(&desk, &call, &out).refused("recording-not-found");

    // Another tenant's member asking for this tenant's call hears of nothing.
    world.add_tenant("beta", "owner@beta.example");
    let beta = world.dir("beta-desk");
    world.login(&beta, "desk", "owner@beta.example").ok();
    get_recording(&beta, &call, &out).refused("recording-not-found");
}

/// Writes a mono 16-bit WAV of `secs` seconds of a tone at `rate`.
fn tone_wav(path: &Path, secs: u32, rate: u32) -> u64 {
    let bytes = callsync_testkit::tone_wav(secs, rate, 440.0);
    std::fs::write(path, &bytes).unwrap();
    bytes.len() as u64
}

/// A recorded call made while `phone run` was not running (so nothing was
/// captured), with `file` then left in the phone's recordings directory as a
/// host's own recorder would: the next `phone run` queues it.
fn call_with_file(world: &World, file: impl FnOnce(&Path)) -> (PathBuf, PathBuf, String) {
    let (desk, phone) = world.rep_devices();
    let mut run = PhoneRun::start_args(&phone, &["--network", "cellular"]);
    run.wait_for(|v| v["event"] == "caught-up");
    let requested = callsync(&desk, &["desk", "request", "cus-1", "--number", NUMBER]).ok();
    let call = call_id(&requested);
    run.wait_for(event(&call, "call-requested"));
    run.stop();
    callsync(&phone, &["phone", "start", &call]).ok();
    callsync(&phone, &["phone", "end", &call, "--duration", "60"]).ok();
    let dir = phone.join("recordings");
    std::fs::create_dir_all(&dir).unwrap();
    file(&dir.join(format!("{call}.wav")));
    (desk, phone, call)
}

fn percent(v: &Value) -> u64 {
    v["percent"].as_u64().unwrap_or(0)
}

#[test]
fn an_upload_cut_midway_resumes_where_the_server_is_and_sends_again_at_most_its_window() {
    let mut world = World::start(&[]);
    let mut size = 0;
    let (desk, phone, call) = call_with_file(&world, |path| size = tone_wav(path, 30 * 60, 16_000));
    let sha256 = callsync_replica::recorder::file_sha256(
        &phone.join("recordings").join(format!("{call}.wav")),
    )
    .unwrap();
    let mut run = PhoneRun::start_args(&phone, &["--network", "wifi"]);
    let cut_at = run.wait_for(|v| event(&call, "upload")(v) && percent(v) >= 10);
    // The server dies mid-upload, and comes back.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &world.server.pid().to_string()])
        .status();
    world.server.reap();
    assert_eq!(
        run.count(event(&call, "recording-uploaded")),
        0,
        "cut before the end"
    );
    let staged = world
        .dir("server")
        .join("recordings")
        .join("staging")
        .join("acme")
        .join(format!("{sha256}.part"));
    let held = std::fs::metadata(&staged).map(|m| m.len()).unwrap_or(0);
    assert!(
        held >= size * percent(&cut_at) / 100,
        "what was acknowledged is kept: {held} of {size}"
    );
    world.server.restart();
    // A server killed without a word is noticed when the connection goes
    // silent (QUIC's idle timeout, 30 s): the new process cannot reset a
    // connection it never knew.
    let uploaded = run.wait_for_within(Duration::from_secs(90), event(&call, "recording-uploaded"));
    let sent = uploaded["sent_bytes"].as_u64().unwrap();
    let window = 4 * 256 * 1024;
    assert!(
        sent >= size && sent <= size + window,
        "sent {sent} for {size}: resumed, not restarted"
    );
    let shown = callsync(&desk, &["desk", "show", &call]).ok();
    assert_eq!(shown["recording"]["sha256"], sha256.as_str());
    assert_eq!(shown["recording"]["duration_ms"], 30 * 60 * 1_000);
    assert!(!staged.exists(), "the staging area is emptied");
}

#[test]
fn a_staged_upload_damaged_while_the_server_was_down_is_refused_by_its_hash_and_sent_again_whole() {
    let mut world = World::start(&[]);
    let mut size = 0;
    let (desk, phone, call) = call_with_file(&world, |path| size = tone_wav(path, 30 * 60, 16_000));
    let sha256 = callsync_replica::recorder::file_sha256(
        &phone.join("recordings").join(format!("{call}.wav")),
    )
    .unwrap();
    let staged = world
        .dir("server")
        .join("recordings")
        .join("staging")
        .join("acme")
        .join(format!("{sha256}.part"));
    let mut run = PhoneRun::start_args(&phone, &["--network", "wifi"]);
    run.wait_for(|v| event(&call, "upload")(v) && percent(v) >= 5);
    // The server stops mid-upload; a byte it had acknowledged goes bad on its
    // disk meanwhile.
    world.server.stop();
    assert_eq!(
        run.count(event(&call, "recording-uploaded")),
        0,
        "stopped before the end"
    );
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&staged)
            .unwrap();
        file.seek(SeekFrom::Start(1_000)).unwrap();
        file.write_all(&[0x5a]).unwrap();
    }
    world.server.restart();
    // The upload resumes where the staging area reached (what it holds is
    // read back and hashed), and the whole fails its hash.
    let refused = run.wait_for_within(Duration::from_secs(60), |v| {
        v["event"] == "upload-refused" && v["call"] == call.as_str()
    });
    assert_eq!(refused["code"], "recording-hash-mismatch");
    assert!(refused["message_ja"].as_str().unwrap().contains("破損"));
    let uploaded = run.wait_for_within(Duration::from_secs(60), event(&call, "recording-uploaded"));
    assert!(
        uploaded["sent_bytes"].as_u64().unwrap() >= 2 * size - 4 * 256 * 1024,
        "sent again from zero"
    );
    let blobs = stored_blobs(&world);
    assert_eq!(blobs.len(), 1);
    assert_eq!(
        callsync_replica::recorder::file_sha256(&blobs[0]).unwrap(),
        sha256,
        "the good bytes are stored"
    );
    assert!(!staged.exists(), "the damaged staging is gone");
    let shown = callsync(&desk, &["desk", "show", &call]).ok();
    assert_eq!(shown["recording_state"], "stored");
}

#[test]
fn a_full_quota_keeps_the_recording_waiting_on_the_phone() {
    let world = World::start_serving(&[], &["--recording-quota-bytes", "50000"]);
    let (_desk, phone, call) = call_with_file(&world, |path| {
        tone_wav(path, 5, 8_000);
    });
    let mut run = PhoneRun::start_args(&phone, &["--network", "wifi"]);
    let refused = run.wait_for(|v| v["event"] == "upload-refused" && v["call"] == call.as_str());
    assert_eq!(refused["code"], "recording-quota-full", "{:#?}", run.seen);
    assert!(refused["message_ja"].as_str().unwrap().contains("上限"));
    let waiting = run.wait_for(|v| event(&call, "upload")(v) && v["state"] == "waiting-to-retry");
    assert!(waiting["at"].as_i64().is_some(), "{waiting}");
    assert!(stored_blobs(&world).is_empty());
    assert!(
        phone
            .join("recordings")
            .join(format!("{call}.wav"))
            .exists(),
        "kept on the phone"
    );
}

#[test]
fn a_file_that_is_not_a_wav_is_refused_for_good_and_kept_aside_on_the_phone() {
    let world = World::start(&[]);
    let (desk, phone, call) = call_with_file(&world, |path| {
        std::fs::write(path, "this is not audio\n".repeat(2_000)).unwrap();
    });
    let mut run = PhoneRun::start_args(&phone, &["--network", "wifi"]);
    let ended = run.wait_for(event(&call, "upload-ended"));
    assert_eq!(ended["outcome"], "recording-not-wav");
    assert!(stored_blobs(&world).is_empty());
    let aside = phone
        .join("recordings")
        .join("refused")
        .join(format!("{call}.wav"));
    assert!(
        aside.exists(),
        "the phone keeps the file it could not upload"
    );
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(
        run.count(event(&call, "upload-ended")),
        1,
        "never offered again"
    );
    let shown = callsync(&desk, &["desk", "show", &call]).ok();
    assert_eq!(shown["recording_state"], "pending");
}

#[test]
fn an_upload_for_another_tenants_call_is_refused_and_stores_nothing() {
    use callsync_core::wire::stream::{self, StreamOpen, StreamReply};
    let world = World::start(&[]);
    let (desk, phone) = world.rep_devices();
    let mut run = PhoneRun::start_args(&phone, &["--network", "cellular"]);
    run.wait_for(|v| v["event"] == "caught-up");
    let call = call_id(&callsync(&desk, &["desk", "request", "cus-1", "--number", NUMBER]).ok());
    run.wait_for(event(&call, "call-requested"));
    world.add_tenant("beta", "owner@beta.example");
    let beta_phone = world.dir("beta-phone");
    world.login(&beta_phone, "phone", "owner@beta.example").ok();
    let wav = world.dir("some.wav");
    let size = tone_wav(&wav, 1, 8_000);
    let sha256 = callsync_replica::recorder::file_sha256(&wav).unwrap();
    let reply = crate::support::runtime().block_on(async {
        let (client, _) = callsync_replica::SyncClient::connect(&beta_phone)
            .await
            .unwrap();
        let (mut send, mut recv) = client.connection().unwrap().open_bi().await.unwrap();
        let open = StreamOpen::Upload {
            customer: callsync_core::CustomerId::new("cus-1").unwrap(),
            call: callsync_core::CallId::new(&call).unwrap(),
            sha256,
            bytes: size,
        };
        let frame = stream::encode_stream_frame(&open).unwrap();
        callsync_net::framing::write_frame(&mut send, &frame)
            .await
            .unwrap();
        let body = callsync_net::framing::read_frame_within(&mut recv, 4096)
            .await
            .unwrap()
            .unwrap();
        stream::decode_stream_frame::<StreamReply>(&body).unwrap()
    });
    let StreamReply::Refused(body) = reply else {
        panic!("not refused: {reply:?}");
    };
    assert_eq!(body.code, "recording-not-found");
    assert!(stored_blobs(&world).is_empty());
    assert!(
        !world
            .dir("server")
            .join("recordings")
            .join("staging")
            .join("beta")
            .exists()
    );
}

/// Opens a recording stream on `connection`, says `open` and reads the
/// first answer; the stream stays open for more.
async fn stream_ask(
    connection: &quinn::Connection,
    open: &callsync_core::wire::stream::StreamOpen,
) -> (
    quinn::SendStream,
    quinn::RecvStream,
    callsync_core::wire::stream::StreamReply,
) {
    use callsync_core::wire::stream;
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    let frame = stream::encode_stream_frame(open).unwrap();
    callsync_net::framing::write_frame(&mut send, &frame)
        .await
        .unwrap();
    let reply = read_reply(&mut recv).await;
    (send, recv, reply)
}

async fn read_reply(recv: &mut quinn::RecvStream) -> callsync_core::wire::stream::StreamReply {
    let body = callsync_net::framing::read_frame_within(recv, 4096)
        .await
        .unwrap()
        .unwrap();
    callsync_core::wire::stream::decode_stream_frame(&body).unwrap()
}

#[test]
fn offers_before_the_call_started_past_the_size_limit_or_chunks_out_of_place_store_nothing() {
    use callsync_core::wire::stream::{self, StreamOpen, StreamReply};
    let world = World::start_serving(&[], &["--max-recording-bytes", "100000"]);
    let (desk, phone) = world.rep_devices();
    let requested = callsync(&desk, &["desk", "request", "cus-1", "--number", NUMBER]).ok();
    let call = call_id(&requested);
    let refused_code = |reply: StreamReply| match reply {
        StreamReply::Refused(body) => body.code,
        other => panic!("not refused: {other:?}"),
    };
    let offer = |bytes: u64| StreamOpen::Upload {
        customer: callsync_core::CustomerId::new("cus-1").unwrap(),
        call: callsync_core::CallId::new(call.as_str()).unwrap(),
        sha256: "ab".repeat(32),
        bytes,
    };
    crate::support::runtime().block_on(async {
        let (mut client, _) = callsync_replica::SyncClient::connect(&phone).await.unwrap();
        client.settle(Duration::from_secs(10)).await.unwrap();
        let connection = client.connection().unwrap().clone();
        // The phone has not started the call: nothing may be uploaded for it.
        let (_, _, reply) = stream_ask(&connection, &offer(1_000)).await;
        assert_eq!(refused_code(reply), "recording-call-not-started");
        connection.close(0u32.into(), b"done");
    });
    callsync(&phone, &["phone", "start", &call]).ok();
    crate::support::runtime().block_on(async {
        let (mut client, _) = callsync_replica::SyncClient::connect(&phone).await.unwrap();
        client.settle(Duration::from_secs(10)).await.unwrap();
        let connection = client.connection().unwrap().clone();
        // Larger than the server's limit: refused before a byte is sent.
        let (_, _, reply) = stream_ask(&connection, &offer(100_001)).await;
        assert_eq!(refused_code(reply), "recording-too-large");
        // A chunk that does not follow what the server holds ends the stream.
        let (mut send, mut recv, reply) = stream_ask(&connection, &offer(1_000)).await;
        assert_eq!(reply, StreamReply::Held { held: 0 });
        let chunk = stream::encode_chunk(512, &[0; 100]).unwrap();
        callsync_net::framing::write_frame(&mut send, &chunk)
            .await
            .unwrap();
        assert_eq!(
            refused_code(read_reply(&mut recv).await),
            "upload-offset-mismatch"
        );
        connection.close(0u32.into(), b"done");
    });
    assert!(stored_blobs(&world).is_empty());
    assert_eq!(
        callsync(&desk, &["desk", "show", &call]).ok()["recording_state"],
        "pending",
        "the call still waits for its recording"
    );
}

#[test]
fn a_third_recording_stream_and_offers_or_downloads_past_their_rate_are_refused() {
    use callsync_core::wire::stream::{StreamOpen, StreamReply};
    let world = World::start(&[]);
    let (desk, phone) = world.rep_devices();
    let refused_code = |reply: StreamReply| match reply {
        StreamReply::Refused(body) => body.code,
        other => panic!("not refused: {other:?}"),
    };
    crate::support::runtime().block_on(async {
        let ask = async |connection: &quinn::Connection, open: &StreamOpen| {
            stream_ask(connection, open).await.2
        };
        let offer = StreamOpen::Upload {
            customer: callsync_core::CustomerId::new("cus-1").unwrap(),
            call: callsync_core::CallId::new("call-none").unwrap(),
            sha256: "ab".repeat(32),
            bytes: 1_000,
        };
        let (client, _) = callsync_replica::SyncClient::connect(&phone).await.unwrap();
        let connection = client.connection().unwrap().clone();
        // Two streams that say nothing hold the connection's two places.
        let idle_a = connection.open_bi().await.unwrap();
        let idle_b = connection.open_bi().await.unwrap();
        for (mut send, _) in [idle_a, idle_b] {
            // A stream is seen by the server once it carries a byte.
            send.write_all(&[0]).await.unwrap();
            std::mem::forget(send);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            refused_code(ask(&connection, &offer).await),
            "too-many-uploads"
        );
        connection.close(0u32.into(), b"done");

        let (client, _) = callsync_replica::SyncClient::connect(&phone).await.unwrap();
        let connection = client.connection().unwrap().clone();
        // Offers: 20 at once (each answered: no such call), then one a second.
        for _ in 0..20 {
            assert_eq!(
                refused_code(ask(&connection, &offer).await),
                "recording-not-found"
            );
        }
        assert_eq!(refused_code(ask(&connection, &offer).await), "busy");

        let (client, _) = callsync_replica::SyncClient::connect(&desk).await.unwrap();
        let connection = client.connection().unwrap().clone();
        let download = StreamOpen::Download {
            call: callsync_core::CallId::new("call-none").unwrap(),
            offset: 0,
        };
        for _ in 0..20 {
            assert_eq!(
                refused_code(ask(&connection, &download).await),
                "recording-not-found"
            );
        }
        assert_eq!(refused_code(ask(&connection, &download).await), "busy");
    });
    assert!(stored_blobs(&world).is_empty());
}

#[test]
fn a_cut_download_resumes_from_its_part_file_and_a_damaged_one_starts_again() {
    let world = World::start(&[]);
    let (desk, phone, call) = call_with_file(&world, |path| {
        tone_wav(path, 60, 16_000);
    });
    let mut run = PhoneRun::start_args(&phone, &["--network", "wifi"]);
    run.wait_for(event(&call, "recording-uploaded"));
    let stored = std::fs::read(&stored_blobs(&world)[0]).unwrap();

    // A download cut after 100,000 bytes left its .part file.
    let out = world.dir("resumed.wav");
    let part = world.dir("resumed.wav.part");
    std::fs::write(&part, &stored[..100_000]).unwrap();
    let got = get_recording(&desk, &call, &out).ok();
    assert_eq!(got["resumed_at"], 100_000);
    assert_eq!(std::fs::read(&out).unwrap(), stored);
    assert!(!part.exists());

    // A .part whose bytes are not the recording's: refused by the hash at the
    // end and removed, so the next try starts from zero.
    let again = world.dir("again.wav");
    let bad_part = world.dir("again.wav.part");
    std::fs::write(&bad_part, vec![7u8; 100_000]).unwrap();
    let refused = get_recording(&desk, &call, &again);
    assert_ne!(refused.code, 0, "{}", refused.stderr);
    assert!(refused.stderr.contains("SHA-256"), "{}", refused.stderr);
    assert!(!again.exists() && !bad_part.exists());
    let got = get_recording(&desk, &call, &again).ok();
    assert_eq!(got["resumed_at"], 0);
    assert_eq!(std::fs::read(&again).unwrap(), stored);
}

#[test]
fn two_recordings_waiting_for_wifi_both_upload_one_after_the_other() {
    let world = World::start(&[]);
    let (desk, phone) = world.rep_devices();
    let mut run = PhoneRun::start_args(&phone, &["--network", "cellular", "--sample-rate", "8000"]);
    run.wait_for(|v| v["event"] == "caught-up");
    let first = recorded_call(&desk, &phone, &mut run, 1.0);
    run.wait_for(event(&first, "recording-captured"));
    callsync(&desk, &["desk", "end", &first]).ok();
    callsync(&desk, &["desk", "result", &first, "--type", "appointment"]).ok();
    let second = recorded_call(&desk, &phone, &mut run, 1.0);
    run.wait_for(event(&second, "recording-captured"));
    callsync(&phone, &["phone", "network", "wifi"]).ok();
    run.wait_for(event(&first, "recording-uploaded"));
    run.wait_for(event(&second, "recording-uploaded"));
    let mut hashes = Vec::new();
    for call in [&first, &second] {
        let shown = shown_stored(&desk, call);
        hashes.push(shown["recording"]["sha256"].as_str().unwrap().to_owned());
    }
    // The same tone for the same time can make the same bytes: stored once.
    hashes.dedup();
    assert_eq!(stored_blobs(&world).len(), hashes.len());
}
