//! `sync`: reconnect and push figures over real QUIC on loopback, printed as one
//! JSON object (`cargo run --release -p callsync-benches --bin sync`).
//!
//! A server process-in-process (`callsync_server::Server`) holds 10,000 customer
//! documents, all replicated to one phone whose replica (its own SQLite file)
//! starts caught up: same documents, sync states and cursor as after a full sync.
//! Then:
//! - `reconnect_0`: the phone reconnects with nothing changed;
//! - `reconnect_server_10`: 10 documents changed on the server (a desk requested
//!   calls) while the phone was away;
//! - `reconnect_phone_10`: the phone changed 10 documents offline (started those
//!   calls) and pushes them on reconnect;
//! - `push`: a desk requests a call, the phone is notified (both connected);
//!   measured from the desk's click (local write included) to the phone having
//!   applied and saved it.
//!
//! - `fresh_device`: a phone that never synced, subscribed to 1,000 (then another
//!   to 10,000) customers, joins and catches up from nothing: time and bytes;
//!
//! - `samod`: the same three reconnect scenarios through `samod`, the Rust
//!   automerge-repo, in the same run (see `samod_side`), at 1,000 and 2,000
//!   documents (`--samod-docs 1000,4000` picks others; `--no-samod` skips).
//!
//! `--keep-dir` leaves the server's and the devices' databases in place and
//! prints where.
//!
//! `changed_bytes` is the size of the changes themselves (Automerge incremental
//! save of exactly what changed); `wire_bytes` counts every frame both ways.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use automerge::sync::{self, SyncDoc};
use callsync_core::wire::Cursor;
use callsync_core::{
    CallEvent, CallId, CustomerDoc, CustomerId, DeviceKind, EventId, EventKind, NewCustomer,
    PhoneEntry, PhoneNumber, ResultCatalog, Stamp, TenantId, UserId,
};
use callsync_replica::session::{LoginRequest, SavedTrust, device_actor};
use callsync_replica::{ClientEvent, SavedSession, SyncClient, login};
use callsync_server::{DB_FILE, Server, ServerConfig, init_owner};
use callsync_store::{RuleSettings, Store};
use serde_json::json;

mod samod_side;

const DOCS: usize = 10_000;
const CHANGED: usize = 10;
const RUNS: usize = 5;
/// samod's cost per reconnect grows faster than linearly with the number of
/// documents (its hub walks every document on each event): 4,000 documents take
/// about 33 s per reconnect here and 10,000 did not finish in 15 minutes, so the
/// default run shows the start of the curve.
const SAMOD_DOCS: [usize; 2] = [1_000, 2_000];
const PUSHES: usize = 200;
/// Customers a fresh phone is subscribed to, one phone per entry.
const FRESH_DOCS: [usize; 2] = [1_000, 10_000];
const OWNER: &str = "owner@bench.example";
const PASSWORD: &str = "bench password";

pub(crate) use callsync_benches::now;

fn customer(tenant: &TenantId, i: usize) -> NewCustomer {
    NewCustomer {
        tenant: tenant.clone(),
        id: CustomerId::new(format!("cus-{i:05}")).unwrap(),
        company: format!("株式会社ベンチ{i}"),
        contact: "山田 太郎".to_owned(),
        owner: UserId::new(OWNER).unwrap(),
        phones: vec![PhoneEntry {
            label: "代表".to_owned(),
            number: PhoneNumber::parse("03-1234-5678").unwrap(),
        }],
    }
}

/// Sync two copies in memory until both are quiet; returns both states.
fn synced_states(a: &mut CustomerDoc, b: &mut CustomerDoc) -> (sync::State, sync::State) {
    let (mut sa, mut sb) = (sync::State::new(), sync::State::new());
    loop {
        let ma = a.automerge_mut().sync().generate_sync_message(&mut sa);
        if let Some(m) = &ma {
            b.automerge_mut()
                .sync()
                .receive_sync_message(&mut sb, m.clone())
                .unwrap();
        }
        let mb = b.automerge_mut().sync().generate_sync_message(&mut sb);
        if let Some(m) = &mb {
            a.automerge_mut()
                .sync()
                .receive_sync_message(&mut sa, m.clone())
                .unwrap();
        }
        if ma.is_none() && mb.is_none() {
            return (sa, sb);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

fn event(session: &SavedSession, call: &str, n: usize, kind: EventKind) -> CallEvent {
    CallEvent {
        id: EventId::new(format!("ev-{}-{n}", session.device)).unwrap(),
        call: CallId::new(call).unwrap(),
        stamp: Stamp {
            at: now(),
            device: session.device.clone(),
            device_kind: session.kind,
            user: session.user.clone(),
            device_at: None,
        },
        kind,
    }
}

fn record(store: &mut Store, session: &SavedSession, doc: &CustomerId, events: Vec<CallEvent>) {
    let actor = device_actor(store).unwrap();
    let catalog = ResultCatalog::standard();
    let rules = RuleSettings {
        tenant: &session.tenant,
        catalog: &catalog,
        start_limit_ms: 3_600_000,
    };
    store
        .record(&session.user, doc, actor, events, rules)
        .unwrap();
}

/// Connects the phone, catches up (and pushes its outbox); time and bytes.
async fn reconnect(phone: &Path) -> (f64, u64, usize) {
    let t = Instant::now();
    let (mut client, events) = SyncClient::connect(phone).await.unwrap();
    let changed = events
        .iter()
        .find_map(|e| match e {
            ClientEvent::Joined { changed } => Some(*changed),
            _ => None,
        })
        .unwrap_or(0);
    client.settle(Duration::from_secs(60)).await.unwrap();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let bytes = client.bytes_sent() + client.bytes_received();
    client.leave().await;
    (ms, bytes, changed)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let samod_docs: Vec<usize> = match args.iter().position(|a| a == "--samod-docs") {
        Some(i) => args[i + 1]
            .split(',')
            .map(|n| {
                n.parse()
                    .expect("--samod-docs takes numbers, comma-separated")
            })
            .collect(),
        None => SAMOD_DOCS.to_vec(),
    };
    let with_samod = !args.iter().any(|a| a == "--no-samod");
    let keep_dir = args.iter().any(|a| a == "--keep-dir");
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
    let addr = server.local_addr();
    server.shutdown().await;

    // Both replicas hold every document, with the sync states and cursor a full
    // sync would have left.
    let build = Instant::now();
    let mut server_store = Store::open(&server_dir.join(DB_FILE)).unwrap();
    let mut phone_store = Store::open(&phone_dir.join(DB_FILE)).unwrap();
    let server_actor = automerge::ActorId::from(server_store.setting("actor").unwrap().unwrap());
    let phone_actor = device_actor(&mut phone_store).unwrap();
    let tenant = phone.tenant.clone();
    let created = now();
    for chunk in (0..DOCS).collect::<Vec<_>>().chunks(1_000) {
        let mut stx = server_store.write().unwrap();
        let mut ptx = phone_store.write().unwrap();
        for &i in chunk {
            let mut doc =
                CustomerDoc::create(&customer(&tenant, i), created, server_actor.clone()).unwrap();
            let mut copy = CustomerDoc::load(&doc.save(), phone_actor.clone()).unwrap();
            let (server_state, phone_state) = synced_states(&mut doc, &mut copy);
            stx.insert(&mut doc).unwrap();
            stx.subscribe(&phone.device, &tenant, doc.id()).unwrap();
            stx.set_sync_state(
                phone.device.as_str(),
                &tenant,
                doc.id(),
                &server_state.encode(),
            )
            .unwrap();
            ptx.insert(&mut copy).unwrap();
            ptx.set_sync_state("server", &tenant, doc.id(), &phone_state.encode())
                .unwrap();
        }
        stx.commit().unwrap();
        ptx.commit().unwrap();
    }
    use callsync_store::ReplicationQueries;
    let cursor = Cursor {
        epoch: hex(&server_store.setting("epoch").unwrap().unwrap()),
        seq: server_store.last_change_seq().unwrap(),
    };
    phone_store
        .set_setting("cursor", &serde_json::to_vec(&cursor).unwrap())
        .unwrap();
    let build_s = build.elapsed().as_secs_f64();
    // What the phone holds: the log copied into the database first (right after
    // the writes, part of them is still only in the write-ahead log).
    let copied = phone_store.checkpoint().unwrap();
    assert!(copied.complete, "{copied:?}");
    let phone_db_bytes = std::fs::metadata(phone_dir.join(DB_FILE)).unwrap().len();

    let mut config = config;
    config.listen = addr;
    let server = Server::start(config.clone()).await.unwrap();
    let mut zero = Vec::new();
    let mut zero_bytes = 0;
    for _ in 0..RUNS {
        let (ms, bytes, changed) = reconnect(&phone_dir).await;
        assert_eq!(changed, 0);
        zero.push(ms);
        zero_bytes = bytes;
    }
    server.shutdown().await;

    // Ten documents change on the server while the phone is away: a desk
    // requests a call on each (written to the server's database while it is
    // down, as if the changes had arrived from the desk).
    let mut desk_as_server = Store::open(&server_dir.join(DB_FILE)).unwrap();
    let desk_actor = {
        let mut desk_store = Store::open(&desk_dir.join(DB_FILE)).unwrap();
        device_actor(&mut desk_store).unwrap()
    };
    let mut changed_bytes = 0usize;
    for i in 0..CHANGED {
        let doc_id = CustomerId::new(format!("cus-{i:05}")).unwrap();
        let heads = desk_as_server
            .load(&tenant, &doc_id, desk_actor.clone())
            .unwrap()
            .doc
            .heads();
        let call = format!("call-{i}");
        let kind = EventKind::Requested {
            destination: PhoneNumber::parse("03-1234-5678").unwrap(),
            origin: phone.device.clone(),
            recording: true,
        };
        let catalog = ResultCatalog::standard();
        // A zero start limit so the ten waiting requests do not block each other.
        let rules = RuleSettings {
            tenant: &tenant,
            catalog: &catalog,
            start_limit_ms: 0,
        };
        desk_as_server
            .record(
                &desk.user,
                &doc_id,
                desk_actor.clone(),
                vec![event(&desk, &call, i, kind)],
                rules,
            )
            .unwrap();
        let mut after = desk_as_server
            .load(&tenant, &doc_id, desk_actor.clone())
            .unwrap();
        changed_bytes += after.doc.save_after(&heads).len();
    }
    drop(desk_as_server);
    let server = Server::start(config.clone()).await.unwrap();
    let (server10_ms, server10_bytes, server10_changed) = reconnect(&phone_dir).await;
    server.shutdown().await;

    // The phone, offline, starts those ten calls.
    let mut phone_changed_bytes = 0usize;
    for i in 0..CHANGED {
        let doc_id = CustomerId::new(format!("cus-{i:05}")).unwrap();
        let mut before = phone_store
            .load(&tenant, &doc_id, phone_actor.clone())
            .unwrap();
        let heads = before.doc.heads();
        record(
            &mut phone_store,
            &phone,
            &doc_id,
            vec![event(&phone, &format!("call-{i}"), i, EventKind::Started)],
        );
        let mut after = phone_store
            .load(&tenant, &doc_id, phone_actor.clone())
            .unwrap();
        phone_changed_bytes += after.doc.save_after(&heads).len();
    }
    let server = Server::start(config.clone()).await.unwrap();
    let (phone10_ms, phone10_bytes, _) = reconnect(&phone_dir).await;

    // Push: a desk requests, the connected phone is notified.
    let (mut d, _) = SyncClient::connect(&desk_dir).await.unwrap();
    d.settle(Duration::from_secs(30)).await.unwrap();
    let (mut p, _) = SyncClient::connect(&phone_dir).await.unwrap();
    p.settle(Duration::from_secs(30)).await.unwrap();
    let mut desk_store = Store::open(&desk_dir.join(DB_FILE)).unwrap();
    // Each push goes to another customer (a customer has a handful of calls, not
    // hundreds): the desk opens the customers first.
    let push_docs: Vec<CustomerId> = (0..PUSHES)
        .map(|k| CustomerId::new(format!("cus-{:05}", DOCS - 1 - k)).unwrap())
        .collect();
    let (_, _) = d
        .rpc(callsync_core::wire::RpcCall::Subscribe {
            documents: push_docs.clone(),
        })
        .await
        .unwrap();
    d.settle(Duration::from_secs(30)).await.unwrap();
    let mut latencies = Vec::with_capacity(PUSHES);
    let mut record_ms = Vec::with_capacity(PUSHES);
    let mut wire_ms = Vec::with_capacity(PUSHES);
    for (k, doc_id) in push_docs.iter().enumerate() {
        let doc_id = doc_id.clone();
        let call = format!("push-{k}");
        let kind = EventKind::Requested {
            destination: PhoneNumber::parse("03-1234-5678").unwrap(),
            origin: phone.device.clone(),
            recording: true,
        };
        let t = Instant::now();
        record(
            &mut desk_store,
            &desk,
            &doc_id,
            vec![event(&desk, &call, 2 * k, kind)],
        );
        let sent = Instant::now();
        record_ms.push((sent - t).as_secs_f64() * 1e3);
        d.local_changes().unwrap();
        d.push_local().await.unwrap();
        // Both devices keep answering the server meanwhile (a bloom-filter false
        // positive makes the server ask the desk for the change once in a while).
        loop {
            tokio::select! {
                m = p.recv() => {
                    let events = p.handle(m.unwrap()).await.unwrap();
                    if events.iter().any(
                        |e| matches!(e, ClientEvent::CallRequested { call: c, .. } if c.as_str() == call),
                    ) {
                        break;
                    }
                }
                m = d.recv() => {
                    d.handle(m.unwrap()).await.unwrap();
                }
            }
        }
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
        wire_ms.push(sent.elapsed().as_secs_f64() * 1e3);
        d.settle(Duration::from_secs(30)).await.unwrap();
        record(
            &mut desk_store,
            &desk,
            &doc_id,
            vec![event(&desk, &call, 2 * k + 1, EventKind::Cancelled)],
        );
        d.local_changes().unwrap();
        d.push_local().await.unwrap();
        d.settle(Duration::from_secs(30)).await.unwrap();
        // Let the phone take in the cancel before the next request.
        while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(5), p.recv()).await {
            p.handle(m).await.unwrap();
        }
    }
    d.leave().await;
    p.leave().await;
    server.shutdown().await;

    // Fresh devices: a phone that never synced, subscribed to 1,000 and then (a
    // second phone) to all 10,000 customers, catches up from nothing.
    // (Subscriptions are written to the server's database while it runs, as an
    // operator's import would.)
    let mut fresh = Vec::new();
    let server = Server::start(config.clone()).await.unwrap();
    for (k, n) in FRESH_DOCS.into_iter().enumerate() {
        let dir = root.path().join(format!("fresh-{k}"));
        let session = login(
            &dir,
            &LoginRequest {
                server: server.local_addr(),
                server_name: "localhost".to_owned(),
                trust: SavedTrust::Fingerprint(server.fingerprint().to_owned()),
                email: OWNER.to_owned(),
                password: PASSWORD.to_owned(),
                kind: DeviceKind::Phone,
                device: None,
            },
        )
        .await
        .unwrap();
        {
            let mut store = Store::open(&server_dir.join(DB_FILE)).unwrap();
            let mut tx = store.write().unwrap();
            for i in 0..n {
                let doc = CustomerId::new(format!("cus-{i:05}")).unwrap();
                tx.subscribe(&session.device, &tenant, &doc).unwrap();
            }
            tx.commit().unwrap();
        }
        let (ms, bytes, listed) = reconnect(&dir).await;
        let held = callsync_store::customers_in(&Store::open(&dir.join(DB_FILE)).unwrap(), &tenant)
            .unwrap()
            .len();
        assert_eq!((listed, held), (n, n), "the fresh phone did not catch up");
        fresh.push(json!({
            "docs": n, "ms": ms, "wire_bytes": bytes, "bytes_per_doc": bytes / n as u64,
        }));
    }
    server.shutdown().await;
    let p50 = percentile(&mut latencies, 0.5);
    let p99 = percentile(&mut latencies, 0.99);
    let record_p50 = percentile(&mut record_ms, 0.5);
    let wire_p50 = percentile(&mut wire_ms, 0.5);
    let wire_p99 = percentile(&mut wire_ms, 0.99);

    let mut samod = Vec::new();
    if with_samod {
        for docs in samod_docs {
            samod.push(samod_side::run(docs, CHANGED, RUNS).await);
        }
    }
    let figures = json!({
        "docs": DOCS,
        "setup_s": build_s,
        "phone_db_bytes": phone_db_bytes,
        "reconnect_0": { "ms_median": median(zero.clone()), "ms_runs": zero, "wire_bytes": zero_bytes },
        "reconnect_server_10": {
            "ms": server10_ms, "wire_bytes": server10_bytes, "changed_docs_listed": server10_changed,
            "changed_bytes": changed_bytes,
        },
        "reconnect_phone_10": {
            "ms": phone10_ms, "wire_bytes": phone10_bytes, "changed_bytes": phone_changed_bytes,
        },
        "push": {
            "n": PUSHES, "p50_ms": p50, "p99_ms": p99,
            "local_write_p50_ms": record_p50,
            "after_write_p50_ms": wire_p50, "after_write_p99_ms": wire_p99,
        },
        "fresh_device": fresh,
        "samod": samod,
    });
    println!("{figures}");
    if keep_dir {
        // For a look inside the databases (sqlite3's `dbstat`), left in place.
        let kept = root.keep();
        eprintln!("the bench's databases are kept in {}", kept.display());
    }
}
