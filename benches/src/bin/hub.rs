//! `hub`: what the hub session costs per change, in-process over the real SQLite
//! store (`cargo run --release -p callsync-benches --bin hub [CALLS] [CHANGES]`,
//! default a 100-call customer and 300 changes), printing one JSON object.
//!
//! A phone holds a customer with CALLS finished calls (each requested, started,
//! ended on both sides and given a result: five events) plus CHANGES calls
//! requested for it; each change is the phone starting the next of those, sent as
//! one sync message. Timed per change: the hub's batch (the input and the end of
//! the batch: admission, save, fan-out, sync states: the session's CPU) less
//! the commit inside it, and the commit apart (SQLite with `synchronous=FULL`,
//! so mostly the disk's fsync; [`WriteTx::commit_took`]). The phone applies the
//! hub's answer between changes, untimed.
//!
//! The first change after the hub loaded the document also pays the document's
//! first full read; it is timed apart (`first_change_after_load_ms`) and left out
//! of the per-change figures, which are the steady state of a cached document.
//!
//! For a stable figure on a noisy machine, count instructions:
//! `valgrind --tool=callgrind --toggle-collect='*measured_change*'
//! --toggle-collect='*commit_in_place*' target/release/hub 100 31` counts only
//! inside [`measured_change`] (one change's batch), less the commit (the second
//! toggle turns counting off inside it); divide by CHANGES − 1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use automerge::sync::{self, SyncDoc};
use callsync_core::tenant_config::{PreparedInstall, TenantConfig, TenantConfigDoc};
use callsync_core::wire::Message;
use callsync_core::{
    ActorId, CallEvent, CallId, CustomerDoc, CustomerId, DeviceId, DeviceKind, EventId, EventKind,
    NewCustomer, PhoneEntry, PhoneNumber, ResultCatalog, ResultOption, ResultTypeId, Role,
    RuleContext, SavedResultFields, Stamp, TenantId, Timestamp, UserId,
};
use callsync_server::{DB_FILE, init_owner};
use callsync_session::Authenticated;
use callsync_session::hub::{HubEvent, HubInput, HubOutput, HubSession, HubSettings, Room};
use callsync_session::rules::{ResultRules, Verified};
use callsync_store::{MemberRecord, NewSession, Store, StoredDoc, WriteTx};
use serde_json::json;

const OWNER: &str = "owner@hub.example";

struct NoPlugins;

impl ResultRules for NoPlugins {
    fn verify(
        &self,
        _: &TenantConfig,
        _: &TenantConfigDoc,
        _: &SavedResultFields,
        _: Timestamp,
    ) -> Verified {
        Verified {
            outcome: Ok(()),
            spent: Duration::ZERO,
        }
    }

    fn standard_install(&self, _: &TenantId, _: Timestamp) -> Result<PreparedInstall, String> {
        Err("no plugins in this bench".to_owned())
    }
}

use callsync_benches::now;

fn stamp(device: &DeviceId, kind: DeviceKind) -> Stamp {
    Stamp {
        at: now(),
        device: device.clone(),
        device_kind: kind,
        user: UserId::new(OWNER).unwrap(),
        device_at: None,
    }
}

fn event(id: String, call: &CallId, stamp: Stamp, kind: EventKind) -> CallEvent {
    CallEvent {
        id: EventId::new(id).unwrap(),
        call: call.clone(),
        stamp,
        kind,
    }
}

/// One change through the hub: one batch, its commit included.
#[inline(never)]
fn measured_change(
    hub: &mut HubSession<StoredDoc>,
    tx: &mut WriteTx<'_>,
    message: Message,
) -> HubOutput {
    let output = change(hub, tx, message);
    // Not a tail call, so callgrind's `--toggle-collect` sees this return.
    std::hint::black_box(output)
}

/// A change: one batch of one input, committed. The first change after the hub
/// loaded the document calls this directly (it also pays the document's first
/// full read, and is timed apart); the others go through [`measured_change`].
fn change(hub: &mut HubSession<StoredDoc>, tx: &mut WriteTx<'_>, message: Message) -> HubOutput {
    batch(hub, tx, vec![HubInput::Received { conn: 1, message }])
}

/// One batch of `inputs`, committed; re-checks it asks for are run and their
/// verdicts handled in a batch of their own, as the server's verifier does.
fn batch(
    hub: &mut HubSession<StoredDoc>,
    tx: &mut WriteTx<'_>,
    inputs: Vec<HubInput>,
) -> HubOutput {
    let at = now();
    let room = |_| Room::UNLIMITED;
    let mut verified = Vec::new();
    for input in inputs {
        let output = hub.handle_event(at, tx, &room, HubEvent::Input(input));
        assert!(output.failed.is_none(), "{:?}", output.failed);
        verified.extend(output.verifications.iter().map(|v| HubInput::Verified {
            ticket: v.ticket,
            verdict: v.run(),
        }));
    }
    let output = hub.handle_event(at, tx, &room, HubEvent::EndOfBatch);
    assert!(output.failed.is_none(), "{:?}", output.failed);
    assert!(
        verified.is_empty(),
        "the bench's changes save no result, so nothing waits for a re-check"
    );
    output
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let calls: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100);
    let changes: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(300);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("server");
    init_owner(&dir, "hub", OWNER, "hub bench password").unwrap();
    let mut store = Store::open(&dir.join(DB_FILE)).unwrap();
    let tenant = TenantId::new("hub").unwrap();
    let owner: MemberRecord = store.member(&UserId::new(OWNER).unwrap()).unwrap().unwrap();
    let phone = DeviceId::new("phone-bench").unwrap();
    let desk = DeviceId::new("desk-bench").unwrap();
    let phone_actor = ActorId::from(phone.as_str().as_bytes());
    store
        .open_session(
            &owner,
            &NewSession {
                device: &phone,
                kind: DeviceKind::Phone,
                actor: &phone_actor.to_hex_string(),
                token_hash: &[1; 32],
                expires_at: now().plus_millis(86_400_000),
            },
            now(),
        )
        .unwrap();
    // The customer: `calls` finished calls and `changes` requested ones.
    let customer = CustomerId::new("cus-bench").unwrap();
    let new = NewCustomer {
        tenant: tenant.clone(),
        id: customer.clone(),
        company: "株式会社ベンチ".to_owned(),
        contact: "計測 太郎".to_owned(),
        owner: UserId::new(OWNER).unwrap(),
        phones: vec![PhoneEntry {
            label: "代表".to_owned(),
            number: PhoneNumber::parse("03-1234-5678").unwrap(),
        }],
    };
    let mut doc = CustomerDoc::create(&new, now(), ActorId::from(b"setup".as_slice())).unwrap();
    let catalog = ResultCatalog::standard();
    let ctx = RuleContext {
        catalog: &catalog,
        start_limit_ms: i64::MAX / 4,
        other_open_calls: &[],
    };
    let request = || EventKind::Requested {
        destination: PhoneNumber::parse("03-1234-5678").unwrap(),
        origin: phone.clone(),
        recording: false,
    };
    for k in 0..calls {
        let call = CallId::new(format!("done-{k}")).unwrap();
        let desk_stamp = || stamp(&desk, DeviceKind::Desk);
        let phone_stamp = || stamp(&phone, DeviceKind::Phone);
        let result = SavedResultFields {
            result_type: ResultTypeId::new("no-answer").unwrap(),
            option: ResultOption::None,
            customer_status: None,
            memo: String::new(),
            decision: None,
            kept_as_picked: None,
        };
        for e in [
            event(format!("rq-{k}"), &call, desk_stamp(), request()),
            event(format!("st-{k}"), &call, phone_stamp(), EventKind::Started),
            event(
                format!("pe-{k}"),
                &call,
                phone_stamp(),
                EventKind::PhoneEnded { duration_secs: 60 },
            ),
            event(
                format!("be-{k}"),
                &call,
                desk_stamp(),
                EventKind::BrowserEnded,
            ),
            event(
                format!("rs-{k}"),
                &call,
                desk_stamp(),
                EventKind::ResultSaved(result),
            ),
        ] {
            doc.record(e, &ctx).unwrap();
        }
    }
    // Requested two minutes apart in the past, so with the setup's one-minute limit
    // one request waiting does not hold up the next; the phone and the hub start
    // them with no limit.
    let setup_ctx = RuleContext {
        catalog: &catalog,
        start_limit_ms: 60_000,
        other_open_calls: &[],
    };
    for k in 0..changes {
        let call = CallId::new(format!("open-{k}")).unwrap();
        let mut earlier = stamp(&desk, DeviceKind::Desk);
        earlier.at = earlier
            .at
            .plus_millis(-120_000 * (changes - k) as i64 - 600_000);
        doc.record(
            event(format!("rq-{k}"), &call, earlier, request()),
            &setup_ctx,
        )
        .unwrap();
    }
    {
        let mut tx = store.write().unwrap();
        tx.insert(&mut doc).unwrap();
        tx.subscribe(&phone, &tenant, &customer).unwrap();
        tx.commit().unwrap();
    }
    let bytes = doc.save();

    let mut hub: HubSession<StoredDoc> = HubSession::new(
        tenant.clone(),
        HubSettings {
            start_limit_ms: i64::MAX / 4,
            max_customers: 1_000,
            cache_docs: 64,
            server_device: DeviceId::new("server").unwrap(),
            server_user: UserId::new("system").unwrap(),
            server_actor: ActorId::from(b"hub-bench-server".as_slice()),
            epoch: "bench".to_owned(),
            max_held: callsync_session::hub::MAX_HELD_MESSAGES,
        },
        Arc::new(NoPlugins),
    );
    let member = Authenticated {
        tenant: tenant.clone(),
        user: UserId::new(OWNER).unwrap(),
        role: Role::Owner,
        device: phone.clone(),
        kind: DeviceKind::Phone,
        expires_at: now().plus_millis(86_400_000),
    };
    // The phone's replica and its sync with the hub.
    let mut replica = CustomerDoc::load(&bytes, phone_actor).unwrap();
    let mut state = sync::State::new();
    let run = |hub: &mut HubSession<StoredDoc>, store: &mut Store, input: HubInput| {
        let mut tx = store.write().unwrap();
        batch(hub, &mut tx, vec![input]).sends
    };
    let apply = |replica: &mut CustomerDoc, state: &mut sync::State, sends: Vec<(u64, Message)>| {
        let mut replies = Vec::new();
        for (_, message) in sends {
            if let Message::Sync { document_id, data } = message {
                let m = sync::Message::decode(&data).unwrap();
                replica
                    .automerge_mut()
                    .sync()
                    .receive_sync_message(state, m)
                    .unwrap();
                if let Some(reply) = replica.automerge_mut().sync().generate_sync_message(state) {
                    replies.push(Message::Sync {
                        document_id,
                        data: reply.encode(),
                    });
                }
            }
        }
        replies
    };
    let mut pending = run(
        &mut hub,
        &mut store,
        HubInput::Open {
            conn: 1,
            member,
            cursor: None,
        },
    );
    // Settle the initial sync.
    for _ in 0..20 {
        let replies = apply(&mut replica, &mut state, std::mem::take(&mut pending));
        if replies.is_empty() {
            break;
        }
        for message in replies {
            pending.extend(run(
                &mut hub,
                &mut store,
                HubInput::Received { conn: 1, message },
            ));
        }
    }
    let mut first_ms = 0.0;
    let mut session_ms = Vec::with_capacity(changes);
    let mut commit_ms = Vec::with_capacity(changes);
    for k in 0..changes {
        let call = CallId::new(format!("open-{k}")).unwrap();
        replica
            .record(
                event(
                    format!("st-open-{k}"),
                    &call,
                    stamp(&phone, DeviceKind::Phone),
                    EventKind::Started,
                ),
                &ctx,
            )
            .unwrap();
        let Some(message) = replica
            .automerge_mut()
            .sync()
            .generate_sync_message(&mut state)
        else {
            panic!("no change to send");
        };
        let message = Message::Sync {
            document_id: customer.clone(),
            data: message.encode(),
        };
        let mut tx = store.write().unwrap();
        let started = Instant::now();
        let output = if k == 0 {
            change(&mut hub, &mut tx, message)
        } else {
            measured_change(&mut hub, &mut tx, message)
        };
        let committed = tx.commit_took().unwrap();
        let handled = started.elapsed() - committed;
        drop(tx);
        if k == 0 {
            first_ms = handled.as_secs_f64() * 1e3;
        } else {
            session_ms.push(handled.as_secs_f64() * 1e3);
            commit_ms.push(committed.as_secs_f64() * 1e3);
        }
        let sends = output.sends;
        assert!(
            !sends
                .iter()
                .any(|(_, m)| matches!(m, Message::Rejected { .. })),
            "the hub refused a change: {sends:?}"
        );
        for message in apply(&mut replica, &mut state, sends) {
            let sends = run(
                &mut hub,
                &mut store,
                HubInput::Received { conn: 1, message },
            );
            apply(&mut replica, &mut state, sends);
        }
    }
    let mut sorted = session_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let mut commits = commit_ms.clone();
    commits.sort_by(f64::total_cmp);
    let out = json!({
        "bench": "hub",
        "calls": calls,
        "events_in_document": calls * 5 + changes,
        "changes": changes,
        "measured_changes": changes - 1,
        "first_change_after_load_ms": first_ms,
        "hub_ms_per_change": {
            "p50": percentile(&sorted, 0.5),
            "p90": percentile(&sorted, 0.9),
            "max": percentile(&sorted, 1.0),
        },
        "commit_ms": {
            "p50": percentile(&commits, 0.5),
            "p90": percentile(&commits, 0.9),
        },
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}
