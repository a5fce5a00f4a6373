//! `fanout`: many phones on one server (`cargo run --release -p
//! callsync-benches --bin fanout [PHONES] [SECONDS]`, default 1,000 phones for 20 s),
//! printing one JSON object.
//!
//! Each phone is a light in-memory client (the real protocol over real QUIC on
//! loopback, no SQLite) that starts one of its requested calls every second. Its
//! customer is also replicated to the next phone, so every change fans out to one
//! other connection. The phones run in a separate load-generator process (this
//! program again, `--load …`), so the server process's CPU is the server's own:
//! measured from `/proc` over the run, with the hub threads apart; the fan-out
//! latency runs from a phone sending its change to the neighbour having applied
//! it. Both processes share this machine's two cores.
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
use callsync_benches::{now, peak_rss_kib, thread_cpu};

fn doc_id(i: usize) -> CustomerId {
    CustomerId::new(format!("cus-{i:04}")).unwrap()
}

/// Where each phone's started events were sent, to time the neighbour's receipt.
type Sent = Arc<Mutex<HashMap<String, Instant>>>;

struct Replica {
    am: AutoCommit,
    state: sync::State,
}

/// What every simulated phone shares.
#[derive(Clone)]
struct Shared {
    n: usize,
    addr: std::net::SocketAddr,
    seconds: u64,
    sent: Sent,
    latencies: Arc<Mutex<Vec<f64>>>,
    /// Changes sent, over all phones.
    started: Arc<std::sync::atomic::AtomicU64>,
    /// Phones whose QUIC handshake or join failed.
    connect_failures: Arc<std::sync::atomic::AtomicU64>,
}

async fn phone(i: usize, endpoint: quinn::Endpoint, token: String, shared: Shared) {
    let Shared {
        n,
        addr,
        seconds,
        sent,
        latencies,
        started,
        connect_failures,
    } = shared;
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
        while let Ok(Some(m)) = read_message(&mut recv).await {
            if tx.send(m).await.is_err() {
                break;
            }
        }
    });
    let mine = doc_id(i);
    let watched = doc_id((i + n - 1) % n);
    let mut docs: HashMap<CustomerId, Replica> = HashMap::new();
    let mut next_watch = 0usize;
    let catalog = ResultCatalog::standard();
    let start = Instant::now() + Duration::from_millis((i as u64 * 997) % 1000);
    let mut tick = tokio::time::interval_at(start.into(), Duration::from_secs(1));
    let mut k = 0usize;
    let deadline = Instant::now() + Duration::from_secs(seconds + 3);
    loop {
        tokio::select! {
            m = rx.recv() => {
                let Some(m) = m else { break };
                let Message::Sync { document_id, data } = m else { continue };
                let replica = docs.entry(document_id.clone()).or_insert_with(|| Replica {
                    am: AutoCommit::new().with_actor(actor.clone()),
                    state: sync::State::new(),
                });
                let msg = sync::Message::decode(&data).unwrap();
                replica.am.sync().receive_sync_message(&mut replica.state, msg).unwrap();
                if document_id == watched {
                    // Time every neighbour start that has arrived.
                    if let Ok(Some((_, events))) = replica.am.get(automerge::ROOT, "events") {
                        loop {
                            let key = format!("call-{:04}-{next_watch}/st-{next_watch}", (i + n - 1) % n);
                            match replica.am.get(&events, key.as_str()) {
                                Ok(Some(_)) => {
                                    if let Some(t) = sent.lock().unwrap().remove(&key) {
                                        latencies.lock().unwrap().push(t.elapsed().as_secs_f64() * 1e3);
                                    }
                                    next_watch += 1;
                                }
                                _ => break,
                            }
                        }
                    }
                }
                if let Some(reply) = replica.am.sync().generate_sync_message(&mut replica.state) {
                    write_message(&mut send, &Message::Sync { document_id, data: reply.encode() }).await.unwrap();
                }
            }
            _ = tick.tick() => {
                if Instant::now() > deadline.checked_sub(Duration::from_secs(3)).unwrap() || k >= CALLS_PER_PHONE {
                    if Instant::now() > deadline { break; }
                    continue;
                }
                let Some(replica) = docs.get_mut(&mine) else { continue };
                let Ok(mut doc) = CustomerDoc::from_automerge(replica.am.clone()) else { continue };
                let event = CallEvent {
                    id: EventId::new(format!("st-{k}")).unwrap(),
                    call: CallId::new(format!("call-{i:04}-{k}")).unwrap(),
                    stamp: Stamp { at: now(), device: me.clone(), device_kind: DeviceKind::Phone, user: FLEET.rep(i), device_at: None },
                    kind: EventKind::Started,
                };
                let ctx = RuleContext { catalog: &catalog, start_limit_ms: i64::MAX / 4, other_open_calls: &[] };
                if doc.record(event, &ctx).is_err() { continue; }
                replica.am = doc.automerge().clone();
                let key = format!("call-{i:04}-{k}/st-{k}");
                sent.lock().unwrap().insert(key, Instant::now());
                started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                k += 1;
                if let Some(m) = replica.am.sync().generate_sync_message(&mut replica.state) {
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
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("client-rt")
        .enable_all()
        .build()
        .unwrap();
    let sent: Sent = Arc::new(Mutex::new(HashMap::new()));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let started = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let connect_failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
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
                started: started.clone(),
                connect_failures: connect_failures.clone(),
            };
            let endpoint = endpoints[i % endpoints.len()].clone();
            tasks.push(tokio::spawn(phone(i, endpoint, FLEET.token(i), shared)));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let mut l = latencies.lock().unwrap().clone();
    l.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        if l.is_empty() {
            f64::NAN
        } else {
            l[((l.len() - 1) as f64 * p).round() as usize]
        }
    };
    let sent_total = started.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "{}",
        json!({
            "changes_sent": sent_total,
            "phones_not_connected": connect_failures.load(std::sync::atomic::Ordering::Relaxed),
            "changes_delivered": l.len(),
            "delivered_ratio": l.len() as f64 / sent_total.max(1) as f64,
            "fanout_ms": { "p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0) },
            "load_generator_cpu_s": thread_cpu(&[""]),
        })
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a == "--load") {
        return load(&args);
    }
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1_000);
    let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20);
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
    let output = std::process::Command::new(std::env::current_exe().unwrap())
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
