//! Refusals at the server: bad credentials, the calling contract, roles, tenants,
//! forged changes, and peers that send garbage or nothing. Each gets a clear,
//! typed error; nothing is stored; the server keeps serving everyone else.

use std::path::Path;
use std::time::Duration;

use automerge::sync::{self, SyncDoc};
use callsync_core::wire::{self, Message};
use callsync_core::{
    CallEvent, CallId, DeviceKind, EventId, EventKind, ResultCatalog, RuleContext, Stamp,
};
use callsync_net::endpoint;
use callsync_net::framing::{read_message, write_message};
use callsync_net::tls::{Trust, client_config};
use callsync_replica::SavedSession;
use callsync_store::Store;

use crate::network::{
    NUMBER, OWNER, PASSWORD, PhoneRun, REP, ServerProcess, World, call_id, callsync, callsync_with,
    create_customer,
};
use crate::support::runtime;

/// Rows in a server table.
fn count(server: &ServerProcess, table: &str) -> i64 {
    let conn = rusqlite::Connection::open(server.db()).unwrap();
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

/// Everything the server holds of documents: any change shows.
fn documents(server: &ServerProcess) -> Vec<(String, Vec<u8>, i64)> {
    let conn = rusqlite::Connection::open(server.db()).unwrap();
    let mut stmt = conn
        .prepare("SELECT customer_id, heads, change_seq FROM documents ORDER BY customer_id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The server still serves an honest desk.
fn still_serving(desk: &Path) {
    let customers = callsync(desk, &["desk", "customers"]).ok();
    assert!(
        customers.as_array().is_some_and(|c| !c.is_empty()),
        "{customers}"
    );
}

#[test]
fn a_wrong_password_and_an_unknown_user_are_refused_alike_and_store_nothing() {
    let world = World::start(&[]);
    let sessions = count(&world.server, "sessions");
    let devices = count(&world.server, "devices");
    let dir = world.dir("intruder");
    let args = |email: &'static str| {
        vec![
            "desk".to_owned(),
            "login".into(),
            "--server".into(),
            world.server.addr.clone(),
            "--fingerprint".into(),
            world.server.fingerprint.clone(),
            "--email".into(),
            email.into(),
        ]
    };
    let wrong: Vec<String> = args(REP);
    let wrong: Vec<&str> = wrong.iter().map(String::as_str).collect();
    let refused = callsync_with(&dir, &wrong, "not the password");
    let message = refused.refused("invalid-credentials");
    let unknown: Vec<String> = args("nobody@acme.example");
    let unknown: Vec<&str> = unknown.iter().map(String::as_str).collect();
    let refused_too = callsync_with(&dir, &unknown, PASSWORD);
    assert_eq!(
        refused_too.refused("invalid-credentials"),
        message,
        "no account probing"
    );
    assert_eq!(count(&world.server, "sessions"), sessions);
    assert_eq!(count(&world.server, "devices"), devices);
    callsync(&dir, &["desk", "customers"]).refused("not-logged-in");
}

#[test]
fn a_user_without_the_calling_contract_gets_the_exact_message_and_nothing_syncs() {
    let world = World::start(&[]);
    callsync(
        &world.admin_desk,
        &["admin", "add-user", "temp@acme.example"],
    )
    .ok();
    let sessions = count(&world.server, "sessions");
    let phone = world.dir("temp-phone");
    let refused = world.login(&phone, "phone", "temp@acme.example");
    let message = refused.refused("contract-required");
    assert_eq!(message, "Authentication is required to access this data.");
    assert_eq!(
        refused.json()["error"]["message_ja"],
        "このデータへのアクセスには認証が必要です"
    );
    assert_eq!(count(&world.server, "sessions"), sessions);
    // With a Japanese locale, the refusal reads in Japanese.
    let ja = crate::network::callsync_env(
        &phone,
        &[
            "phone",
            "login",
            "--server",
            &world.server.addr,
            "--fingerprint",
            &world.server.fingerprint,
            "--email",
            "temp@acme.example",
        ],
        &[("LANG", "ja_JP.UTF-8")],
    );
    assert_eq!(ja.code, 1);
    assert_eq!(
        ja.stderr.trim(),
        "エラー: このデータへのアクセスには認証が必要です"
    );
    callsync(&phone, &["phone", "requests"]).refused("not-logged-in");

    // Granted, the same user logs in.
    callsync(&world.admin_desk, &["admin", "grant", "temp@acme.example"]).ok();
    world.login(&phone, "phone", "temp@acme.example").ok();
}

#[test]
fn revoking_the_contract_ends_a_running_phone_at_once() {
    let world = World::start(&[]);
    let (_desk, phone) = world.rep_devices();
    let mut run = PhoneRun::start(&phone);
    run.wait_for(|v| v["event"] == "caught-up");
    callsync(&world.admin_desk, &["admin", "revoke", REP]).ok();
    let status = run.wait_exit();
    assert_eq!(status.code(), Some(1), "the run stops for good");
    world
        .login(&phone, "phone", REP)
        .refused("contract-required");
}

#[test]
fn a_member_cannot_use_admin_commands() {
    let world = World::start(&[]);
    let (desk, _phone) = world.rep_devices();
    let members = count(&world.server, "members");
    callsync(&desk, &["admin", "users"]).refused("role-required");
    callsync(
        &desk,
        &["admin", "add-user", "x@acme.example", "--contract"],
    )
    .refused("role-required");
    callsync(&desk, &["admin", "grant", REP]).refused("role-required");
    callsync(&desk, &["admin", "reset-password", OWNER]).refused("role-required");
    assert_eq!(count(&world.server, "members"), members);
    // An admin may not make an owner; only an owner may.
    callsync(
        &world.admin_desk,
        &[
            "admin",
            "add-user",
            "adm@acme.example",
            "--role",
            "admin",
            "--contract",
        ],
    )
    .ok();
    let adm = world.dir("adm-desk");
    world.login(&adm, "desk", "adm@acme.example").ok();
    callsync(
        &adm,
        &["admin", "add-user", "boss@acme.example", "--role", "owner"],
    )
    .refused("role-required");
    callsync(&adm, &["admin", "reset-password", OWNER]).refused("role-required");
}

#[test]
fn another_tenants_customers_are_invisible_and_untouchable() {
    let world = World::start(&[]);
    let (rep_desk, _phone) = world.rep_devices();
    let add = callsync(
        &world.dir("server"),
        &[
            "--tenant",
            "beta",
            "add-tenant",
            "--owner",
            "owner@beta.example",
        ],
    );
    add.ok();
    let before = documents(&world.server);
    let beta = world.dir("beta-desk");
    world.login(&beta, "desk", "owner@beta.example").ok();
    let listed = callsync(&beta, &["desk", "customers"]).ok();
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
    let opened = callsync(&beta, &["desk", "open", "cus-1"]).ok();
    assert_eq!(opened.as_array().map(Vec::len), Some(0), "{opened}");
    callsync(&beta, &["desk", "request", "cus-1", "--number", NUMBER]).refused("unknown-customer");
    assert_eq!(documents(&world.server), before);
    still_serving(&rep_desk);
}

#[test]
fn the_assignee_restriction_hides_other_reps_customers_from_users() {
    let world = World::start(&[]);
    let (rep_desk, _phone) = world.rep_devices();
    callsync(
        &world.admin_desk,
        &["admin", "add-user", "rep2@acme.example", "--contract"],
    )
    .ok();
    let rep2 = world.dir("rep2-desk");
    world.login(&rep2, "desk", "rep2@acme.example").ok();
    assert_eq!(
        callsync(&rep2, &["desk", "customers"])
            .ok()
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    callsync(&world.admin_desk, &["admin", "visibility", "on"]).ok();
    assert_eq!(
        callsync(&rep2, &["desk", "customers"])
            .ok()
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    assert_eq!(
        callsync(&rep2, &["desk", "open", "cus-1"])
            .ok()
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    // The assigned rep and the admin still see it.
    assert_eq!(
        callsync(&rep_desk, &["desk", "customers"])
            .ok()
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(
        callsync(&world.admin_desk, &["desk", "customers"])
            .ok()
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

#[test]
fn an_expired_session_is_refused() {
    let world = World::start(&[]);
    drop(world);
    let root = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        &root.path().join("server"),
        "127.0.0.1:0",
        &[],
        &["--init-owner", OWNER, "--session-hours", "0"],
    );
    let desk = root.path().join("desk");
    let login = callsync(
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
    );
    login.ok();
    callsync(&desk, &["desk", "customers"]).refused("session-expired");
}

/// A `join` for a saved session, offering one protocol version.
fn join_message(session: &SavedSession, version: &str) -> Message {
    Message::Join {
        sender_id: session.device.clone(),
        supported_protocol_versions: vec![version.to_owned()],
        token: session.token.clone(),
        cursor: None,
    }
}

async fn raw_connect(
    server: &ServerProcess,
) -> (
    quinn::Endpoint,
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
) {
    let addr = server.addr.parse().unwrap();
    let config = client_config(&Trust::Fingerprint(server.fingerprint.clone())).unwrap();
    let ep = endpoint::client_endpoint(addr, config).unwrap();
    let (conn, send, recv) = endpoint::connect(&ep, addr, "localhost").await.unwrap();
    (ep, conn, send, recv)
}

/// The error message a misbehaving peer gets before being cut off.
async fn error_code(recv: &mut quinn::RecvStream) -> String {
    match tokio::time::timeout(Duration::from_secs(10), read_message(recv)).await {
        Ok(Ok(Some(Message::Error(body)))) => body.code,
        other => panic!("expected an error message, got {other:?}"),
    }
}

#[test]
fn garbage_oversized_frames_forged_tokens_and_silent_peers_are_cut_off() {
    let root = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        &root.path().join("server"),
        "127.0.0.1:0",
        &[],
        &["--init-owner", OWNER, "--handshake-timeout-ms", "500"],
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
    create_customer(&desk, "cus-1", "A社").ok();
    let sessions = count(&server, "sessions");
    let rt = runtime();
    rt.block_on(async {
        // A length prefix far over the limit.
        let (_ep, _c, mut send, mut recv) = raw_connect(&server).await;
        send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert_eq!(error_code(&mut recv).await, "frame-too-large");

        // Bytes that are not a message.
        let (_ep, _c, mut send, mut recv) = raw_connect(&server).await;
        send.write_all(&[0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o'])
            .await
            .unwrap();
        assert_eq!(error_code(&mut recv).await, "malformed-message");

        // A forged token.
        let (_ep, _c, mut send, mut recv) = raw_connect(&server).await;
        let join = Message::Join {
            sender_id: callsync_core::DeviceId::new("desk-forged").unwrap(),
            supported_protocol_versions: vec![wire::PROTOCOL_VERSION.to_owned()],
            token: "00".repeat(32),
            cursor: None,
        };
        write_message(&mut send, &join).await.unwrap();
        assert_eq!(error_code(&mut recv).await, "invalid-session");

        // Sync before join.
        let (_ep, _c, mut send, mut recv) = raw_connect(&server).await;
        let early = Message::Sync {
            document_id: callsync_core::CustomerId::new("cus-1").unwrap(),
            data: vec![0x42],
        };
        write_message(&mut send, &early).await.unwrap();
        assert_eq!(error_code(&mut recv).await, "join-required");

        // A stream opened and never written: cut off after the handshake time.
        let (_ep, conn, _send, mut recv) = raw_connect(&server).await;
        let started = std::time::Instant::now();
        let _ = tokio::time::timeout(Duration::from_secs(10), read_message(&mut recv)).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(conn.close_reason().is_some());

        // A connection that never opens a stream at all.
        let addr = server.addr.parse().unwrap();
        let config = client_config(&Trust::Fingerprint(server.fingerprint.clone())).unwrap();
        let ep = endpoint::client_endpoint(addr, config).unwrap();
        let idle = ep.connect(addr, "localhost").unwrap().await.unwrap();
        let reason = tokio::time::timeout(Duration::from_secs(5), idle.closed()).await;
        assert!(reason.is_ok(), "an idle connection is closed");
    });
    assert_eq!(count(&server, "sessions"), sessions);
    still_serving(&desk);
}

#[test]
fn a_desk_writing_under_the_phones_actor_is_rejected_and_nothing_is_stored() {
    let world = World::start(&[]);
    let (desk, phone) = world.rep_devices();
    let mut run = PhoneRun::start(&phone);
    let call = call_id(&callsync(&desk, &["desk", "request", "cus-1", "--number", NUMBER]).ok());
    run.wait_for(|v| v["event"] == "call-requested");
    run.stop();
    let before = documents(&world.server);

    // A modified desk: it writes the phone's `started`, under the phone's actor.
    let desk_store = Store::open(&desk.join("callsync.sqlite")).unwrap();
    let session = SavedSession::load(&desk_store).unwrap().unwrap();
    let mut phone_store = Store::open(&phone.join("callsync.sqlite")).unwrap();
    let phone_actor = callsync_replica::session::device_actor(&mut phone_store).unwrap();
    let phone_session = SavedSession::load(&phone_store).unwrap().unwrap();
    let mut forged = desk_store
        .load(
            &session.tenant,
            &callsync_core::CustomerId::new("cus-1").unwrap(),
            phone_actor,
        )
        .unwrap();
    let started = CallEvent {
        id: EventId::new("forged-start").unwrap(),
        call: CallId::new(&call).unwrap(),
        stamp: Stamp {
            at: callsync_core::Timestamp::from_millis(chrono_now()),
            device: phone_session.device.clone(),
            device_kind: DeviceKind::Phone,
            user: phone_session.user.clone(),
            device_at: None,
        },
        kind: EventKind::Started,
    };
    let catalog = ResultCatalog::standard();
    forged
        .doc
        .record(started, &RuleContext::new(&catalog))
        .unwrap();

    let rt = runtime();
    let rejected = rt.block_on(async {
        let (_ep, _c, mut send, mut recv) = raw_connect(&world.server).await;
        let join = join_message(&session, wire::PROTOCOL_VERSION);
        write_message(&mut send, &join).await.unwrap();
        let mut state = sync::State::new();
        let doc_id = callsync_core::CustomerId::new("cus-1").unwrap();
        let am = forged.doc.automerge_mut();
        if let Some(m) = am.sync().generate_sync_message(&mut state) {
            write_message(
                &mut send,
                &Message::Sync {
                    document_id: doc_id.clone(),
                    data: m.encode(),
                },
            )
            .await
            .unwrap();
        }
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), read_message(&mut recv))
                .await
                .expect("an answer")
                .unwrap()
                .expect("a message");
            match message {
                Message::Rejected { error, .. } => return error,
                Message::Sync { document_id, data } if document_id == doc_id => {
                    let m = sync::Message::decode(&data).unwrap();
                    am.sync().receive_sync_message(&mut state, m).unwrap();
                    if let Some(m) = am.sync().generate_sync_message(&mut state) {
                        write_message(
                            &mut send,
                            &Message::Sync {
                                document_id: doc_id.clone(),
                                data: m.encode(),
                            },
                        )
                        .await
                        .unwrap();
                    }
                }
                _ => {}
            }
        }
    });
    assert_eq!(rejected.code, "foreign-actor", "{rejected:?}");
    assert_eq!(documents(&world.server), before, "nothing stored");
    // Nothing forwarded either: the phone, syncing again, still waits to start.
    let mut run = PhoneRun::start(&phone);
    run.wait_for(|v| v["event"] == "caught-up");
    run.stop();
    assert_eq!(
        callsync(&phone, &["phone", "show", &call]).ok()["phase"],
        "awaiting-start"
    );
    still_serving(&desk);
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn desk_refusals_are_typed_and_change_nothing_on_the_server() {
    let world = World::start(&[]);
    let desk = world.dir("rep-desk");
    world.login(&desk, "desk", REP).ok();
    // No phone logged in yet: a request without --origin has nowhere to go.
    create_customer(&desk, "cus-1", "A社").ok();
    let before = documents(&world.server);
    callsync(&desk, &["desk", "request", "cus-1", "--number", NUMBER]).refused("no-phone");
    // The same customer id twice.
    create_customer(&desk, "cus-1", "B社").refused("customer-exists");
    // Customers of a synced desk are made on the server, not locally.
    callsync(
        &desk,
        &[
            "customer",
            "create",
            "--id",
            "cus-2",
            "--company",
            "C社",
            "--contact",
            "C",
            "--number",
            &format!("代表:{NUMBER}"),
        ],
    )
    .refused("server-owns-customers");
    assert_eq!(documents(&world.server), before);
    // A device id registered to another member cannot be taken over.
    let other = world.dir("other-phone");
    world
        .login_as(&world.dir("rep-phone"), "phone", REP, Some("phone-x"))
        .ok();
    world
        .login_as(&other, "phone", OWNER, Some("phone-x"))
        .refused("device-taken");
}

#[test]
fn an_unsupported_version_and_a_second_login_on_a_session_are_refused() {
    let world = World::start(&[]);
    let (desk, _phone) = world.rep_devices();
    let store = Store::open(&desk.join("callsync.sqlite")).unwrap();
    let session = SavedSession::load(&store).unwrap().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let (_ep, _c, mut send, mut recv) = raw_connect(&world.server).await;
        let join = join_message(&session, "0");
        write_message(&mut send, &join).await.unwrap();
        assert_eq!(error_code(&mut recv).await, "unsupported-protocol");

        let (_ep, _c, mut send, mut recv) = raw_connect(&world.server).await;
        let join = join_message(&session, wire::PROTOCOL_VERSION);
        write_message(&mut send, &join).await.unwrap();
        let login = Message::Login {
            supported_protocol_versions: vec![wire::PROTOCOL_VERSION.to_owned()],
            email: REP.to_owned(),
            password: PASSWORD.to_owned(),
            device: wire::DeviceRegistration {
                id: session.device.clone(),
                kind: DeviceKind::Desk,
                actor: "00".to_owned(),
            },
        };
        write_message(&mut send, &login).await.unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), read_message(&mut recv)).await {
                Ok(Ok(Some(Message::Error(body)))) => {
                    assert_eq!(body.code, "unexpected-message");
                    break;
                }
                Ok(Ok(Some(_))) => continue,
                other => panic!("expected an error, got {other:?}"),
            }
        }
    });
    still_serving(&desk);
}

#[test]
fn a_malformed_configuration_sync_is_cut_off_and_the_server_serves_on() {
    let world = World::start(&[]);
    let (desk, _phone) = world.rep_devices();
    let store = Store::open(&desk.join("callsync.sqlite")).unwrap();
    let session = SavedSession::load(&store).unwrap().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let (_ep, _c, mut send, mut recv) = raw_connect(&world.server).await;
        let join = join_message(&session, wire::PROTOCOL_VERSION);
        write_message(&mut send, &join).await.unwrap();
        write_message(
            &mut send,
            &Message::ConfigSync {
                data: vec![0x42, 0, 1],
            },
        )
        .await
        .unwrap();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), read_message(&mut recv))
                .await
                .expect("an answer")
                .unwrap()
                .expect("a message");
            match message {
                Message::Error(body) => {
                    assert_eq!(body.code, "malformed-sync");
                    break;
                }
                Message::Peer { .. } | Message::Sync { .. } | Message::Presence { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    still_serving(&desk);
}
