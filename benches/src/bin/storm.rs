//! `storm`: a reconnect storm (`cargo run --release -p callsync-benches --bin
//! storm [PHONES] [DOCS_PER_PHONE]`, default 1,000 phones × 10 documents),
//! printing one JSON object.
//!
//! Every phone is subscribed to its own documents, each holding one call the desk
//! asked it to dial. The phones first sync everything online (not measured), keep
//! their cursor and per-document sync state, and go offline. Offline, each phone
//! starts and ends the call on every one of its documents (two events, the phone's
//! real offline work). Then all of them reconnect at the same instant: `join` with
//! the cursor, and a `sync` for each changed document from the kept sync state. A
//! document is caught up when a server message for it carries exactly the phone's
//! heads (the server answers only after its write is durable, so this is the
//! acknowledgement); a phone is caught up when all its documents are.
//!
//! The phones are light in-memory clients (the real protocol over real QUIC on
//! loopback, no SQLite) in a separate load-generator process (this program again,
//! `--load …`), so the server process's CPU and peak RSS are its own; the peak is
//! reset when the storm starts, so it is the storm's, not the set-up's. The server
//! is pinned to core 0 and the generator to core 1 (`taskset`). The generator is
//! light: a phone's offline changes are made before the storm, and during it a
//! phone only answers the server with raw Automerge sync messages (no rules, no
//! derivation). It says whether it kept up (its core not saturated, no phone
//! failed). The phones come from 32 at a time per loopback address (127.0.0.2,
//! 127.0.0.3, …), as a fleet comes from many networks: the server holds at most 64
//! connections per address that have not said who they are, so all of them from
//! 127.0.0.1 at once would be refused. The server's start limit is set to an
//! hour, so no call expires while its phone is away and the work measured is the
//! catch-up itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use automerge::sync::{self, SyncDoc};
use automerge::{AutoCommit, ChangeHash};
use callsync_benches::fleet::{Fleet, NUMBER, start_server};
use callsync_benches::{
    now, peak_rss_kib, pin_self_to, pinned_command, reset_peak_rss, thread_cpu,
};
use callsync_core::wire::{self, Cursor, Message};
use callsync_core::{
    ActorId, CallEvent, CallId, CustomerDoc, CustomerId, DeviceKind, EventId, EventKind,
    NewCustomer, PhoneEntry, PhoneNumber, ResultCatalog, RuleContext, Stamp,
};
use callsync_net::endpoint;
use callsync_net::framing::{read_message, write_message};
use callsync_net::tls::{Trust, client_config};
use callsync_server::ServerConfig;
use serde_json::json;

const FLEET: Fleet = Fleet { name: "storm" };
/// How long a phase may take before the load generator gives up on a phone.
const PHASE_LIMIT: Duration = Duration::from_secs(300);
/// Phones per source address: half the server's cap on connections per address
/// that have not said who they are.
const PHONES_PER_ADDRESS: usize = 32;

fn doc_id(i: usize, d: usize) -> CustomerId {
    CustomerId::new(format!("cus-{i:04}-{d:02}")).unwrap()
}

fn call_id(i: usize, d: usize) -> CallId {
    CallId::new(format!("call-{i:04}-{d:02}")).unwrap()
}

/// One phone's copy of one document, and what it last agreed with the server.
struct Replica {
    am: AutoCommit,
    state: sync::State,
    caught_up: bool,
}

fn sorted(mut heads: Vec<ChangeHash>) -> Vec<ChangeHash> {
    heads.sort();
    heads
}

/// What one phone connection did.
#[derive(Default)]
struct Outcome {
    /// From the phase's start to the `peer` answer.
    joined_ms: f64,
    /// From the phase's start to the last document caught up.
    caught_up_ms: f64,
    bytes_received: usize,
    messages_received: usize,
    cursor: Option<Cursor>,
    changed_listed: usize,
}

/// Connects, joins with `cursor`, sends a `sync` for every document it holds, and
/// answers the server until `expected` documents are caught up.
async fn run_phone(
    i: usize,
    expected: usize,
    endpoint: quinn::Endpoint,
    addr: std::net::SocketAddr,
    cursor: Option<Cursor>,
    docs: &mut HashMap<CustomerId, Replica>,
    phase_start: Instant,
) -> Result<Outcome, String> {
    let me = FLEET.phone(i);
    let actor = ActorId::from(me.as_str().as_bytes());
    let (conn, mut send, mut recv) = endpoint::connect(&endpoint, addr, "localhost")
        .await
        .map_err(|e| format!("connect: {e}"))?;
    write_message(
        &mut send,
        &Message::Join {
            sender_id: me.clone(),
            supported_protocol_versions: vec![wire::PROTOCOL_VERSION.to_owned()],
            token: FLEET.token(i),
            cursor,
        },
    )
    .await
    .map_err(|e| format!("join: {e}"))?;
    let mut outcome = Outcome::default();
    for replica in docs.values_mut() {
        replica.caught_up = false;
    }
    let mut caught_up = 0;
    let mut joined = false;
    let deadline = tokio::time::Instant::now() + PHASE_LIMIT;
    while !joined || caught_up < expected {
        let pending = expected - caught_up.min(expected);
        let message = tokio::time::timeout_at(deadline, read_message(&mut recv))
            .await
            .map_err(|_| format!("{pending} documents not caught up in time"))?
            .map_err(|e| format!("read: {e}"))?
            .ok_or("the server closed the stream")?;
        outcome.messages_received += 1;
        match message {
            Message::Peer {
                cursor, changed, ..
            } => {
                joined = true;
                outcome.joined_ms = phase_start.elapsed().as_secs_f64() * 1e3;
                outcome.cursor = Some(cursor);
                outcome.changed_listed = changed.len();
                // The outbox: every document with a change the server may lack.
                for (document_id, replica) in docs.iter_mut() {
                    if let Some(m) = replica.am.sync().generate_sync_message(&mut replica.state) {
                        write_message(
                            &mut send,
                            &Message::Sync {
                                document_id: document_id.clone(),
                                data: m.encode(),
                            },
                        )
                        .await
                        .map_err(|e| format!("send: {e}"))?;
                    }
                }
            }
            Message::Sync { document_id, data } => {
                outcome.bytes_received += data.len();
                let replica = docs.entry(document_id.clone()).or_insert_with(|| Replica {
                    am: AutoCommit::new().with_actor(actor.clone()),
                    state: sync::State::new(),
                    caught_up: false,
                });
                let msg = sync::Message::decode(&data).map_err(|e| format!("decode: {e}"))?;
                let their_heads = sorted(msg.heads.clone());
                replica
                    .am
                    .sync()
                    .receive_sync_message(&mut replica.state, msg)
                    .map_err(|e| format!("apply: {e}"))?;
                if !replica.caught_up
                    && !their_heads.is_empty()
                    && their_heads == sorted(replica.am.get_heads())
                {
                    replica.caught_up = true;
                    caught_up += 1;
                }
                if let Some(reply) = replica.am.sync().generate_sync_message(&mut replica.state) {
                    write_message(
                        &mut send,
                        &Message::Sync {
                            document_id,
                            data: reply.encode(),
                        },
                    )
                    .await
                    .map_err(|e| format!("send: {e}"))?;
                }
            }
            Message::Error(body) => return Err(format!("refused: {}", body.code)),
            Message::Rejected { .. } => return Err("a change was rejected".to_owned()),
            _ => {}
        }
    }
    outcome.caught_up_ms = phase_start.elapsed().as_secs_f64() * 1e3;
    let _ = write_message(
        &mut send,
        &Message::Leave {
            sender_id: me.to_string(),
        },
    )
    .await;
    let _ = send.finish();
    conn.close(0u32.into(), b"leave");
    Ok(outcome)
}

/// Records what the phone did offline on every one of its documents: it started
/// the call and ended it.
fn work_offline(i: usize, docs: &mut HashMap<CustomerId, Replica>) {
    let catalog = ResultCatalog::standard();
    let ctx = RuleContext {
        catalog: &catalog,
        start_limit_ms: i64::MAX / 4,
        other_open_calls: &[],
    };
    for (document_id, replica) in docs.iter_mut() {
        let d: usize = document_id.as_str()[document_id.as_str().len() - 2..]
            .parse()
            .unwrap();
        let mut doc = CustomerDoc::from_automerge(replica.am.clone()).unwrap();
        for (step, kind) in [
            ("st", EventKind::Started),
            ("pe", EventKind::PhoneEnded { duration_secs: 95 }),
        ] {
            let event = CallEvent {
                id: EventId::new(format!("{step}-{i:04}-{d:02}")).unwrap(),
                call: call_id(i, d),
                stamp: Stamp {
                    at: now(),
                    device: FLEET.phone(i),
                    device_kind: DeviceKind::Phone,
                    user: FLEET.rep(i),
                    device_at: None,
                },
                kind,
            };
            doc.record(event, &ctx).unwrap();
        }
        replica.am = doc.automerge().clone();
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        f64::NAN
    } else {
        sorted[((sorted.len() - 1) as f64 * p).round() as usize]
    }
}

/// Runs one phase for every phone at once; returns each phone's outcome.
async fn phase(
    expected: usize,
    endpoints: &[quinn::Endpoint],
    addr: std::net::SocketAddr,
    phones: &[Arc<Mutex<PhoneState>>],
) -> Vec<Result<Outcome, String>> {
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(phones.len());
    for (i, phone) in phones.iter().enumerate() {
        let endpoint = endpoints[i / PHONES_PER_ADDRESS].clone();
        let phone = phone.clone();
        tasks.push(tokio::spawn(async move {
            let (cursor, mut docs) = {
                let mut p = phone.lock().unwrap();
                (p.cursor.clone(), std::mem::take(&mut p.docs))
            };
            let outcome = run_phone(i, expected, endpoint, addr, cursor, &mut docs, start).await;
            let mut p = phone.lock().unwrap();
            p.docs = docs;
            if let Ok(o) = &outcome {
                p.cursor = o.cursor.clone();
            }
            outcome
        }));
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    for t in tasks {
        outcomes.push(t.await.unwrap_or_else(|e| Err(format!("task: {e}"))));
    }
    outcomes
}

#[derive(Default)]
struct PhoneState {
    cursor: Option<Cursor>,
    docs: HashMap<CustomerId, Replica>,
}

/// The load generator: `storm --load ADDR FINGERPRINT PHONES DOCS_PER_PHONE`. Prints `offline`
/// once every phone has synced and gone offline with its changes, waits for a
/// line on standard input, runs the storm and prints its figures as JSON.
fn load(args: &[String]) {
    let addr: std::net::SocketAddr = args[2].parse().unwrap();
    let trust = Trust::Fingerprint(args[3].clone());
    let n: usize = args[4].parse().unwrap();
    let per_phone: usize = args[5].parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("client-rt")
        .enable_all()
        .build()
        .unwrap();
    let phones: Vec<Arc<Mutex<PhoneState>>> = (0..n)
        .map(|_| Arc::new(Mutex::new(PhoneState::default())))
        .collect();
    let config = client_config(&trust).unwrap();
    let addresses = n.div_ceil(PHONES_PER_ADDRESS);
    assert!(
        addresses < 250,
        "at most {} phones",
        249 * PHONES_PER_ADDRESS
    );
    let endpoints: Vec<quinn::Endpoint> = rt.block_on(async {
        (0..addresses)
            .map(|k| {
                let local = std::net::SocketAddr::from(([127, 0, 0, 2 + k as u8], 0));
                let mut endpoint = quinn::Endpoint::client(local).unwrap();
                endpoint.set_default_client_config(config.clone());
                endpoint
            })
            .collect()
    });

    // Online: every phone fetches its documents and keeps its cursor.
    let online = Instant::now();
    let first = rt.block_on(phase(per_phone, &endpoints, addr, &phones));
    let online_failures: Vec<&String> = first.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(
        online_failures.is_empty(),
        "{} phones failed to sync online, e.g. {:?}",
        online_failures.len(),
        online_failures.first()
    );
    let online_s = online.elapsed().as_secs_f64();

    // Offline: each phone starts and ends the call on each of its documents.
    for (i, phone) in phones.iter().enumerate() {
        work_offline(i, &mut phone.lock().unwrap().docs);
    }
    println!("offline");
    std::io::stdout().flush().unwrap();
    let mut go = String::new();
    std::io::stdin().lock().read_line(&mut go).unwrap();

    // The storm.
    let cpu_before = thread_cpu(&[""]);
    let storm = Instant::now();
    let outcomes = rt.block_on(phase(per_phone, &endpoints, addr, &phones));
    let storm_s = storm.elapsed().as_secs_f64();
    let generator_cpu = thread_cpu(&[""]) - cpu_before;
    let failures: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    let ok: Vec<&Outcome> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
    let generator_busy = generator_cpu / storm_s;
    let kept_up = generator_busy < 0.9 && failures.is_empty();
    let mut joined: Vec<f64> = ok.iter().map(|o| o.joined_ms).collect();
    let mut caught_up: Vec<f64> = ok.iter().map(|o| o.caught_up_ms).collect();
    joined.sort_by(f64::total_cmp);
    caught_up.sort_by(f64::total_cmp);
    let bytes: usize = ok.iter().map(|o| o.bytes_received).sum();
    let messages: usize = ok.iter().map(|o| o.messages_received).sum();
    let listed: usize = ok.iter().map(|o| o.changed_listed).sum();
    println!(
        "{}",
        json!({
            "online_sync_s": online_s,
            "phones_caught_up": ok.len(),
            "phones_failed": failures.len(),
            "first_failure": failures.first(),
            "storm_s": storm_s,
            "joined_ms": { "p50": percentile(&joined, 0.5), "p99": percentile(&joined, 0.99), "max": percentile(&joined, 1.0) },
            "caught_up_ms": { "p50": percentile(&caught_up, 0.5), "p99": percentile(&caught_up, 0.99), "max": percentile(&caught_up, 1.0) },
            "documents_listed_changed_by_server": listed,
            "sync_bytes_received_per_phone": bytes as f64 / ok.len().max(1) as f64,
            "messages_received_per_phone": messages as f64 / ok.len().max(1) as f64,
            "load_generator_cpu_s": generator_cpu,
            "load_generator_core_busy": generator_busy,
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
    let per_phone: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);
    assert!(per_phone <= 100, "at most 100 documents per phone");
    let server_pinned = pin_self_to(0);
    let root = tempfile::tempdir().unwrap();
    let server_dir = root.path().join("server");

    // Members, sessions, customers and requested calls, written straight to the
    // server's database.
    let setup = Instant::now();
    {
        let mut store = FLEET.enrol(&server_dir, n);
        let tenant = FLEET.tenant();
        let server_actor = ActorId::from(b"storm-setup".as_slice());
        let mut tx = store.write().unwrap();
        for i in 0..n {
            for d in 0..per_phone {
                let new = NewCustomer {
                    tenant: tenant.clone(),
                    id: doc_id(i, d),
                    company: format!("株式会社ストーム{i}-{d}"),
                    contact: "鈴木 一郎".to_owned(),
                    owner: FLEET.rep(i),
                    phones: vec![PhoneEntry {
                        label: "代表".to_owned(),
                        number: PhoneNumber::parse(NUMBER).unwrap(),
                    }],
                };
                let mut doc = CustomerDoc::create(&new, now(), server_actor.clone()).unwrap();
                let event = format!("rq-{i:04}-{d:02}");
                FLEET.request(&mut doc, &event, call_id(i, d), i, FLEET.rep(i));
                tx.insert(&mut doc).unwrap();
                tx.subscribe(&FLEET.phone(i), &tenant, &doc_id(i, d))
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let setup_s = setup.elapsed().as_secs_f64();

    let mut config = ServerConfig::new(server_dir.clone(), "127.0.0.1:0".parse().unwrap());
    config.start_limit_ms = 3_600_000;
    let (server_rt, server) = start_server(config);
    let addr = server.local_addr();
    let fingerprint = server.fingerprint().to_owned();

    // The phones: a separate process, so this one's CPU and memory are the server's.
    let (mut generator, generator_pinned) = pinned_command(1, &std::env::current_exe().unwrap());
    let mut generator = generator
        .args([
            "--load".to_owned(),
            addr.to_string(),
            fingerprint,
            n.to_string(),
            per_phone.to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(generator.stdout.take().unwrap()).lines();
    let offline = lines.next().unwrap().unwrap();
    assert_eq!(
        offline, "offline",
        "the load generator did not reach the storm"
    );
    let rss_before_storm = peak_rss_kib();
    let peak_reset = reset_peak_rss();
    let cpu_before = thread_cpu(&[""]);
    let hub_before = thread_cpu(&["hub-"]);
    let storm_started = Instant::now();
    writeln!(generator.stdin.take().unwrap(), "go").unwrap();
    let report = lines.next().unwrap().unwrap();
    let wall = storm_started.elapsed().as_secs_f64();
    let cpu = thread_cpu(&[""]) - cpu_before;
    let hub_cpu = thread_cpu(&["hub-"]) - hub_before;
    let storm_peak_rss = peak_rss_kib();
    assert!(
        generator.wait().unwrap().success(),
        "the load generator failed"
    );
    server_rt.block_on(server.shutdown());
    let phones: serde_json::Value = serde_json::from_str(&report).unwrap();
    let figures = json!({
        "phones": n,
        "documents_per_phone": per_phone,
        "changes_pushed": n * per_phone,
        "setup_s": setup_s,
        "storm_wall_s": wall,
        "server_process_cpu_s": cpu,
        "server_cores_busy": cpu / wall,
        "hub_threads_cpu_s": hub_cpu,
        "server_peak_rss_before_storm_kib": rss_before_storm,
        "server_peak_rss_during_storm_kib": if peak_reset { storm_peak_rss } else { None },
        "phones_process": phones,
        "pinned": { "server_core_0": server_pinned, "generator_core_1": generator_pinned },
    });
    println!("{figures}");
}
