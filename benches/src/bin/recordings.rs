//! `recordings`: a recording's upload over real QUIC on loopback, printed as one
//! JSON object (`cargo run --release -p callsync-benches --bin recordings`).
//!
//! A server in-process (`callsync_server::Server`, its blob store on the local
//! filesystem) and a phone (its own SQLite file and recordings directory)
//! running the product's recorder (`callsync_replica::recorder`): the upload
//! queue, one stream beside the sync stream, 256 KiB chunks, each written to
//! the server's staging area (and hashed there) before it is acknowledged, then
//! verified (SHA-256, a WAV, limits, quota), synced, stored and referenced in
//! the customer's document.
//! - `upload`: a 10-minute recording (16 kHz, 19.2 MB), from the upload's start
//!   to `stored`, per run; against `raw_quic`, the same bytes written on one
//!   QUIC stream to a bare endpoint with the server's TLS and transport
//!   settings and read into memory, in the same run (target: upload ≥ 80 % of
//!   raw).
//! - `resume`: the connection dropped at half way; from opening the new
//!   connection to the first acknowledgement after the resume, and the bytes
//!   sent again.
//! - `push`: a desk's call request to the phone's `call-requested`, on an idle
//!   link and while recordings upload back to back on the same connection
//!   (target: p99 during upload within 2× idle).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use callsync_core::{
    CallEvent, CallId, CustomerDoc, CustomerId, DeviceKind, EventId, EventKind, NewCustomer,
    PhoneEntry, PhoneNumber, ResultCatalog, RuleContext, Stamp, TenantId, UserId,
};
use callsync_replica::recorder::{Recorder, RecorderOptions, RecordingEvent, set_network_kind};
use callsync_replica::session::{LoginRequest, SavedTrust};
use callsync_replica::{ClientEvent, SavedSession, SyncClient, login};
use callsync_server::{DB_FILE, Server, ServerConfig, init_owner};
use callsync_session::device::uploads::NetworkKind;
use callsync_store::Store;
use serde_json::json;

use callsync_benches::now;

const OWNER: &str = "owner@bench.example";
const PASSWORD: &str = "bench password";
/// Samples per second of the recordings.
const RATE: u32 = 16_000;
/// A 10-minute call.
const SECONDS: u32 = 600;
/// Uploads timed (each a different recording: the same bytes are stored once).
const RUNS: usize = 5;
/// Recordings uploading back to back while pushes are timed.
const BUSY_UPLOADS: usize = 6;
/// Pushes timed on an idle link, and again during uploads.
const PUSHES: usize = 60;

fn customer(tenant: &TenantId, i: usize) -> NewCustomer {
    NewCustomer {
        tenant: tenant.clone(),
        id: CustomerId::new(format!("cus-{i:04}")).unwrap(),
        company: format!("株式会社ベンチ{i}"),
        contact: "山田 太郎".to_owned(),
        owner: UserId::new(OWNER).unwrap(),
        phones: vec![PhoneEntry {
            label: "代表".to_owned(),
            number: PhoneNumber::parse("03-1234-5678").unwrap(),
        }],
    }
}

fn stamp(session: &SavedSession, kind: DeviceKind) -> Stamp {
    Stamp {
        at: now(),
        device: session.device.clone(),
        device_kind: kind,
        user: session.user.clone(),
        device_at: None,
    }
}

/// A mono 16-bit WAV of `SECONDS` of a tone whose pitch `n` picks, so that
/// every recording's bytes differ.
fn wav(path: &Path, n: usize) -> u64 {
    let bytes = callsync_testkit::tone_wav(SECONDS, RATE, 300.0 + n as f64 * 7.0);
    std::fs::write(path, &bytes).unwrap();
    bytes.len() as u64
}

fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn median(samples: &[f64]) -> f64 {
    percentile(samples, 0.5)
}

/// Writes `calls` customers, each with one recorded call the phone started and
/// ended, into the server's store (the server is down), subscribed by the phone.
fn prepare(server_dir: &Path, phone: &SavedSession, desk: &SavedSession, calls: usize) {
    let mut store = Store::open(&server_dir.join(DB_FILE)).unwrap();
    let actor = automerge::ActorId::from(store.setting("actor").unwrap().unwrap());
    let catalog = ResultCatalog::standard();
    let mut tx = store.write().unwrap();
    for i in 0..calls {
        let mut doc =
            CustomerDoc::create(&customer(&phone.tenant, i), now(), actor.clone()).unwrap();
        let call = CallId::new(format!("call-{i:04}")).unwrap();
        let events = [
            (
                stamp(desk, DeviceKind::Desk),
                EventKind::Requested {
                    destination: PhoneNumber::parse("03-1234-5678").unwrap(),
                    origin: phone.device.clone(),
                    recording: true,
                },
            ),
            (stamp(phone, DeviceKind::Phone), EventKind::Started),
            (
                stamp(phone, DeviceKind::Phone),
                EventKind::PhoneEnded {
                    duration_secs: SECONDS,
                },
            ),
            (stamp(desk, DeviceKind::Desk), EventKind::BrowserEnded),
            // The result is saved, so the desk may request more calls.
            (
                stamp(desk, DeviceKind::Desk),
                EventKind::ResultSaved(callsync_core::SavedResultFields {
                    result_type: callsync_core::ResultTypeId::new("appointment").unwrap(),
                    option: callsync_core::ResultOption::None,
                    customer_status: None,
                    memo: String::new(),
                    decision: None,
                    kept_as_picked: None,
                }),
            ),
        ];
        for (n, (stamp, kind)) in events.into_iter().enumerate() {
            let event = CallEvent {
                id: EventId::new(format!("ev-{i}-{n}")).unwrap(),
                call: call.clone(),
                stamp,
                kind,
            };
            doc.record(event, &RuleContext::new(&catalog)).unwrap();
        }
        tx.insert(&mut doc).unwrap();
        tx.subscribe(&phone.device, &phone.tenant, doc.id())
            .unwrap();
        tx.subscribe(&desk.device, &desk.tenant, doc.id()).unwrap();
    }
    // The customer the pushes go to: no recording of its own.
    let mut doc = CustomerDoc::create(&customer(&phone.tenant, calls), now(), actor).unwrap();
    tx.insert(&mut doc).unwrap();
    tx.subscribe(&phone.device, &phone.tenant, doc.id())
        .unwrap();
    tx.subscribe(&desk.device, &desk.tenant, doc.id()).unwrap();
    tx.commit().unwrap();
}

/// Runs the phone's sync and recorder until `done` says so; returns what the
/// recorder told.
async fn drive(
    client: &mut SyncClient,
    recorder: &mut Recorder,
    mut done: impl FnMut(&RecordingEvent) -> bool,
) -> Vec<RecordingEvent> {
    let mut told = recorder.step(now(), client.connection()).unwrap();
    if told.iter().any(&mut done) {
        return told;
    }
    loop {
        // The queue's own wake-up (a retry after a cut), as `phone run` keeps it.
        let wait =
            recorder
                .next_wake()
                .map_or(Duration::from_secs(3600), |at| {
                    Duration::from_millis(
                        at.as_millis().saturating_sub(now().as_millis()).max(0) as u64
                    )
                });
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            news = recorder.news() => {
                let events = recorder.handle_news(now(), news.unwrap(), client.connection()).unwrap();
                if std::env::var_os("BENCH_DEBUG").is_some() {
                    for e in &events {
                        eprintln!("{:?} {}", std::time::SystemTime::now(), serde_json::to_string(e).unwrap());
                    }
                }
                let finished = events.iter().any(&mut done);
                told.extend(events);
                if finished {
                    return told;
                }
            }
            message = client.recv() => {
                client.handle(message.unwrap()).await.unwrap();
            }
        }
        told.extend(recorder.step(now(), client.connection()).unwrap());
    }
}

/// CPU time this process has used, in milliseconds (every thread's, from the
/// scheduler's own count): what an upload costs beside its wall time.
fn cpu_ms() -> f64 {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) {
            ns += stat
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    ns as f64 / 1e6
}

/// The same bytes over one QUIC stream to a bare endpoint with the server's TLS
/// and transport settings: the machine's own ceiling.
async fn raw_quic(dir: &Path, file: &Path) -> (f64, f64) {
    std::fs::create_dir_all(dir).unwrap();
    let (identity, _) = callsync_net::tls::Identity::load_or_create(dir).unwrap();
    let resolver = Arc::new(
        callsync_net::web::CertificateResolver::shared(
            &identity,
            callsync_net::tls::crypto_provider(),
        )
        .unwrap(),
    );
    let server = callsync_net::endpoint::bind_server(
        "127.0.0.1:0".parse().unwrap(),
        callsync_net::tls::server_config(resolver).unwrap(),
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        let connection = server.accept().await.unwrap().await.unwrap();
        // As the server does after a `join`.
        connection.set_receive_window(callsync_net::tls::CONNECTION_RECEIVE_WINDOW.into());
        let (mut send, mut recv) = connection.accept_bi().await.unwrap();
        let got = recv.read_to_end(usize::MAX).await.unwrap();
        send.write_all(&[1]).await.unwrap();
        send.finish().unwrap();
        let _ = connection.closed().await;
        got.len()
    });
    let trust = callsync_net::tls::Trust::Fingerprint(identity.fingerprint());
    let client = callsync_net::endpoint::client_endpoint(
        addr,
        callsync_net::tls::client_config(&trust).unwrap(),
    )
    .unwrap();
    let bytes = std::fs::read(file).unwrap();
    let cpu = cpu_ms();
    let t = Instant::now();
    let connection = client.connect(addr, "localhost").unwrap().await.unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    for chunk in bytes.chunks(256 * 1024) {
        send.write_all(chunk).await.unwrap();
    }
    send.finish().unwrap();
    let mut ack = [0u8; 1];
    recv.read_exact(&mut ack).await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_ms() - cpu;
    connection.close(0u32.into(), b"done");
    assert_eq!(accept.await.unwrap(), bytes.len());
    (bytes.len() as f64 / secs / 1e6, cpu)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let root = tempfile::tempdir().unwrap();
    let server_dir = root.path().join("server");
    let (phone_dir, desk_dir) = (root.path().join("phone"), root.path().join("desk"));
    init_owner(&server_dir, "bench", OWNER, PASSWORD).unwrap();
    let config = ServerConfig::new(server_dir.clone(), "127.0.0.1:0".parse().unwrap());
    let server = Server::start(config.clone()).await.unwrap();
    let request = |kind| LoginRequest {
        server: server.local_addr(),
        server_name: "localhost".to_owned(),
        trust: SavedTrust::Fingerprint(server.fingerprint().to_owned()),
        email: OWNER.to_owned(),
        password: PASSWORD.to_owned(),
        kind,
        device: None,
    };
    let phone = login(&phone_dir, &request(DeviceKind::Phone))
        .await
        .unwrap();
    let desk = login(&desk_dir, &request(DeviceKind::Desk)).await.unwrap();
    // The devices saved this address: the server comes back on it.
    let mut config = config;
    config.listen = server.local_addr();
    server.shutdown().await;
    let calls = RUNS + 1 + BUSY_UPLOADS;
    prepare(&server_dir, &phone, &desk, calls);
    let server = Server::start(config).await.unwrap();

    let (mut client, _) = SyncClient::connect(&phone_dir).await.unwrap();
    client.settle(Duration::from_secs(60)).await.unwrap();
    set_network_kind(&phone_dir, NetworkKind::Wifi).unwrap();
    let recordings = phone_dir.join("recordings");
    std::fs::create_dir_all(&recordings).unwrap();
    let options = RecorderOptions::default();
    let file = |i: usize| recordings.join(format!("call-{i:04}.wav"));

    // Uploads, one at a time, each beside a raw QUIC transfer of the same bytes.
    let mut upload_mbps = Vec::new();
    let mut raw_mbps = Vec::new();
    let (mut upload_cpu, mut raw_cpu) = (Vec::new(), Vec::new());
    let mut size = 0;
    for i in 0..RUNS {
        size = wav(&file(i), i);
        let copy = root.path().join("raw.wav");
        std::fs::copy(file(i), &copy).unwrap();
        eprintln!("run {i}: raw QUIC");
        let (mbps, cpu) = raw_quic(&root.path().join(format!("raw-{i}")), &copy).await;
        raw_mbps.push(mbps);
        raw_cpu.push(cpu);
        eprintln!("run {i}: upload");
        // Opening the recorder queues the file (hashing it, as at a call's
        // end); the upload is timed from there to `stored`.
        let (mut recorder, _) = Recorder::open(
            &phone_dir,
            phone.tenant.clone(),
            phone.device.clone(),
            options.clone(),
        )
        .unwrap();
        let cpu = cpu_ms();
        let t = Instant::now();
        drive(&mut client, &mut recorder, |e| {
            matches!(e, RecordingEvent::RecordingUploaded { .. })
        })
        .await;
        upload_mbps.push(size as f64 / t.elapsed().as_secs_f64() / 1e6);
        upload_cpu.push(cpu_ms() - cpu);
    }

    eprintln!("resume");
    // Resume: the connection dropped at half way, then opened again.
    let i = RUNS;
    wav(&file(i), i);
    let (mut recorder, _) = Recorder::open(
        &phone_dir,
        phone.tenant.clone(),
        phone.device.clone(),
        options.clone(),
    )
    .unwrap();
    drive(&mut client, &mut recorder, |e| {
        matches!(e, RecordingEvent::Upload { state: callsync_session::device::uploads::UploadState::Uploading { percent }, .. } if *percent >= 50)
    })
    .await;
    client.abort();
    recorder.disconnected(now()).unwrap();
    let reopened = Instant::now();
    let (mut client_again, _) = SyncClient::connect(&phone_dir).await.unwrap();
    let connect_ms = reopened.elapsed().as_secs_f64() * 1e3;
    // The queue waits out its backoff after the cut; the resume is timed from
    // the offer it then makes.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let offered = Instant::now();
    let mut first_ack = None;
    let told = drive(&mut client_again, &mut recorder, |e| {
        if first_ack.is_none()
            && matches!(e, RecordingEvent::Upload { state: callsync_session::device::uploads::UploadState::Uploading { percent }, .. } if *percent > 50)
        {
            first_ack = Some(offered.elapsed());
        }
        matches!(e, RecordingEvent::RecordingUploaded { .. })
    })
    .await;
    let sent = told
        .iter()
        .find_map(|e| match e {
            RecordingEvent::RecordingUploaded { sent_bytes, .. } => Some(*sent_bytes),
            _ => None,
        })
        .unwrap();
    let mut client = client_again;

    // Pushes: idle, then while recordings upload back to back.
    let (mut d, _) = SyncClient::connect(&desk_dir).await.unwrap();
    d.settle(Duration::from_secs(60)).await.unwrap();
    let mut desk_store = Store::open(&desk_dir.join(DB_FILE)).unwrap();
    let desk_actor = callsync_replica::session::device_actor(&mut desk_store).unwrap();
    let catalog = ResultCatalog::standard();
    let rules = callsync_store::RuleSettings {
        tenant: &desk.tenant,
        catalog: &catalog,
        start_limit_ms: 3_600_000,
    };
    let mut push = async |k: usize,
                          client: &mut SyncClient,
                          recorder: Option<&mut Recorder>|
           -> f64 {
        let doc = CustomerId::new(format!("cus-{calls:04}")).unwrap();
        let call = CallId::new(format!("push-{k}")).unwrap();
        let requested = CallEvent {
            id: EventId::new(format!("push-{k}-req")).unwrap(),
            call: call.clone(),
            stamp: stamp(&desk, DeviceKind::Desk),
            kind: EventKind::Requested {
                destination: PhoneNumber::parse("03-1234-5678").unwrap(),
                origin: phone.device.clone(),
                recording: false,
            },
        };
        let cancelled = CallEvent {
            id: EventId::new(format!("push-{k}-cancel")).unwrap(),
            call: call.clone(),
            stamp: stamp(&desk, DeviceKind::Desk),
            kind: EventKind::Cancelled,
        };
        let t = Instant::now();
        desk_store
            .record(&desk.user, &doc, desk_actor.clone(), vec![requested], rules)
            .unwrap();
        d.local_changes().unwrap();
        d.push_local().await.unwrap();
        let mut recorder = recorder;
        loop {
            tokio::select! {
                m = client.recv() => {
                    let events = client.handle(m.unwrap()).await.unwrap();
                    if events.iter().any(|e| matches!(e, ClientEvent::CallRequested { call: c, .. } if c == &call)) {
                        break;
                    }
                }
                m = d.recv() => { d.handle(m.unwrap()).await.unwrap(); }
                news = async { match recorder.as_mut() { Some(r) => r.news().await, None => std::future::pending().await } } => {
                    if let (Some(r), Some(news)) = (recorder.as_mut(), news) {
                        r.handle_news(now(), news, client.connection()).unwrap();
                    }
                }
            }
        }
        let ms = t.elapsed().as_secs_f64() * 1e3;
        desk_store
            .record(&desk.user, &doc, desk_actor.clone(), vec![cancelled], rules)
            .unwrap();
        d.local_changes().unwrap();
        d.push_local().await.unwrap();
        d.settle(Duration::from_secs(30)).await.unwrap();
        ms
    };
    eprintln!("pushes");
    let mut idle = Vec::new();
    for k in 0..PUSHES {
        idle.push(push(k, &mut client, None).await);
    }
    for i in RUNS + 1..calls {
        wav(&file(i), i);
    }
    let (mut recorder, _) = Recorder::open(
        &phone_dir,
        phone.tenant.clone(),
        phone.device.clone(),
        options,
    )
    .unwrap();
    recorder.step(now(), client.connection()).unwrap();
    let mut busy = Vec::new();
    let mut k = PUSHES;
    while !recorder.queue().queued().is_empty() && busy.len() < PUSHES {
        busy.push(push(k, &mut client, Some(&mut recorder)).await);
        recorder.step(now(), client.connection()).unwrap();
        k += 1;
    }
    let busy_p99 = percentile(&busy, 0.99);
    let idle_p99 = percentile(&idle, 0.99);
    let upload = median(&upload_mbps);
    let raw = median(&raw_mbps);
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "recording": { "seconds": SECONDS, "sample_rate": RATE, "bytes": size },
            "upload": {
                "runs": RUNS,
                "mb_per_s": upload_mbps,
                "median_mb_per_s": upload,
                "raw_quic_mb_per_s": raw_mbps,
                "raw_quic_median_mb_per_s": raw,
                "ratio_to_raw": upload / raw,
                "target_ratio": 0.8,
                // Both ends run in this process on the machine's cores: the
                // CPU each transfer used, server and phone together.
                "cpu_ms": upload_cpu,
                "median_cpu_ms": median(&upload_cpu),
                "raw_quic_cpu_ms": raw_cpu,
                "raw_quic_median_cpu_ms": median(&raw_cpu),
            },
            "resume": {
                "connect_ms": connect_ms,
                "offer_to_first_ack_after_cut_ms": first_ack.map(|d| d.as_secs_f64() * 1e3),
                "bytes_sent": sent,
                "bytes_sent_again": sent.saturating_sub(size),
            },
            "push": {
                "idle": { "samples": idle.len(), "p50_ms": percentile(&idle, 0.5), "p99_ms": idle_p99 },
                "during_upload": { "samples": busy.len(), "p50_ms": percentile(&busy, 0.5), "p99_ms": busy_p99 },
                "p99_ratio": busy_p99 / idle_p99,
                "target_ratio": 2.0,
            },
        }))
        .unwrap()
    );
    d.leave().await;
    client.leave().await;
    server.shutdown().await;
}
