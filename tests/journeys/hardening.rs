//! The security review's findings, each reproduced from outside against a real
//! `callsync serve` (raw QUIC clients where an honest binary would not misbehave):
//! a login flood beside account requests, changes with missing dependencies,
//! decompression and run-length bombs, changes that cancel out, old subscriptions
//! under the assignee restriction, floods of work for the hub. Each test failed on
//! the server before its fix.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, ROOT, ReadDoc};
use callsync_core::wire::{self, DeviceRegistration, Message, RpcCall, RpcResult};
use callsync_core::{CustomerId, DeviceId, DeviceKind};
use callsync_net::framing::{read_message, write_message};
use callsync_net::tls::{Trust, client_config};
use callsync_replica::SavedSession;
use callsync_store::Store;

use crate::network::{
    NUMBER, OWNER, PASSWORD, ServerProcess, World, call_id, callsync, create_customer,
};
use crate::support::runtime;

/// A second rep of the first tenant.
const OTHER_REP: &str = "rep2@acme.example";

/// A raw connection from a chosen local address (all of 127.0.0.0/8 is this
/// machine), with the protocol's stream open.
async fn connect_from(
    server: &ServerProcess,
    local: &str,
) -> (
    quinn::Endpoint,
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
) {
    connect_with(server, local, None).await
}

/// [`connect_from`], with this QUIC transport instead of the client's own.
async fn connect_with(
    server: &ServerProcess,
    local: &str,
    transport: Option<quinn::TransportConfig>,
) -> (
    quinn::Endpoint,
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
) {
    let addr: SocketAddr = server.addr.parse().unwrap();
    let mut ep = quinn::Endpoint::client(format!("{local}:0").parse().unwrap()).unwrap();
    let mut config = client_config(&Trust::Fingerprint(server.fingerprint.clone())).unwrap();
    if let Some(transport) = transport {
        config.transport_config(std::sync::Arc::new(transport));
    }
    ep.set_default_client_config(config);
    let (conn, send, recv) = callsync_net::endpoint::connect(&ep, addr, "localhost")
        .await
        .unwrap();
    (ep, conn, send, recv)
}

/// One login attempt from `local`; the reply's error code, or `logged-in`.
pub(crate) async fn login_from(
    server: &ServerProcess,
    local: &str,
    email: &str,
    password: &str,
) -> String {
    let (_ep, _conn, mut send, mut recv) = connect_from(server, local).await;
    let login = Message::Login {
        supported_protocol_versions: vec![wire::PROTOCOL_VERSION.to_owned()],
        email: email.to_owned(),
        password: password.to_owned(),
        device: DeviceRegistration {
            id: DeviceId::new(format!("desk-{}", uuid::Uuid::new_v4())).unwrap(),
            kind: DeviceKind::Desk,
            actor: uuid::Uuid::new_v4().simple().to_string(),
        },
    };
    write_message(&mut send, &login).await.unwrap();
    match read_message(&mut recv).await {
        Ok(Some(Message::LoggedIn { .. })) => "logged-in".to_owned(),
        Ok(Some(Message::Error(body))) => body.code,
        other => format!("{other:?}"),
    }
}

/// A joined raw connection for a saved session.
pub(crate) async fn join(
    server: &ServerProcess,
    session: &SavedSession,
) -> (
    quinn::Endpoint,
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
) {
    let (ep, conn, send, recv) = connect_from(server, "127.0.0.1").await;
    send_join(ep, conn, send, recv, session).await
}

/// Sends `join` for `session` on an open connection and hands it back.
async fn send_join(
    ep: quinn::Endpoint,
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    session: &SavedSession,
) -> (
    quinn::Endpoint,
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
) {
    let join = Message::Join {
        sender_id: session.device.clone(),
        supported_protocol_versions: vec![wire::PROTOCOL_VERSION.to_owned()],
        token: session.token.clone(),
        cursor: None,
    };
    write_message(&mut send, &join).await.unwrap();
    (ep, conn, send, recv)
}

/// Reads until the reply to rpc `id` (other messages are skipped).
pub(crate) async fn reply(recv: &mut quinn::RecvStream, id: u64) -> RpcResult {
    loop {
        match read_message(recv).await.unwrap().expect("a message") {
            Message::Reply { id: got, result } if got == id => return result,
            Message::Error(body) => panic!("cut off: {body:?}"),
            _ => {}
        }
    }
}

pub(crate) fn saved_session(dir: &Path) -> SavedSession {
    let store = Store::open(&dir.join("callsync.sqlite")).unwrap();
    SavedSession::load(&store).unwrap().unwrap()
}

#[test]
fn a_login_flood_beside_account_requests_neither_deadlocks_the_server_nor_locks_out_the_owner() {
    let world = World::start(&[]);
    let admin = saved_session(&world.admin_desk);
    let rt = runtime();
    let (codes, admin_answers) = rt.block_on(async {
        let until = Instant::now() + Duration::from_secs(5);
        // An outsider: six parallel streams of wrong passwords from 127.0.0.2.
        let mut floods = Vec::new();
        for _ in 0..6 {
            let server = &world.server;
            floods.push(async move {
                let mut codes = Vec::new();
                while Instant::now() < until {
                    codes.push(login_from(server, "127.0.0.2", OWNER, "not the password").await);
                }
                codes
            });
        }
        // Meanwhile the owner lists the members now and then.
        let admin_requests = async {
            let (_ep, _c, mut send, mut recv) = join(&world.server, &admin).await;
            let mut answered = 0;
            let mut id = 0;
            while Instant::now() < until {
                id += 1;
                let rpc = Message::Rpc {
                    id,
                    call: RpcCall::UserList,
                };
                write_message(&mut send, &rpc).await.unwrap();
                let answer = tokio::time::timeout(Duration::from_secs(10), reply(&mut recv, id))
                    .await
                    .expect("the account request is answered (no deadlock)");
                assert!(matches!(answer, RpcResult::Users(_)), "{answer:?}");
                answered += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            answered
        };
        let (codes, answered) = tokio::join!(futures::future::join_all(floods), admin_requests);
        (codes.concat(), answered)
    });
    assert!(admin_answers > 5, "{admin_answers}");
    let wrong = codes.iter().filter(|c| *c == "invalid-credentials").count();
    let throttled = codes.iter().filter(|c| *c == "login-throttled").count();
    eprintln!(
        "login flood: {} attempts, {wrong} passwords checked, {throttled} throttled, {admin_answers} account requests answered",
        codes.len()
    );
    assert_eq!(wrong + throttled, codes.len(), "{codes:?}");
    // The guesses that were checked at all: the free ones and a few after the
    // first delays, not hundreds.
    assert!(wrong <= 10, "{wrong} passwords were checked: {codes:?}");
    assert!(throttled > 0);
    // After the flood, the owner logs in from their own address at once, and a
    // join is answered.
    rt.block_on(async {
        let code = tokio::time::timeout(
            Duration::from_secs(10),
            login_from(&world.server, "127.0.0.1", OWNER, PASSWORD),
        )
        .await
        .expect("a login is answered");
        assert_eq!(code, "logged-in");
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            let (_ep, _c, mut send, mut recv) = join(&world.server, &admin).await;
            let rpc = Message::Rpc {
                id: 1,
                call: RpcCall::UserList,
            };
            write_message(&mut send, &rpc).await.unwrap();
            reply(&mut recv, 1).await
        })
        .await
        .expect("a join is answered");
        assert!(matches!(answer, RpcResult::Users(_)));
        // The attacker's address is still slowed down.
        assert_eq!(
            login_from(&world.server, "127.0.0.2", OWNER, "another guess").await,
            "login-throttled"
        );
    });
    callsync(&world.admin_desk, &["admin", "users"]).ok();
}

/// Sends one sync message for `doc` carrying `changes` (raw change chunks) and the
/// heads of `from`, on a joined connection; returns what the server answers
/// first about the document within a second (if anything).
async fn send_changes(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    doc: &CustomerId,
    from: &mut automerge::AutoCommit,
    changes: Vec<Vec<u8>>,
) -> Vec<Message> {
    let mut state = sync::State::new();
    let mut message = from
        .sync()
        .generate_sync_message(&mut state)
        .expect("a message");
    message.changes = changes.into();
    write_message(
        send,
        &Message::Sync {
            document_id: doc.clone(),
            data: message.encode(),
        },
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    while let Ok(Ok(Some(m))) =
        tokio::time::timeout(Duration::from_millis(1500), read_message(recv)).await
    {
        seen.push(m);
    }
    seen
}

/// A device's copy of `cus-1`, as Automerge, writing under `actor`.
fn fork(device: &Path, actor: ActorId) -> automerge::AutoCommit {
    let store = Store::open(&device.join("callsync.sqlite")).unwrap();
    let session = SavedSession::load(&store).unwrap().unwrap();
    let stored = store
        .load(&session.tenant, &CustomerId::new("cus-1").unwrap(), actor)
        .unwrap();
    stored.doc.automerge().clone()
}

/// Puts an entry in the events map under the document's current actor and
/// returns the change's raw bytes.
fn put_entry(doc: &mut automerge::AutoCommit, key: &str) -> Vec<u8> {
    let (_, events) = doc.get(ROOT, "events").unwrap().unwrap();
    doc.put(&events, key, "{}").unwrap();
    doc.commit();
    doc.get_last_local_change().unwrap().raw_bytes().to_vec()
}

#[test]
fn a_change_with_a_missing_dependency_under_the_desks_actor_is_dropped_and_the_desk_writes_on() {
    let world = World::start(&[]);
    let (desk, phone) = world.rep_devices();
    // The desk has written to the document before: its next change has seq 2+.
    let first = call_id(&callsync(&desk, &["desk", "request", "cus-1", "--number", NUMBER]).ok());
    callsync(&desk, &["desk", "cancel", &first]).ok();
    let desk_actor = {
        let mut store = Store::open(&desk.join("callsync.sqlite")).unwrap();
        callsync_replica::session::device_actor(&mut store).unwrap()
    };
    let doc_id = CustomerId::new("cus-1").unwrap();
    // The phone forks the document: a change under a throwaway actor (never sent),
    // then one under the desk's actor with the desk's next sequence number on top.
    let mut forked = fork(&desk, ActorId::random());
    put_entry(&mut forked, "x/throwaway");
    forked.set_actor(desk_actor);
    let orphan = put_entry(&mut forked, "x/orphan");
    let phone_session = saved_session(&phone);
    let rt = runtime();
    let answers = rt.block_on(async {
        let (_ep, _c, mut send, mut recv) = join(&world.server, &phone_session).await;
        send_changes(&mut send, &mut recv, &doc_id, &mut forked, vec![orphan]).await
    });
    assert!(
        !answers
            .iter()
            .any(|m| matches!(m, Message::Rejected { .. } | Message::Error(_))),
        "an honest device in the same position would lose its outbox: {answers:?}"
    );
    // The desk's next honest change is accepted (the server holds it), and the
    // server still loads the document after a restart.
    let call = call_id(&callsync(&desk, &["desk", "request", "cus-1", "--number", NUMBER]).ok());
    let on_server = |server: &ServerProcess| -> i64 {
        rusqlite::Connection::open(server.db())
            .unwrap()
            .query_row(
                "SELECT count(*) FROM calls WHERE call_id = ?1",
                [&call],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(
        on_server(&world.server),
        1,
        "the server took the desk's request"
    );
    let mut server = world.server;
    server.stop();
    server.restart();
    assert_eq!(on_server(&server), 1);
    let shown = callsync(&desk, &["desk", "cancel", &call]).ok();
    assert_eq!(shown["phase"], "cancelled", "{shown}");
}

#[test]
fn a_queued_change_under_the_servers_actor_cannot_break_the_document_for_the_servers_own_writes() {
    let world = World::start(&["--start-limit-secs", "2"]);
    let (desk, phone) = world.rep_devices();
    let server_actor = {
        let store = Store::open(&world.server.db()).unwrap();
        ActorId::from(store.setting("actor").unwrap().unwrap())
    };
    let call = call_id(&callsync(&desk, &["desk", "request", "cus-1", "--number", NUMBER]).ok());
    // An orphan under the server's actor and its next sequence number: the one
    // the server's own expiry of the call will use.
    let mut forked = fork(&desk, ActorId::random());
    put_entry(&mut forked, "x/throwaway");
    forked.set_actor(server_actor);
    let orphan = put_entry(&mut forked, "x/orphan");
    let phone_session = saved_session(&phone);
    let doc_id = CustomerId::new("cus-1").unwrap();
    let rt = runtime();
    rt.block_on(async {
        let (_ep, _c, mut send, mut recv) = join(&world.server, &phone_session).await;
        send_changes(&mut send, &mut recv, &doc_id, &mut forked, vec![orphan]).await
    });
    // The start limit passes: the server records the expiry, and the document
    // still loads, before and after a restart.
    std::thread::sleep(Duration::from_secs(3));
    let shown = callsync(&desk, &["desk", "show", &call]).ok();
    assert_eq!(shown["phase"], "expired", "{shown}");
    // More writes, until the server compacts the document to a fresh snapshot.
    let compacted = || {
        let conn = rusqlite::Connection::open(world.server.db()).unwrap();
        conn.query_row(
            "SELECT count(*) FROM chunks WHERE customer_id = 'cus-1'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
            == 0
    };
    // The compactor looks once a second, one document at a time: on a loaded
    // machine (the journeys run in parallel) that can take a while.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !compacted() && std::time::Instant::now() < deadline {
        let again =
            call_id(&callsync(&desk, &["desk", "request", "cus-1", "--number", NUMBER]).ok());
        callsync(&desk, &["desk", "cancel", &again]).ok();
    }
    assert!(compacted(), "the server compacted cus-1");
    let mut server = world.server;
    server.stop();
    server.restart();
    // The server loads the document again: a fresh desk opens it and a new
    // request on it is taken.
    let fresh = world.root.path().join("fresh-desk");
    callsync(
        &fresh,
        &[
            "desk",
            "login",
            "--server",
            &server.addr,
            "--fingerprint",
            &server.fingerprint,
            "--email",
            crate::network::REP,
        ],
    )
    .ok();
    callsync(&fresh, &["desk", "open", "cus-1"]).ok();
    let shown = callsync(&fresh, &["desk", "show", &call]).ok();
    assert_eq!(shown["phase"], "expired", "{shown}");
    let next = call_id(&callsync(&fresh, &["desk", "request", "cus-1", "--number", NUMBER]).ok());
    assert_eq!(
        callsync(&fresh, &["desk", "show", &next]).ok()["phase"],
        "awaiting-start"
    );
}

#[test]
fn one_unreadable_document_does_not_stop_the_server_for_anyone_else() {
    let world = World::start(&["--start-limit-secs", "4"]);
    let (desk, _phone) = world.rep_devices();
    // Another rep, with a desk and a phone, and a customer of their own.
    add_other_rep_with_phone(&world);
    let other_desk = world.dir("other-desk");
    world.login(&other_desk, "desk", OTHER_REP).ok();
    create_customer(&other_desk, "cus-9", "C社").ok();
    // cus-1 gets a call waiting for its start: once the limit passes, every
    // expiry pass (one per batch) must read it.
    callsync(&desk, &["desk", "request", "cus-1", "--number", NUMBER]).ok();
    let mut server = world.server;
    server.stop();
    {
        let conn = rusqlite::Connection::open(server.db()).unwrap();
        let waiting: i64 = conn
            .query_row(
                "SELECT count(*) FROM calls WHERE customer_id = 'cus-1' AND phase = 'awaiting-start'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(waiting, 1, "the call still waits when the document breaks");
        conn.execute(
            "UPDATE snapshots SET bytes = x'856f4a83deadbeef' WHERE customer_id = 'cus-1'",
            [],
        )
        .unwrap();
        conn.execute("DELETE FROM chunks WHERE customer_id = 'cus-1'", [])
            .unwrap();
    }
    server.restart();
    std::thread::sleep(Duration::from_secs(5));
    // Everyone else is served: a new customer, a call on another one.
    create_customer(&world.admin_desk, "cus-10", "D社").ok();
    let call = call_id(
        &callsync(
            &other_desk,
            &["desk", "request", "cus-9", "--number", NUMBER],
        )
        .ok(),
    );
    let shown = callsync(&other_desk, &["desk", "show", &call]).ok();
    assert_eq!(shown["phase"], "awaiting-start", "{shown}");
    // The broken document itself is answered `doc-unavailable`, both to a
    // subscription and to a sync, and the same connection is answered for a
    // readable one (so the answer is about the document, not the connection).
    let session = saved_session(&desk);
    let heard = runtime().block_on(async {
        let (_ep, _c, mut send, mut recv) = join(&server, &session).await;
        ask(
            &mut send,
            1,
            RpcCall::Subscribe {
                documents: vec![
                    CustomerId::new("cus-1").unwrap(),
                    CustomerId::new("cus-10").unwrap(),
                ],
            },
        )
        .await;
        let nothing = automerge::AutoCommit::new()
            .sync()
            .generate_sync_message(&mut sync::State::new())
            .unwrap()
            .encode();
        write_message(
            &mut send,
            &Message::Sync {
                document_id: CustomerId::new("cus-1").unwrap(),
                data: nothing,
            },
        )
        .await
        .unwrap();
        drain(&mut recv, Duration::from_secs(3)).await
    });
    assert!(
        heard.iter().any(|m| matches!(
            m,
            Message::Reply {
                id: 1,
                result: RpcResult::Subscribed(_)
            }
        )),
        "{heard:?}"
    );
    let unavailable = heard
        .iter()
        .filter(|m| matches!(m, Message::DocUnavailable { document_id } if document_id.as_str() == "cus-1"))
        .count();
    // For the join's catch-up, the subscription and the sync.
    assert_eq!(unavailable, 3, "{heard:?}");
    assert!(
        heard.iter().any(
            |m| matches!(m, Message::Sync { document_id, .. } if document_id.as_str() == "cus-10")
        ),
        "{heard:?}"
    );
}

/// Everything a joined connection hears within `wait`.
async fn drain(recv: &mut quinn::RecvStream, wait: Duration) -> Vec<Message> {
    let mut seen = Vec::new();
    let until = Instant::now() + wait;
    while let Ok(Ok(Some(m))) = tokio::time::timeout_at(until.into(), read_message(recv)).await {
        seen.push(m);
    }
    seen
}

fn syncs_of<'a>(messages: &'a [Message], doc: &str) -> Vec<&'a Message> {
    messages
        .iter()
        .filter(|m| matches!(m, Message::Sync { document_id, .. } if document_id.as_str() == doc))
        .collect()
}

#[test]
fn the_assignee_restriction_also_stops_pushes_to_subscriptions_made_before_it() {
    let world = World::start(&[]);
    let rep_desk = world.dir("rep-desk");
    world.login(&rep_desk, "desk", crate::network::REP).ok();
    world
        .login_as(
            &world.dir("owner-phone"),
            "phone",
            OWNER,
            Some("phone-owner"),
        )
        .ok();
    // The owner's customer, opened by the rep while everyone could see it.
    create_customer(&world.admin_desk, "cus-z", "Z社").ok();
    callsync(&rep_desk, &["desk", "open", "cus-z"]).ok();
    // A customer the rep creates for the owner (the rep's desk is subscribed).
    callsync(
        &rep_desk,
        &[
            "desk",
            "create",
            "--id",
            "cus-x",
            "--company",
            "X社",
            "--contact",
            "田中",
            "--owner",
            OWNER,
            "--number",
            &format!("代表:{NUMBER}"),
        ],
    )
    .ok();
    // The rep's own customer (the rep's desk is subscribed): the positive
    // control, pushed on the same connection in the same window.
    create_customer(&rep_desk, "cus-r", "R社").ok();
    callsync(&world.admin_desk, &["admin", "visibility", "on"]).ok();
    let session = saved_session(&rep_desk);
    let rt = runtime();
    let heard = rt.block_on(async {
        let (_ep, _c, _send, mut recv) = join(&world.server, &session).await;
        drain(&mut recv, Duration::from_millis(1500)).await;
        // The owner calls all three customers; the rep's desk is online and
        // subscribed to each.
        for customer in ["cus-z", "cus-x", "cus-r"] {
            let call = call_id(
                &callsync(
                    &world.admin_desk,
                    &["desk", "request", customer, "--number", NUMBER],
                )
                .ok(),
            );
            callsync(&world.admin_desk, &["desk", "cancel", &call]).ok();
        }
        drain(&mut recv, Duration::from_secs(2)).await
    });
    for doc in ["cus-z", "cus-x"] {
        assert!(
            syncs_of(&heard, doc).is_empty(),
            "{doc} was pushed to a rep who may not see it: {heard:?}"
        );
    }
    assert!(
        !syncs_of(&heard, "cus-r").is_empty(),
        "the rep's own customer was not pushed on the same connection: {heard:?}"
    );
    // The rep's own customers still reach the rep's desk.
    let listed = callsync(&rep_desk, &["desk", "customers"]).ok();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["cus-r"], "{listed}");
}

/// An Automerge chunk header around `data`: magic bytes, a checksum, the type and
/// the length.
fn chunk(kind: u8, data: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, kind];
    let mut n = data.len() as u64;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            bytes.push(byte);
            break;
        }
        bytes.push(byte | 0x80);
    }
    bytes.extend_from_slice(data);
    bytes
}

#[test]
fn a_decompression_bomb_and_a_poisoned_bloom_filter_are_refused_before_automerge_sees_them() {
    use std::io::Write as _;
    let world = World::start(&[]);
    let (desk, _phone) = world.rep_devices();
    let session = saved_session(&desk);
    let doc_id = CustomerId::new("cus-1").unwrap();
    let before = stored_heads(&world.server);
    // 16 MiB of zeros, deflated to a hundredth, in a compressed change chunk.
    let mut deflate = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    deflate.write_all(&vec![0u8; 16 << 20]).unwrap();
    let bomb = chunk(2, &deflate.finish().unwrap());
    assert!(bomb.len() < 1 << 20, "{}", bomb.len());
    let mut forked = fork(&desk, ActorId::random());
    let rt = runtime();
    let answers = rt.block_on(async {
        let (_ep, _c, mut send, mut recv) = join(&world.server, &session).await;
        drain(&mut recv, Duration::from_millis(500)).await;
        send_changes(&mut send, &mut recv, &doc_id, &mut forked, vec![bomb]).await
    });
    let refused = answers
        .iter()
        .find_map(|m| match m {
            Message::Rejected { error, .. } => Some(error.code.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no rejection: {answers:?}"));
    assert_eq!(refused, "compressed-change-refused");

    // A bloom filter that claims entries but has no bits: Automerge divides by its
    // size while answering.
    let poisoned = {
        let mut bytes = vec![5, 0, 7];
        bytes.extend([0u8; 8]);
        automerge::sync::BloomFilter::try_from(bytes.as_slice()).unwrap()
    };
    let answers = rt.block_on(async {
        let (_ep, _c, mut send, mut recv) = join(&world.server, &session).await;
        drain(&mut recv, Duration::from_millis(500)).await;
        let mut state = sync::State::new();
        let mut message = forked.sync().generate_sync_message(&mut state).unwrap();
        message.have = vec![automerge::sync::Have {
            last_sync: Vec::new(),
            bloom: poisoned,
        }];
        write_message(
            &mut send,
            &Message::Sync {
                document_id: doc_id.clone(),
                data: message.encode(),
            },
        )
        .await
        .unwrap();
        drain(&mut recv, Duration::from_millis(1500)).await
    });
    assert!(
        answers.iter().any(|m| matches!(m, Message::Rejected { error, .. } if error.code == "malformed-sync-summary")),
        "{answers:?}"
    );
    let after = stored_heads(&world.server);
    assert_eq!(after, before, "nothing stored");
    // The server serves on.
    let call = call_id(&callsync(&desk, &["desk", "request", "cus-1", "--number", NUMBER]).ok());
    assert_eq!(
        callsync(&desk, &["desk", "show", &call]).ok()["phase"],
        "awaiting-start"
    );
}

/// The heads the server has stored for `cus-1`.
fn stored_heads(server: &ServerProcess) -> Vec<u8> {
    rusqlite::Connection::open(server.db())
        .unwrap()
        .query_row(
            "SELECT heads FROM documents WHERE customer_id = 'cus-1'",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

/// `change` re-encoded after `edit` (a new hash; the checksum is valid).
fn rewritten(change: &[u8], edit: impl FnOnce(&mut automerge::ExpandedChange)) -> Vec<u8> {
    let mut expanded = automerge::Change::try_from(change).unwrap().decode();
    expanded.hash = None;
    edit(&mut expanded);
    automerge::Change::from(expanded).raw_bytes().to_vec()
}

#[test]
fn changes_automerge_would_panic_on_are_refused_and_the_server_serves_on() {
    let world = World::start(&[]);
    let (desk, _phone) = world.rep_devices();
    let session = saved_session(&desk);
    let desk_actor = {
        let mut store = Store::open(&desk.join("callsync.sqlite")).unwrap();
        callsync_replica::session::device_actor(&mut store).unwrap()
    };
    // The desk has written to the document: its actor is known there.
    let first = call_id(&callsync(&desk, &["desk", "request", "cus-1", "--number", NUMBER]).ok());
    callsync(&desk, &["desk", "cancel", &first]).ok();
    let doc_id = CustomerId::new("cus-1").unwrap();
    // Each is a valid change chunk (checksum and columns) whose dependencies the
    // server holds; Automerge 0.12 asserts on the first two while applying them
    // (`change_graph.rs`: the sequence number must be the actor's next; `batch.rs`:
    // every actor a change names must be known), and on the third when a change
    // with an author footer is not its actor's first.
    let mut forked = fork(&desk, desk_actor);
    let honest = put_entry(&mut forked, "x/probe");
    let crafted = [
        (
            "a sequence number five past the desk's next",
            rewritten(&honest, |c| c.seq += 5),
            "malformed-sync",
        ),
        (
            "an actor the document has never seen, at sequence number 2",
            rewritten(&honest, |c| {
                c.actor_id = ActorId::random();
                c.seq = 2;
            }),
            "malformed-sync",
        ),
        (
            "extra bytes after the operations (an author footer)",
            rewritten(&honest, |c| c.extra_bytes = vec![0; 40]),
            "malformed-chunk",
        ),
    ];
    let rt = runtime();
    for (what, change, code) in crafted {
        let before = stored_heads(&world.server);
        let answers = rt.block_on(async {
            let (_ep, _c, mut send, mut recv) = join(&world.server, &session).await;
            drain(&mut recv, Duration::from_millis(500)).await;
            send_changes(&mut send, &mut recv, &doc_id, &mut forked, vec![change]).await
        });
        let refused = answers.iter().find_map(|m| match m {
            Message::Rejected { document_id, error } if document_id == &doc_id => {
                Some(error.code.as_str())
            }
            _ => None,
        });
        assert_eq!(refused, Some(code), "{what}: {answers:?}");
        assert_eq!(
            stored_heads(&world.server),
            before,
            "{what}: nothing stored"
        );
        // The server serves on: the desk writes and reads the same document.
        let call =
            call_id(&callsync(&desk, &["desk", "request", "cus-1", "--number", NUMBER]).ok());
        let cancelled = callsync(&desk, &["desk", "cancel", &call]).ok();
        assert_eq!(cancelled["phase"], "cancelled", "{what}: {cancelled}");
        assert_ne!(
            stored_heads(&world.server),
            before,
            "{what}: the desk's calls were stored"
        );
    }
}

/// Sends one rpc.
pub(crate) async fn ask(send: &mut quinn::SendStream, id: u64, call: RpcCall) {
    write_message(send, &Message::Rpc { id, call })
        .await
        .unwrap();
}

/// [`join`], on a connection whose receive windows are a few kilobytes, so a
/// device that does not read holds the server's writer back at once.
async fn join_with_small_window(
    server: &ServerProcess,
    session: &SavedSession,
) -> (
    quinn::Endpoint,
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
) {
    let mut transport = quinn::TransportConfig::default();
    transport
        .stream_receive_window(4_096u32.into())
        .receive_window(8_192u32.into());
    let (ep, conn, send, recv) = connect_with(server, "127.0.0.1", Some(transport)).await;
    send_join(ep, conn, send, recv, session).await
}

/// Sends up to `n` requests made by `call`, ids from `first`; stops at the first
/// write the server no longer takes (it cut the connection off).
async fn flood(send: &mut quinn::SendStream, first: u64, n: u64, call: fn() -> RpcCall) {
    for id in first..first + n {
        if write_message(send, &Message::Rpc { id, call: call() })
            .await
            .is_err()
        {
            return;
        }
    }
}

fn one_customer() -> RpcCall {
    RpcCall::CustomerList {
        after: None,
        limit: Some(1),
        query: None,
    }
}

/// Joins with a small receive window and sends `call`s within the rate without
/// ever reading; returns the reason the server closed the connection with.
async fn read_nothing_until_cut_off(
    server: &ServerProcess,
    session: &SavedSession,
    call: fn() -> RpcCall,
) -> String {
    let (ep, conn, mut send, _recv) = join_with_small_window(server, session).await;
    // Well inside the rate (the server may read late on a loaded machine).
    let burst = callsync_server::RATE_BURST as u64;
    let per_sec = callsync_server::RATE_PER_SEC as u64;
    flood(&mut send, 1, burst * 3 / 4, call).await;
    let mut id = burst;
    for _ in 0..16 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        flood(&mut send, id, per_sec * 3 / 5, call).await;
        id += per_sec;
        if conn.close_reason().is_some() {
            break;
        }
    }
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
    drop(ep);
    match closed {
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => {
            String::from_utf8_lossy(&close.reason).into_owned()
        }
        other => panic!("the connection was not dropped: {other:?}"),
    }
}

#[test]
fn a_flood_of_messages_is_cut_off_and_a_connection_that_stops_reading_is_dropped() {
    let world = World::start(&[]);
    let (desk, _phone) = world.rep_devices();
    let session = saved_session(&desk);
    let rt = runtime();
    // Past the burst at once: cut off with `rate-limited`.
    let burst = callsync_server::RATE_BURST as u64;
    let code = rt.block_on(async {
        let (_ep, _c, mut send, mut recv) = join(&world.server, &session).await;
        flood(&mut send, 1, 2 * burst, one_customer).await;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), read_message(&mut recv)).await {
                Ok(Ok(Some(Message::Error(body)))) => break body.code,
                Ok(Ok(Some(_))) => {}
                other => panic!("no refusal: {other:?}"),
            }
        }
    });
    assert_eq!(code, "rate-limited");
    // Within the rate, but never reading: once the replies fill the connection's
    // queue the server drops it (and says why in the close), rather than keeping
    // a connection whose messages it no longer handles. Replies the hub sends,
    // and replies the connection sends itself (account requests).
    let close = rt.block_on(read_nothing_until_cut_off(
        &world.server,
        &session,
        one_customer,
    ));
    assert!(close.contains("too-slow"), "{close}");
    let admin = saved_session(&world.admin_desk);
    let close = rt.block_on(read_nothing_until_cut_off(&world.server, &admin, || {
        RpcCall::UserList
    }));
    assert!(close.contains("too-slow"), "{close}");
    // The server serves on.
    let call = call_id(&callsync(&desk, &["desk", "request", "cus-1", "--number", NUMBER]).ok());
    assert_eq!(
        callsync(&desk, &["desk", "show", &call]).ok()["phase"],
        "awaiting-start"
    );
}

/// Adds [`OTHER_REP`], a `user` holding the calling contract, and logs in their
/// phone `phone-other`.
fn add_other_rep_with_phone(world: &World) {
    callsync(
        &world.admin_desk,
        &[
            "admin",
            "add-user",
            OTHER_REP,
            "--role",
            "user",
            "--contract",
        ],
    )
    .ok();
    world
        .login_as(
            &world.dir("other-phone"),
            "phone",
            OTHER_REP,
            Some("phone-other"),
        )
        .ok();
}

/// The permission bits of a path.
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn subscriptions_customer_lists_and_customer_creation_are_bounded() {
    let root = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        &root.path().join("server"),
        "127.0.0.1:0",
        &[],
        &["--init-owner", OWNER, "--max-customers-per-tenant", "3"],
    );
    let desk = root.path().join("desk");
    callsync(
        &desk,
        &[
            "desk",
            "login",
            "--server",
            &server.addr,
            "--fingerprint",
            &server.fingerprint,
            "--email",
            OWNER,
        ],
    )
    .ok();
    for id in ["cus-1", "cus-2", "cus-3"] {
        create_customer(&desk, id, "A社").ok();
    }
    let refused = create_customer(&desk, "cus-4", "A社").refused("customer-limit");
    assert!(refused.contains('3'), "{refused}");
    let listed = callsync(&desk, &["desk", "customers"]).ok();
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");
    let session = saved_session(&desk);
    let rt = runtime();
    rt.block_on(async {
        let (_ep, _c, mut send, mut recv) = join(&server, &session).await;
        let ids = |result: RpcResult| match result {
            RpcResult::Customers(rows) => rows
                .into_iter()
                .map(|r| r.id.as_str().to_owned())
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        // Pages of two, in id order.
        ask(
            &mut send,
            1,
            RpcCall::CustomerList {
                after: None,
                limit: Some(2),
                query: None,
            },
        )
        .await;
        assert_eq!(ids(reply(&mut recv, 1).await), ["cus-1", "cus-2"]);
        ask(
            &mut send,
            2,
            RpcCall::CustomerList {
                after: Some(CustomerId::new("cus-2").unwrap()),
                limit: Some(2),
                query: None,
            },
        )
        .await;
        assert_eq!(ids(reply(&mut recv, 2).await), ["cus-3"]);
        // An older client's list without a limit: everything that fits a frame.
        ask(
            &mut send,
            3,
            RpcCall::CustomerList {
                after: None,
                limit: None,
                query: None,
            },
        )
        .await;
        assert_eq!(ids(reply(&mut recv, 3).await).len(), 3);
        // One subscribe for more documents than allowed.
        let documents = (0..=wire::MAX_SUBSCRIBE)
            .map(|i| CustomerId::new(format!("cus-{i}")).unwrap())
            .collect();
        ask(&mut send, 4, RpcCall::Subscribe { documents }).await;
        match reply(&mut recv, 4).await {
            RpcResult::Refused(body) => assert_eq!(body.code, "too-many-documents"),
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn the_servers_identity_other_tenants_emails_data_files_and_sessions_are_guarded() {
    let world = World::start(&[]);
    let server_data = world.root.path().join("server");
    // The server's device id and actor cannot be bound by a device.
    let server_actor = {
        let store = Store::open(&world.server.db()).unwrap();
        ActorId::from(store.setting("actor").unwrap().unwrap()).to_hex_string()
    };
    let rt = runtime();
    rt.block_on(async {
        for (device, actor) in [
            ("server", "ab".repeat(16)),
            ("desk-x", server_actor.clone()),
        ] {
            let (_ep, _c, mut send, mut recv) = connect_from(&world.server, "127.0.0.1").await;
            let login = Message::Login {
                supported_protocol_versions: vec![wire::PROTOCOL_VERSION.to_owned()],
                email: OWNER.to_owned(),
                password: PASSWORD.to_owned(),
                device: DeviceRegistration {
                    id: DeviceId::new(device).unwrap(),
                    kind: DeviceKind::Desk,
                    actor,
                },
            };
            write_message(&mut send, &login).await.unwrap();
            match read_message(&mut recv).await.unwrap() {
                Some(Message::Error(body)) => {
                    assert_eq!(body.code, "bad-request", "{device}");
                    assert!(body.message.contains("reserved"), "{body:?}");
                }
                other => panic!("{device}: {other:?}"),
            }
        }
    });
    // An email of another tenant: refused without saying where it is used.
    callsync(
        &server_data,
        &[
            "--tenant",
            "beta",
            "add-tenant",
            "--owner",
            "owner@beta.example",
        ],
    )
    .ok();
    let refused = callsync(
        &world.admin_desk,
        &["admin", "add-user", "owner@beta.example", "--role", "user"],
    );
    let message = refused.refused("email-unavailable");
    assert!(!message.contains("beta"), "{message}");
    assert!(!refused.stdout.contains("beta"), "{}", refused.stdout);
    // Private files: the data directory, the database, the key, the plugin cache.
    assert_eq!(mode(&server_data), 0o700);
    assert_eq!(mode(&world.server.db()), 0o600);
    assert_eq!(mode(&server_data.join("server-key.der")), 0o600);
    assert_eq!(mode(&server_data.join("plugin-cache")), 0o700);
    assert_eq!(mode(&world.admin_desk), 0o700);
    assert_eq!(mode(&world.admin_desk.join("callsync.sqlite")), 0o600);
    // A key file loosened by hand is tightened at the next start.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(
        server_data.join("server-key.der"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let mut server = world.server;
    server.stop();
    server.restart();
    assert_eq!(mode(&server_data.join("server-key.der")), 0o600);
    // Sessions: an expired one is purged at the next login, and a member holds at
    // most MAX_SESSIONS_PER_MEMBER.
    let db = rusqlite::Connection::open(server.db()).unwrap();
    db.execute(
        "UPDATE sessions SET expires_at = 0 WHERE email = ?1",
        [OWNER],
    )
    .unwrap();
    let sessions = |email: &str| -> i64 {
        db.query_row(
            "SELECT count(*) FROM sessions WHERE email = ?1",
            [email],
            |r| r.get(0),
        )
        .unwrap()
    };
    let expired_before: i64 = db
        .query_row(
            "SELECT count(*) FROM sessions WHERE expires_at = 0",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(expired_before > 0);
    rt.block_on(async {
        for _ in 0..callsync_store::MAX_SESSIONS_PER_MEMBER + 4 {
            assert_eq!(
                login_from(&server, "127.0.0.1", OWNER, PASSWORD).await,
                "logged-in"
            );
        }
    });
    let expired_after: i64 = db
        .query_row(
            "SELECT count(*) FROM sessions WHERE expires_at = 0",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(expired_after, 0);
    assert_eq!(
        sessions(OWNER),
        callsync_store::MAX_SESSIONS_PER_MEMBER as i64
    );
}

#[test]
fn a_desk_command_whose_change_the_server_rejects_fails_with_the_servers_code() {
    let world = World::start(&[]);
    let (desk, _phone) = world.rep_devices();
    add_other_rep_with_phone(&world);
    // A request for a phone that is not the rep's: admission refuses it.
    let refused = callsync(
        &desk,
        &[
            "desk",
            "request",
            "cus-1",
            "--number",
            NUMBER,
            "--origin",
            "phone-other",
        ],
    );
    refused.refused("not-your-phone");
    let calls: i64 = rusqlite::Connection::open(world.server.db())
        .unwrap()
        .query_row("SELECT count(*) FROM calls", [], |r| r.get(0))
        .unwrap();
    assert_eq!(calls, 0, "nothing stored");
    // Nor kept on the desk: it forgot its copy and fetched the server's again, so
    // it holds the customer without the refused request, and can request again.
    let local: i64 = rusqlite::Connection::open(desk.join("callsync.sqlite"))
        .unwrap()
        .query_row("SELECT count(*) FROM calls", [], |r| r.get(0))
        .unwrap();
    assert_eq!(local, 0, "the refused request stayed on the desk");
    let call = call_id(&callsync(&desk, &["desk", "request", "cus-1", "--number", NUMBER]).ok());
    assert_eq!(
        callsync(&desk, &["desk", "show", &call]).ok()["phase"],
        "awaiting-start"
    );
}
