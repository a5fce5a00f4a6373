//! `fanout`: many phones on one server (`cargo run --release -p
//! callsync-benches --bin fanout [PHONES] [SECONDS]`, default 1,000 phones for 60 s),
//! printing one JSON object.
//!
//! Each phone is a light in-memory client (the real protocol over real QUIC on
//! loopback, no SQLite) that starts one of its requested calls every second. Its
//! customer is also replicated to the next phone, so every change fans out to one
//! other connection. The phones run in a separate load-generator process (this
//! program again, `--load …`), so the server process's CPU is the server's own:
//! measured from `/proc` over the run, with the hub threads apart; the fan-out
//! latency runs from a phone sending its change to the neighbour having applied
//! it. The server is pinned to core 0 and the generator to core 1 (`taskset`),
//! and the generator says whether it kept up (its ticks on time, its core not
//! saturated, every phone connected): a phone keeps its own document between
//! ticks, so a change costs recording one event, and it reads its neighbour's
//! document with raw Automerge (no rules, no derivation).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use automerge::sync::{self, SyncDoc};
use automerge::{AutoCommit, ReadDoc};
use callsync_core::wire::{self, Message};
use callsync_core::{
    ActorId, CallEvent, CallId, CustomerDoc, CustomerId, DeviceKind, EventId, EventKind,
    NewCustomer, PhoneEntry, PhoneNumber, ResultCatalog, RuleContext, Stamp,
};
use callsync_net::endpoint;
use callsync_net::framing::{read_message, write_message};
use callsync_net::tls::{Trust, client_config};
use callsync_server::ServerConfig;
use serde_json::json;

const FLEET: Fleet = Fleet { name: "fanout" };
const CALLS_PER_PHONE: usize = 64;

use callsync_benches::fleet::{Fleet, NUMBER, start_server};
use callsync_benches::{now, peak_rss_kib, pin_self_to, pinned_command, quantile, thread_cpu};

fn doc_id(i: usize) -> CustomerId {
    CustomerId::new(format!("cus-{i:04}")).unwrap()
}

/// Where each phone's started events were sent, to time the neighbour's receipt.
type Sent = Arc<Mutex<HashMap<String, Instant>>>;

/// Each delivered change: when it was sent, and its fan-out latency in ms.
type Latencies = Arc<Mutex<Vec<(Instant, f64)>>>;

/// What every simulated phone shares.
#[derive(Clone)]
struct Shared {
    n: usize,
    addr: std::net::SocketAddr,
    seconds: u64,
    sent: Sent,
    latencies: Latencies,
    /// How late each tick ran after its time, in ms: the generator keeping up.
    tick_lag_ms: Arc<Mutex<Vec<f64>>>,
    /// From a phone sending its change to the server's first answer on that
    /// document (sent once the change is committed), in ms: the sender's half of
    /// the fan-out latency.
    acknowledged_ms: Arc<Mutex<Vec<f64>>>,
    /// Changes sent, over all phones.
    started: Arc<std::sync::atomic::AtomicU64>,
    /// Ticks in the window that sent nothing because the phone's document had
    /// not arrived yet (the server still catching it up).
    missed: Arc<std::sync::atomic::AtomicU64>,
    /// Changes the phone's own rules refused: the call not there yet (its
    /// document arrived, its requested calls still arriving).
    record_failures: Arc<std::sync::atomic::AtomicU64>,
    /// When the last phone's join was answered.
    all_joined: Arc<Mutex<Option<Instant>>>,
    /// Phones whose QUIC handshake or join failed.
    connect_failures: Arc<std::sync::atomic::AtomicU64>,
    /// Joins in progress at once: the server holds at most 64 connections per
    /// address that have not said who they are, and every phone here is on
    /// 127.0.0.1.
    joining: Arc<tokio::sync::Semaphore>,
}

/// A phone's view of its own customer: the document it writes to, kept between
/// ticks (a change costs recording one event, not a re-read of the document).
enum Own {
    /// Still arriving (not yet a whole document).
    Arriving(Box<AutoCommit>, sync::State),
    Ready(Box<CustomerDoc>, sync::State),
}

/// Whether the neighbour's `st-k` event of call `call-<neighbour>-k` has arrived in
/// `am`: in the call's own map (schema 2, in whichever bucket holds it) or in the
/// flat `events` map (schema 1), so the same generator measures either build.
fn arrived(am: &AutoCommit, neighbour: usize, k: usize) -> bool {
    let call = format!("call-{neighbour:04}-{k}");
    let event = format!("st-{k}");
    let map = |obj: &automerge::ObjId, key: &str| match am.get(obj, key) {
        Ok(Some((automerge::Value::Object(_), id))) => Some(id),
        _ => None,
    };
    if let Some(events) = map(&automerge::ROOT, "events")
        && matches!(
            am.get(&events, format!("{call}/{event}").as_str()),
            Ok(Some(_))
        )
    {
        return true;
    }
    let Some(calls) = map(&automerge::ROOT, "calls") else {
        return false;
    };
    am.map_range(&calls, ..).any(|bucket| {
        map(&bucket.id(), &call).is_some_and(|m| matches!(am.get(&m, event.as_str()), Ok(Some(_))))
    })
}

async fn phone(i: usize, endpoint: quinn::Endpoint, token: String, shared: Shared) {
    let Shared {
        n,
        addr,
        seconds,
        sent,
        latencies,
        tick_lag_ms,
        acknowledged_ms,
        started,
        missed,
        record_failures,
        all_joined,
        connect_failures,
        joining,
    } = shared;
    let permit = joining.acquire_owned().await.unwrap();
    let Ok((_conn, mut send, mut recv)) = endpoint::connect(&endpoint, addr, "localhost").await
    else {
        // An overloaded server fails some handshakes; counted, not fatal.
        connect_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return;
    };
    let me = FLEET.phone(i);
    let actor = ActorId::from(me.as_str().as_bytes());
    write_message(
        &mut send,
        &Message::Join {
            sender_id: me.clone(),
            supported_protocol_versions: vec![wire::PROTOCOL_VERSION.to_owned()],
            token,
            cursor: None,
        },
    )
    .await
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        // The join is answered before anything else: then the next phone may join.
        let mut permit = Some(permit);
        while let Ok(Some(m)) = read_message(&mut recv).await {
            if permit.take().is_some() {
                *all_joined.lock().unwrap() = Some(Instant::now());
            }
            if tx.send(m).await.is_err() {
                break;
            }
        }
    });
    let mine = doc_id(i);
    let neighbour = (i + n - 1) % n;
    let watched = doc_id(neighbour);
    let mut own = Own::Arriving(
        Box::new(AutoCommit::new().with_actor(actor.clone())),
        sync::State::new(),
    );
    let mut theirs = (
        AutoCommit::new().with_actor(actor.clone()),
        sync::State::new(),
    );
    let mut next_watch = 0usize;
    let mut awaiting_answer: Option<Instant> = None;
    let catalog = ResultCatalog::standard();
    let start = Instant::now() + Duration::from_millis((i as u64 * 997) % 1000);
    let mut tick = tokio::time::interval_at(start.into(), Duration::from_secs(1));
    let mut ticks = 0u32;
    let mut k = 0usize;
    let deadline = Instant::now() + Duration::from_secs(seconds + 3);
    loop {
        tokio::select! {
            m = rx.recv() => {
                let Some(m) = m else { break };
                let Message::Sync { document_id, data } = m else { continue };
                let msg = sync::Message::decode(&data).unwrap();
                let reply = if document_id == watched {
                    let (am, state) = &mut theirs;
                    am.sync().receive_sync_message(state, msg).unwrap();
                    // Time every neighbour start that has arrived.
                    while arrived(am, neighbour, next_watch) {
                        let key = format!("call-{neighbour:04}-{next_watch}/st-{next_watch}");
                        if let Some(t) = sent.lock().unwrap().remove(&key) {
                            latencies.lock().unwrap().push((t, t.elapsed().as_secs_f64() * 1e3));
                        }
                        next_watch += 1;
                    }
                    am.sync().generate_sync_message(state)
                } else if document_id == mine {
                    match &mut own {
                        Own::Ready(doc, state) => {
                            if let Some(t) = awaiting_answer.take() {
                                acknowledged_ms.lock().unwrap().push(t.elapsed().as_secs_f64() * 1e3);
                            }
                            doc.receive_sync_message(state, msg).unwrap();
                            doc.generate_sync_message(state)
                        }
                        Own::Arriving(am, state) => {
                            am.sync().receive_sync_message(state, msg).unwrap();
                            let reply = am.sync().generate_sync_message(state);
                            if let Ok(doc) = CustomerDoc::from_automerge(AutoCommit::clone(am)) {
                                own = Own::Ready(Box::new(doc), std::mem::take(state));
                            }
                            reply
                        }
                    }
                } else {
                    continue;
                };
                if let Some(reply) = reply {
                    write_message(&mut send, &Message::Sync { document_id, data: reply.encode() }).await.unwrap();
                }
            }
            _ = tick.tick() => {
                let due = start + Duration::from_secs(u64::from(ticks));
                ticks += 1;
                tick_lag_ms.lock().unwrap().push(Instant::now().saturating_duration_since(due).as_secs_f64() * 1e3);
                if Instant::now() > deadline.checked_sub(Duration::from_secs(3)).unwrap() || k >= CALLS_PER_PHONE {
                    if Instant::now() > deadline { break; }
                    continue;
                }
                let Own::Ready(doc, state) = &mut own else {
                    missed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                };
                let event = CallEvent {
                    id: EventId::new(format!("st-{k}")).unwrap(),
                    call: CallId::new(format!("call-{i:04}-{k}")).unwrap(),
                    stamp: Stamp { at: now(), device: me.clone(), device_kind: DeviceKind::Phone, user: FLEET.rep(i), device_at: None },
                    kind: EventKind::Started,
                };
                let ctx = RuleContext { catalog: &catalog, start_limit_ms: i64::MAX / 4, other_open_calls: &[] };
                if doc.record(event, &ctx).is_err() {
                    // Its requested calls still arriving (the document is there,
                    // not all of it yet).
                    record_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                let key = format!("call-{i:04}-{k}/st-{k}");
                sent.lock().unwrap().insert(key, Instant::now());
                started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                k += 1;
                if let Some(m) = doc.generate_sync_message(state) {
                    awaiting_answer.get_or_insert_with(Instant::now);
                    write_message(&mut send, &Message::Sync { document_id: mine.clone(), data: m.encode() }).await.unwrap();
                }
            }
        }
        if Instant::now() > deadline {
            break;
        }
    }
}

/// The load generator: `fanout --load ADDR FINGERPRINT PHONES SECONDS` runs the
/// phones against a running server and prints their figures as JSON.
fn load(args: &[String]) {
    let addr: std::net::SocketAddr = args[2].parse().unwrap();
    let trust = Trust::Fingerprint(args[3].clone());
    let n: usize = args[4].parse().unwrap();
    let seconds: u64 = args[5].parse().unwrap();
    // One thread: the generator has one core (the server the other).
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let began = Instant::now();
    let sent: Sent = Arc::new(Mutex::new(HashMap::new()));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let tick_lag_ms = Arc::new(Mutex::new(Vec::new()));
    let acknowledged_ms = Arc::new(Mutex::new(Vec::new()));
    let started = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let missed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let record_failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let all_joined = Arc::new(Mutex::new(None));
    let connect_failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let joining = Arc::new(tokio::sync::Semaphore::new(32));
    client_rt.block_on(async {
        let config = client_config(&trust).unwrap();
        let endpoints: Vec<quinn::Endpoint> = (0..8)
            .map(|_| endpoint::client_endpoint(addr, config.clone()).unwrap())
            .collect();
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let shared = Shared {
                n,
                addr,
                seconds,
                sent: sent.clone(),
                latencies: latencies.clone(),
                tick_lag_ms: tick_lag_ms.clone(),
                acknowledged_ms: acknowledged_ms.clone(),
                started: started.clone(),
                missed: missed.clone(),
                record_failures: record_failures.clone(),
                all_joined: all_joined.clone(),
                connect_failures: connect_failures.clone(),
                joining: joining.clone(),
            };
            let endpoint = endpoints[i % endpoints.len()].clone();
            tasks.push(tokio::spawn(phone(i, endpoint, FLEET.token(i), shared)));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let wall = began.elapsed().as_secs_f64();
    let all_latencies = latencies.lock().unwrap().clone();
    let mut l: Vec<f64> = all_latencies.iter().map(|(_, ms)| *ms).collect();
    l.sort_by(|a, b| a.total_cmp(b));
    // Once every phone has joined: the steady state, without the catch-up of
    // a thousand joins competing with the first changes.
    let joined = all_joined.lock().unwrap().unwrap_or(began);
    let mut steady: Vec<f64> = all_latencies
        .iter()
        .filter(|(sent, _)| *sent > joined)
        .map(|(_, ms)| *ms)
        .collect();
    steady.sort_by(|a, b| a.total_cmp(b));
    let mut lag = tick_lag_ms.lock().unwrap().clone();
    let mut acked = acknowledged_ms.lock().unwrap().clone();
    acked.sort_by(f64::total_cmp);
    lag.sort_by(|a, b| a.total_cmp(b));
    let sent_total = started.load(std::sync::atomic::Ordering::Relaxed);
    let cpu = thread_cpu(&[""]);
    let not_connected = connect_failures.load(std::sync::atomic::Ordering::Relaxed);
    // Kept up: its ticks ran on time (p99 within 50 ms), it did not use its whole
    // core, and every phone connected. (Ticks that found the phone's document not
    // all there yet are the server's lag, counted apart.)
    let missed = missed.load(std::sync::atomic::Ordering::Relaxed);
    let record_failures = record_failures.load(std::sync::atomic::Ordering::Relaxed);
    let kept_up = quantile(&lag, 0.99) < 50.0 && cpu / wall < 0.9 && not_connected == 0;
    println!(
        "{}",
        json!({
            "changes_sent": sent_total,
            "phones_not_connected": not_connected,
            "ticks_waiting_for_own_document": missed,
            "record_failures": record_failures,
            "all_joined_after_s": joined.duration_since(began).as_secs_f64(),
            "fanout_after_all_joined_ms": { "changes": steady.len(), "p50": quantile(&steady, 0.5), "p99": quantile(&steady, 0.99), "max": quantile(&steady, 1.0) },
            "changes_delivered": l.len(),
            "delivered_ratio": l.len() as f64 / sent_total.max(1) as f64,
            "fanout_ms": { "p50": quantile(&l, 0.5), "p99": quantile(&l, 0.99), "max": quantile(&l, 1.0) },
            "load_generator_cpu_s": cpu,
            "load_generator_core_busy": cpu / wall,
            "acknowledged_ms": { "answers": acked.len(), "p50": quantile(&acked, 0.5), "p99": quantile(&acked, 0.99), "max": quantile(&acked, 1.0) },
            "tick_lag_ms": { "p50": quantile(&lag, 0.5), "p99": quantile(&lag, 0.99), "max": quantile(&lag, 1.0) },
            "generator_kept_up": kept_up,
        })
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a == "--load") {
        return load(&args);
    }
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1_000);
    let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(60);
    // The server on core 0 (every thread it starts inherits it), the load
    // generator on core 1.
    let server_pinned = pin_self_to(0);
    let root = tempfile::tempdir().unwrap();
    let server_dir = root.path().join("server");

    // Sessions, customers and requested calls, written straight to the server's
    // database.
    let setup = Instant::now();
    {
        let mut store = FLEET.enrol(&server_dir, n);
        let tenant = FLEET.tenant();
        let server_actor = ActorId::from(b"fanout-setup".as_slice());
        let mut tx = store.write().unwrap();
        for i in 0..n {
            let new = NewCustomer {
                tenant: tenant.clone(),
                id: doc_id(i),
                company: format!("株式会社ファンアウト{i}"),
                contact: "鈴木 一郎".to_owned(),
                owner: FLEET.owner(),
                phones: vec![PhoneEntry {
                    label: "代表".to_owned(),
                    number: PhoneNumber::parse(NUMBER).unwrap(),
                }],
            };
            let mut doc = CustomerDoc::create(&new, now(), server_actor.clone()).unwrap();
            for k in 0..CALLS_PER_PHONE {
                let call = CallId::new(format!("call-{i:04}-{k}")).unwrap();
                FLEET.request(&mut doc, &format!("rq-{k}"), call, i, FLEET.owner());
            }
            tx.insert(&mut doc).unwrap();
            tx.subscribe(&FLEET.phone(i), &tenant, &doc_id(i)).unwrap();
            tx.subscribe(&FLEET.phone((i + 1) % n), &tenant, &doc_id(i))
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let setup_s = setup.elapsed().as_secs_f64();

    let (server_rt, server) = start_server(ServerConfig::new(
        server_dir.clone(),
        "127.0.0.1:0".parse().unwrap(),
    ));
    let addr = server.local_addr();
    let fingerprint = server.fingerprint().to_owned();

    // The phones: a separate process, so this one's CPU is the server's.
    let connect_started = Instant::now();
    let cpu_before = thread_cpu(&[""]);
    let hub_before = thread_cpu(&["hub-"]);
    let (mut generator, generator_pinned) = pinned_command(1, &std::env::current_exe().unwrap());
    let output = generator
        .args([
            "--load".to_owned(),
            addr.to_string(),
            fingerprint,
            n.to_string(),
            seconds.to_string(),
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    assert!(output.status.success(), "the load generator failed");
    let wall = connect_started.elapsed().as_secs_f64();
    let cpu = thread_cpu(&[""]) - cpu_before;
    let hub_cpu = thread_cpu(&["hub-"]) - hub_before;
    let peak_rss_kib = peak_rss_kib();
    server_rt.block_on(server.shutdown());
    let load: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let figures = json!({
        "phones": n,
        "seconds": seconds,
        "pinned": { "server_core_0": server_pinned, "generator_core_1": generator_pinned },
        "setup_s": setup_s,
        "wall_s": wall,
        "server_process_cpu_s": cpu,
        "server_cores_busy": cpu / wall,
        "hub_threads_cpu_s": hub_cpu,
        "server_peak_rss_kib": peak_rss_kib,
        "phones_process": load,
    });
    println!("{figures}");
}
