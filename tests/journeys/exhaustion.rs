//! The second security review's findings on what one peer can make the server
//! hold, each reproduced from outside against a real `callsync serve` with raw
//! QUIC clients: memory amplification before login, a member's tiny messages
//! that each queue a whole document, and the limits that bound them. Each test
//! failed on the server before its fix.

use std::net::SocketAddr;
use std::time::Duration;

use callsync_core::wire::{self, Message};
use callsync_net::framing::read_message;
use callsync_net::tls::{Trust, client_config};

use crate::network::{ServerProcess, World};
use crate::support::runtime;

/// A field of `/proc/PID/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

/// The server's peak resident memory so far, in MiB.
fn peak_rss_mib(server: &ServerProcess) -> u64 {
    status_kib(server.pid(), "VmHWM:") / 1024
}

/// A raw QUIC connection with the protocol's stream open.
async fn raw_connection(
    server: &ServerProcess,
) -> (
    quinn::Endpoint,
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
) {
    let addr: SocketAddr = server.addr.parse().unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(
        client_config(&Trust::Fingerprint(server.fingerprint.clone())).unwrap(),
    );
    let (conn, send, recv) = callsync_net::endpoint::connect(&ep, addr, "localhost")
        .await
        .unwrap();
    (ep, conn, send, recv)
}

/// An 8 MB `login` whose list of protocol versions is eight million empty
/// arrays (one byte each on the wire), as a frame.
fn amplifying_login() -> Vec<u8> {
    let items = 8_000_000usize;
    let mut body = Vec::with_capacity(items + 256);
    let text = |body: &mut Vec<u8>, s: &str| {
        body.push(0x60 | s.len() as u8);
        body.extend_from_slice(s.as_bytes());
    };
    body.push(0xa5);
    text(&mut body, "type");
    text(&mut body, "login");
    body.push(0x78);
    body.push(25);
    body.extend_from_slice(b"supportedProtocolVersions");
    body.push(0x9a);
    body.extend_from_slice(&(items as u32).to_be_bytes());
    body.extend(std::iter::repeat_n(0x80, items));
    for (key, value) in [("email", "x@y.example"), ("password", "password")] {
        text(&mut body, key);
        text(&mut body, value);
    }
    text(&mut body, "device");
    body.push(0xa0);
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend(body);
    frame
}

#[test]
fn an_outsiders_oversized_first_frames_are_refused_unread_and_cost_the_server_almost_nothing() {
    let world = World::start(&[]);
    let rt = runtime();
    // Quiet: the server has served its start-up logins.
    let quiet = peak_rss_mib(&world.server);
    let frame = std::sync::Arc::new(amplifying_login());
    let answers = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..12 {
            let frame = frame.clone();
            let server_addr = world.server.addr.clone();
            let fingerprint = world.server.fingerprint.clone();
            tasks.push(tokio::spawn(async move {
                let server = (server_addr, fingerprint);
                let addr: SocketAddr = server.0.parse().unwrap();
                let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
                ep.set_default_client_config(client_config(&Trust::Fingerprint(server.1)).unwrap());
                let (_conn, mut send, mut recv) =
                    callsync_net::endpoint::connect(&ep, addr, "localhost")
                        .await
                        .unwrap();
                // Write the whole frame while reading the answer: the server may
                // answer (and stop reading) long before the frame is sent.
                let writer = tokio::spawn(async move {
                    let _ = send.write_all(&frame).await;
                    send
                });
                let answer =
                    tokio::time::timeout(Duration::from_secs(20), read_message(&mut recv)).await;
                writer.abort();
                match answer {
                    Ok(Ok(Some(Message::Error(body)))) => body.code,
                    other => format!("{other:?}"),
                }
            }));
        }
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        answers
    });
    let grown = peak_rss_mib(&world.server).saturating_sub(quiet);
    eprintln!(
        "12 oversized first frames: peak RSS {quiet} MiB -> +{grown} MiB; answers {answers:?}"
    );
    for answer in &answers {
        assert_eq!(answer, "frame-too-large");
    }
    assert!(grown < 32, "the server's peak RSS grew by {grown} MiB");
    // A first frame within the limit whose list is past its bound: malformed.
    let code = rt.block_on(async {
        let (_ep, _conn, mut send, mut recv) = raw_connection(&world.server).await;
        let login = Message::Login {
            supported_protocol_versions: vec![String::new(); wire::MAX_PROTOCOL_VERSIONS + 1],
            email: "x@y.example".to_owned(),
            password: "password".to_owned(),
            device: wire::DeviceRegistration {
                id: callsync_core::DeviceId::new("d-1").unwrap(),
                kind: callsync_core::DeviceKind::Phone,
                actor: "00".to_owned(),
            },
        };
        send.write_all(&wire::encode_frame(&login).unwrap())
            .await
            .unwrap();
        match read_message(&mut recv).await {
            Ok(Some(Message::Error(body))) => body.code,
            other => format!("{other:?}"),
        }
    });
    assert_eq!(code, "malformed-message");
    // The server serves on.
    world
        .login(&world.dir("after"), "desk", crate::network::REP)
        .ok();
}

/// Writes customer `id` of `tenant` into a stopped server's store, grown with
/// finished calls whose memos are varied kanji (so they do not compress) until
/// its changes take about `bytes`.
fn write_large_customer(
    db: &std::path::Path,
    tenant: &str,
    owner: &str,
    phone: &str,
    id: &str,
    bytes: usize,
) {
    use callsync_core::{
        CallEvent, CallId, CustomerDoc, CustomerId, DeviceId, DeviceKind, EventId, EventKind,
        NewCustomer, PhoneEntry, PhoneNumber, ResultCatalog, ResultOption, ResultTypeId,
        RuleContext, SavedResultFields, Stamp, TenantId, Timestamp, UserId,
    };
    let now = Timestamp::from_millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    );
    let owner = UserId::new(owner).unwrap();
    let phone = DeviceId::new(phone).unwrap();
    let desk = DeviceId::new("desk-setup").unwrap();
    let new = NewCustomer {
        tenant: TenantId::new(tenant).unwrap(),
        id: CustomerId::new(id).unwrap(),
        company: "株式会社大容量".to_owned(),
        contact: "容量 太郎".to_owned(),
        owner: owner.clone(),
        phones: vec![PhoneEntry {
            label: "代表".to_owned(),
            number: PhoneNumber::parse(crate::network::NUMBER).unwrap(),
        }],
    };
    let mut doc = CustomerDoc::create(&new, now, automerge::ActorId::random()).unwrap();
    let catalog = ResultCatalog::standard();
    let ctx = RuleContext {
        catalog: &catalog,
        start_limit_ms: 60_000,
        other_open_calls: &[],
    };
    let stamp = |device: &DeviceId, kind| Stamp {
        at: now,
        device: device.clone(),
        device_kind: kind,
        user: owner.clone(),
        device_at: None,
    };
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut memo = || {
        (0..4_000)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                char::from_u32(0x4e00 + (seed % 0x5000) as u32).unwrap()
            })
            .collect::<String>()
    };
    // Each call takes about 12.5 KB (its memo's 4,000 kanji, three bytes each).
    for k in 0..bytes.div_ceil(12_500) {
        let call = CallId::new(format!("big-{k}")).unwrap();
        let events = [
            (
                stamp(&desk, DeviceKind::Desk),
                EventKind::Requested {
                    destination: PhoneNumber::parse(crate::network::NUMBER).unwrap(),
                    origin: phone.clone(),
                    recording: false,
                },
            ),
            (stamp(&phone, DeviceKind::Phone), EventKind::Started),
            (
                stamp(&phone, DeviceKind::Phone),
                EventKind::PhoneEnded { duration_secs: 30 },
            ),
            (stamp(&desk, DeviceKind::Desk), EventKind::BrowserEnded),
            (
                stamp(&desk, DeviceKind::Desk),
                EventKind::ResultSaved(SavedResultFields {
                    result_type: ResultTypeId::new("no-answer").unwrap(),
                    option: ResultOption::None,
                    customer_status: None,
                    memo: memo(),
                    decision: None,
                    kept_as_picked: None,
                }),
            ),
        ];
        for (n, (stamp, kind)) in events.into_iter().enumerate() {
            let event = CallEvent {
                id: EventId::new(format!("e-{k}-{n}")).unwrap(),
                call: call.clone(),
                stamp,
                kind,
            };
            doc.record(event, &ctx).unwrap();
        }
    }
    let mut store = callsync_store::Store::open(db).unwrap();
    let mut tx = store.write().unwrap();
    tx.insert(&mut doc).unwrap();
    tx.commit().unwrap();
}

/// A sync message of a device holding nothing: no heads, one empty summary. To
/// Automerge it says "I lost everything": the receiver forgets what it sent and
/// answers with the whole document.
fn asks_for_everything() -> Vec<u8> {
    use automerge::sync::SyncDoc;
    automerge::Automerge::new()
        .generate_sync_message(&mut automerge::sync::State::new())
        .unwrap()
        .encode()
}

/// The server's resident memory now, in MiB.
fn rss_mib(server: &ServerProcess) -> u64 {
    status_kib(server.pid(), "VmRSS:") / 1024
}

/// The 99th percentile (the largest of fewer than 100 samples), in ms.
fn p99(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * 0.99).round() as usize]
}

#[test]
fn a_member_asking_for_a_whole_document_over_and_over_without_reading_holds_little_of_the_server() {
    use callsync_core::CustomerId;
    use callsync_core::wire::{RpcCall, RpcResult};
    use callsync_net::framing::write_message;

    use crate::hardening::{ask, join, reply, saved_session};
    use crate::tenants::push_latencies;

    let mut world = World::start(&[]);
    let (desk, _phone) = world.rep_devices();
    // The attacker: a member of another tenant, with a phone, and a 2 MiB customer.
    world.add_tenant("beta", "owner@beta.example");
    let beta_phone = world.dir("beta-phone");
    world
        .login_as(
            &beta_phone,
            "phone",
            "owner@beta.example",
            Some("phone-beta"),
        )
        .ok();
    let acme = saved_session(&world.admin_desk);
    let attacker = saved_session(&beta_phone);
    world.server.stop();
    write_large_customer(
        &world.server.db(),
        "beta",
        "owner@beta.example",
        "phone-beta",
        "big-1",
        2 << 20,
    );
    world.server.restart();

    let rt = runtime();
    let samples = 10;
    let (quiet, attacked, quiet_peak, attacked_peak, rss_after) = rt.block_on(async {
        // Acme's owner, subscribed to the rep's customer: its pushes are timed.
        let (_ep, _c, mut send, mut recv) = join(&world.server, &acme).await;
        ask(
            &mut send,
            1,
            RpcCall::Subscribe {
                documents: vec![CustomerId::new("cus-1").unwrap()],
            },
        )
        .await;
        assert!(matches!(
            reply(&mut recv, 1).await,
            RpcResult::Subscribed(_)
        ));
        let quiet = push_latencies(&desk, &mut recv, samples).await;
        let quiet_peak = peak_rss_mib(&world.server);

        // The attack: subscribe to the large customer, read its first sync, then
        // send 1,500 "I have nothing" messages for it and never read again.
        let (aep, ac, mut asend, mut arecv) = join(&world.server, &attacker).await;
        ask(
            &mut asend,
            1,
            RpcCall::Subscribe {
                documents: vec![CustomerId::new("big-1").unwrap()],
            },
        )
        .await;
        assert!(matches!(reply(&mut arecv, 1).await, RpcResult::Subscribed(d) if d.len() == 1));
        let tiny = asks_for_everything();
        assert!(tiny.len() < 16, "{} bytes", tiny.len());
        let flood = tokio::spawn(async move {
            let _keep = (aep, ac, arecv);
            for _ in 0..1_500 {
                let message = Message::Sync {
                    document_id: CustomerId::new("big-1").unwrap(),
                    data: tiny.clone(),
                };
                if write_message(&mut asend, &message).await.is_err() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_secs(12)).await;
        });
        let started = std::time::Instant::now();
        let attacked = push_latencies(&desk, &mut recv, samples).await;
        // The hub has handled the whole flood once it answers a later request of
        // the same tenant (one queue, in order). Before the fix, a debug build
        // spends most of a second regenerating the 2 MiB document per message:
        // this waits a minute at most, and fails if the hub is still at it.
        let (_bep, _bc, mut bsend, mut brecv) = join(&world.server, &attacker).await;
        ask(
            &mut bsend,
            7,
            RpcCall::CustomerList {
                after: None,
                limit: Some(1),
                query: None,
            },
        )
        .await;
        tokio::time::timeout(Duration::from_secs(60), reply(&mut brecv, 7))
            .await
            .expect("the hub was still regenerating the document a minute later");
        // At least the 9 s, for the queues to fill as they did before.
        tokio::time::sleep(Duration::from_secs(9).saturating_sub(started.elapsed())).await;
        let attacked_peak = peak_rss_mib(&world.server);
        let rss_after = rss_mib(&world.server);
        flood.abort();
        (quiet, attacked, quiet_peak, attacked_peak, rss_after)
    });
    let (quiet_p99, attacked_p99) = (p99(quiet.clone()), p99(attacked.clone()));
    println!(
        "{{\"quiet_peak_rss_mib\": {quiet_peak}, \"attacked_peak_rss_mib\": {attacked_peak}, \"rss_after_mib\": {rss_after}, \"push_ms_quiet_p50\": {:.1}, \"push_ms_quiet_p99\": {quiet_p99:.1}, \"push_ms_attacked_p50\": {:.1}, \"push_ms_attacked_p99\": {attacked_p99:.1}}}",
        crate::tenants::median(quiet.clone()),
        crate::tenants::median(attacked.clone()),
    );
    assert!(
        attacked_peak.saturating_sub(quiet_peak) < 100,
        "the server's peak RSS went from {quiet_peak} to {attacked_peak} MiB"
    );
    // Each push is timed from a `desk` process's start: as in
    // `a_tenant_looping_its_most_expensive_reads_…`, one sample in ten may
    // catch the machine starting a process slowly (169.5 ms once in CI, the
    // others near 84), so the median and all but one sample are judged.
    let (quiet_p50, attacked_p50) = (
        crate::tenants::median(quiet.clone()),
        crate::tenants::median(attacked.clone()),
    );
    assert!(
        attacked_p50 <= 2.0 * quiet_p50,
        "another tenant's push median went from {quiet_p50:.1} to {attacked_p50:.1} ms"
    );
    let slow = attacked.iter().filter(|&&ms| ms > 2.0 * quiet_p99).count();
    assert!(
        slow <= 1,
        "{slow} of {samples} pushes took over twice the quiet p99 ({quiet_p99:.1} ms): {attacked:?}"
    );
}

/// Open TCP connections to the page's listener from `local`, each sending a
/// request's first lines and never the blank line that ends its headers.
async fn half_requests(page: SocketAddr, local: &str, n: usize) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut streams = Vec::new();
    for _ in 0..n {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
        let mut stream = socket.connect(page).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        streams.push(stream);
    }
    streams
}

/// How many of `streams` the server has closed (read returns end of stream or
/// an error) within `wait`.
async fn closed_within(streams: &mut [tokio::net::TcpStream], wait: Duration) -> usize {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + wait;
    let mut closed = 0;
    for stream in streams.iter_mut() {
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    closed += 1;
                    break;
                }
                Ok(Ok(_)) => continue,
                Err(_) => break,
            }
        }
    }
    closed
}

#[test]
fn page_connections_that_never_finish_their_headers_are_capped_per_address_and_timed_out() {
    let world = World::start(&[]);
    let page: SocketAddr = world
        .server
        .page
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let rt = runtime();
    let per_address = callsync_server::web::MAX_PAGE_CONNECTIONS_PER_ADDRESS;
    let (at_once, later, transport) = rt.block_on(async {
        let mut streams = half_requests(page, "127.0.0.3", per_address + 100).await;
        // Past the address's cap, connections are closed at once …
        let at_once = closed_within(&mut streams[per_address..], Duration::from_secs(2)).await;
        // … while another address still gets the page's facts.
        let transport = {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.4:0".parse().unwrap()).unwrap();
            let mut stream = socket.connect(page).await.unwrap();
            stream
                .write_all(b"GET /api/transport HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut answer = String::new();
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
                .await
                .unwrap()
                .unwrap();
            answer
        };
        // Those within the cap are closed once their headers are overdue.
        let wait = callsync_server::web::HEADER_READ_TIMEOUT + Duration::from_secs(5);
        let later = closed_within(&mut streams[..per_address], wait).await;
        (at_once, later, transport)
    });
    assert_eq!(at_once, 100, "connections past the address's cap");
    assert_eq!(
        later, per_address,
        "connections that never finished their headers"
    );
    assert!(transport.starts_with("HTTP/1.1 200"), "{transport}");
}

/// A `decide-result` for a no-answer call that ended a minute ago.
fn decide_now() -> callsync_core::wire::RpcCall {
    use callsync_core::plugin::Pick;
    use callsync_core::result_type::OptionKind;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    callsync_core::wire::RpcCall::DecideResult {
        pick: Pick {
            result_type: callsync_core::ResultTypeId::new("no-answer").unwrap(),
            option: OptionKind::None,
            at: None,
            customer_status: None,
        },
        ended_at: callsync_core::Timestamp::from_millis(now - 60_000),
        attempt: 1,
        saved_at: callsync_core::Timestamp::from_millis(now),
    }
}

/// The time of `samples` decisions and logins of the second tenant, in ms.
async fn beta_timings(
    world: &World,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    first_id: u64,
    samples: usize,
) -> (Vec<f64>, Vec<f64>) {
    use crate::hardening::{ask, login_from, reply};
    let mut decides = Vec::new();
    for i in 0..samples as u64 {
        let asked = std::time::Instant::now();
        ask(send, first_id + i, decide_now()).await;
        let result = reply(recv, first_id + i).await;
        assert!(
            matches!(result, callsync_core::wire::RpcResult::Decided(_)),
            "{result:?}"
        );
        decides.push(asked.elapsed().as_secs_f64() * 1e3);
    }
    let mut logins = Vec::new();
    for _ in 0..samples.div_ceil(2) {
        let asked = std::time::Instant::now();
        let answer = login_from(
            &world.server,
            "127.0.0.5",
            "owner@beta.example",
            crate::network::PASSWORD,
        )
        .await;
        assert_eq!(answer, "logged-in");
        logins.push(asked.elapsed().as_secs_f64() * 1e3);
    }
    (decides, logins)
}

#[test]
fn one_tenants_members_flooding_result_decisions_do_not_slow_another_tenants_decisions_or_logins() {
    use crate::hardening::{join, saved_session};
    use callsync_net::framing::write_message;

    let world = World::start(&[]);
    let (rep_desk, _phone) = world.rep_devices();
    world.add_tenant("beta", "owner@beta.example");
    let beta_desk = world.dir("beta-desk");
    world.login(&beta_desk, "desk", "owner@beta.example").ok();
    let beta = saved_session(&beta_desk);
    let rep = saved_session(&rep_desk);
    let admin = saved_session(&world.admin_desk);
    let rt = runtime();
    // Both phases' decisions fit the member's burst of decisions.
    let samples = 8;
    let (quiet, flooded, asked, decided) = rt.block_on(async {
        let (_ep, _c, mut send, mut recv) = join(&world.server, &beta).await;
        // Joined (the hub has written the tenant's standard rules by then).
        while !matches!(
            read_message(&mut recv).await,
            Ok(Some(Message::Peer { .. }))
        ) {}
        let quiet = beta_timings(&world, &mut send, &mut recv, 1, samples).await;
        // Two members of the first tenant, from three connections, ask for 600
        // decisions a second in all, reading every answer.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let asked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let decided = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut flooders = Vec::new();
        for session in [&rep, &rep, &admin] {
            let (ep, c, mut fsend, mut frecv) = join(&world.server, session).await;
            let decided = decided.clone();
            tokio::spawn(async move {
                let _keep = (ep, c);
                while let Ok(Some(message)) = read_message(&mut frecv).await {
                    if let Message::Reply {
                        result: callsync_core::wire::RpcResult::Decided(_),
                        ..
                    } = message
                    {
                        decided.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
            let (stop, asked) = (stop.clone(), asked.clone());
            flooders.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                let mut id = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    tick.tick().await;
                    for _ in 0..2 {
                        id += 1;
                        let message = Message::Rpc {
                            id,
                            call: decide_now(),
                        };
                        if write_message(&mut fsend, &message).await.is_err() {
                            return;
                        }
                        asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let flooded = beta_timings(&world, &mut send, &mut recv, 1_000, samples).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for f in flooders {
            let _ = f.await;
        }
        (
            quiet,
            flooded,
            asked.load(std::sync::atomic::Ordering::Relaxed),
            decided.load(std::sync::atomic::Ordering::Relaxed),
        )
    });
    let ((quiet_decides, quiet_logins), (flooded_decides, flooded_logins)) = (quiet, flooded);
    let (qd, fd, ql, fl) = (
        p99(quiet_decides),
        p99(flooded_decides),
        p99(quiet_logins),
        p99(flooded_logins),
    );
    println!(
        "{{\"flood_asked\": {asked}, \"flood_decided\": {decided}, \"beta_decide_ms_p99_quiet\": {qd:.1}, \"beta_decide_ms_p99_flooded\": {fd:.1}, \"beta_login_ms_p99_quiet\": {ql:.1}, \"beta_login_ms_p99_flooded\": {fl:.1}}}"
    );
    assert!(asked > 400, "the flood asked only {asked} decisions");
    // The flooding members were held to their rate of decisions (the rest were
    // answered `busy`, which the flood's reader does not count).
    assert!(
        decided < asked / 4,
        "{decided} of {asked} flooded decisions were made"
    );
    assert!(
        fd <= 2.0 * qd,
        "beta's decision p99 went from {qd:.1} to {fd:.1} ms"
    );
    assert!(
        fl <= 2.0 * ql,
        "beta's login p99 went from {ql:.1} to {fl:.1} ms"
    );
}

#[test]
fn a_sync_message_larger_than_any_document_is_refused_before_automerge_reads_it() {
    use crate::hardening::{join, saved_session};
    use callsync_net::framing::write_message;

    let world = World::start(&[]);
    let (desk, _phone) = world.rep_devices();
    let session = saved_session(&desk);
    let limit = callsync_session::hub::MAX_SYNC_MESSAGE_BYTES;
    let answer = runtime().block_on(async {
        let (_ep, _c, mut send, mut recv) = join(&world.server, &session).await;
        // Bytes Automerge would take for a message header and then try to parse.
        let mut data = vec![0x42u8];
        data.resize(limit + 1, 0);
        write_message(
            &mut send,
            &Message::Sync {
                document_id: callsync_core::CustomerId::new("cus-1").unwrap(),
                data,
            },
        )
        .await
        .unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), read_message(&mut recv)).await {
                Ok(Ok(Some(Message::Rejected { error, .. }))) => break error,
                Ok(Ok(Some(_))) => {}
                other => panic!("no refusal: {other:?}"),
            }
        }
    });
    assert_eq!(answer.code, "malformed-sync");
    assert!(answer.message.contains("at most"), "{}", answer.message);
}

/// Gives tenant `tenant` of a stopped server `customers` customers due for a
/// recall and `calls` finished calls, written as rows straight into its index
/// tables (what `recall-list` and `call-stats` read; no document is ever
/// loaded for them).
fn write_many_index_rows(
    db: &std::path::Path,
    tenant: &str,
    owner: &str,
    customers: usize,
    calls: usize,
) {
    let mut conn = rusqlite::Connection::open(db).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let tx = conn.transaction().unwrap();
    {
        let mut doc = tx
            .prepare(
                "INSERT INTO documents (tenant_id, customer_id, snapshot_bytes, heads, company, contact, owner, status, recall_at, schema)
                 VALUES (?1, ?2, 0, x'', '株式会社索引', '索引 花子', ?3, 'done', ?4, 2)",
            )
            .unwrap();
        for i in 0..customers {
            doc.execute(rusqlite::params![
                tenant,
                format!("idx-{i}"),
                owner,
                now + 3_600_000 + i as i64
            ])
            .unwrap();
        }
        let mut call = tx
            .prepare(
                "INSERT INTO calls (tenant_id, call_id, customer_id, user_id, phase, requested_at, result_type)
                 VALUES (?1, ?2, ?3, ?4, 'completed', ?5, 'no-answer')",
            )
            .unwrap();
        for i in 0..calls {
            call.execute(rusqlite::params![
                tenant,
                format!("idx-call-{i}"),
                format!("idx-{}", i % customers.max(1)),
                owner,
                now - 86_400_000 - i as i64 * 60_000,
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
}

#[test]
fn a_tenant_looping_its_most_expensive_reads_does_not_delay_another_tenants_push() {
    use crate::hardening::{ask, join, reply, saved_session};
    use crate::tenants::push_latencies;
    use callsync_core::wire::RpcCall;

    let mut world = World::start(&[]);
    let (desk, _phone) = world.rep_devices();
    world.add_tenant("beta", "owner@beta.example");
    let beta_desk = world.dir("beta-desk");
    world.login(&beta_desk, "desk", "owner@beta.example").ok();
    let beta = saved_session(&beta_desk);
    let acme = saved_session(&world.admin_desk);
    world.server.stop();
    write_many_index_rows(
        &world.server.db(),
        "beta",
        "owner@beta.example",
        50_000,
        200_000,
    );
    world.server.restart();
    let rt = runtime();
    let samples = 10;
    let (quiet, loaded, reads) = rt.block_on(async {
        let (_ep, _c, mut send, mut recv) = join(&world.server, &acme).await;
        ask(
            &mut send,
            1,
            RpcCall::Subscribe {
                documents: vec![callsync_core::CustomerId::new("cus-1").unwrap()],
            },
        )
        .await;
        reply(&mut recv, 1).await;
        let quiet = push_latencies(&desk, &mut recv, samples).await;
        // The recall list answers the soonest 1,000 of beta's 50,000.
        {
            let (_bep, _bc, mut bsend, mut brecv) = join(&world.server, &beta).await;
            ask(&mut bsend, 1, RpcCall::RecallList).await;
            match reply(&mut brecv, 1).await {
                callsync_core::wire::RpcResult::Recalls(recalls) => {
                    assert_eq!(recalls.len(), 1_000);
                    assert_eq!(recalls[0].id.as_str(), "idx-0");
                    assert!(recalls.windows(2).all(|w| w[0].recall_at <= w[1].recall_at));
                }
                other => panic!("{other:?}"),
            }
        }
        // Beta asks for its recalls and its 400-day figures over and over, from
        // two connections, each asking again as soon as it has its answer.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reads = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut loops = Vec::new();
        for _ in 0..2 {
            let (ep, c, mut bsend, mut brecv) = join(&world.server, &beta).await;
            let (stop, reads) = (stop.clone(), reads.clone());
            loops.push(tokio::spawn(async move {
                let _keep = (ep, c);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as i64;
                let mut id = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    id += 1;
                    let call = if id % 2 == 0 {
                        RpcCall::RecallList
                    } else {
                        RpcCall::CallStats {
                            from: callsync_core::Timestamp::from_millis(
                                now - callsync_core::wire::MAX_STATS_PERIOD_MS + 1,
                            ),
                            to: callsync_core::Timestamp::from_millis(now),
                        }
                    };
                    ask(&mut bsend, id, call).await;
                    reply(&mut brecv, id).await;
                    reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let loaded = push_latencies(&desk, &mut recv, samples).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for l in loops {
            let _ = l.await;
        }
        (
            quiet,
            loaded,
            reads.load(std::sync::atomic::Ordering::Relaxed),
        )
    });
    let (quiet_p99, loaded_p99) = (p99(quiet.clone()), p99(loaded.clone()));
    println!(
        "{{\"beta_reads\": {reads}, \"push_ms_quiet_p50\": {:.1}, \"push_ms_quiet_p99\": {quiet_p99:.1}, \"push_ms_loaded_p50\": {:.1}, \"push_ms_loaded_p99\": {loaded_p99:.1}}}",
        crate::tenants::median(quiet.clone()),
        crate::tenants::median(loaded.clone()),
    );
    assert!(reads >= 10, "beta read only {reads} times");
    // Each push is timed from a `desk` process's start, so one sample in ten
    // may catch the machine starting a process slowly (253 ms once in CI, the
    // other nine near 86): a delay the reads caused would move the median and
    // most samples, and is what this refuses.
    let (quiet_p50, loaded_p50) = (
        crate::tenants::median(quiet.clone()),
        crate::tenants::median(loaded.clone()),
    );
    assert!(
        loaded_p50 <= 2.0 * quiet_p50,
        "another tenant's push median went from {quiet_p50:.1} to {loaded_p50:.1} ms"
    );
    let slow = loaded.iter().filter(|&&ms| ms > 2.0 * quiet_p99).count();
    assert!(
        slow <= 1,
        "{slow} of {samples} pushes took over twice the quiet p99 ({quiet_p99:.1} ms): {loaded:?}"
    );
}

#[test]
fn a_change_that_would_take_a_customer_past_the_document_cap_is_refused_through_the_hub() {
    use crate::network::{NUMBER, callsync, create_customer};

    let mut world = World::start(&[]);
    let (desk, _phone) = world.rep_devices();
    create_customer(&desk, "cus-2", "株式会社となり").ok();
    let cap = callsync_session::hub::MAX_DOCUMENT_BYTES as i64;
    // cus-1 stands 100 bytes under the cap (its stored size, as the store counts
    // it: what every save has added).
    world.server.stop();
    let heads_before: Vec<u8> = {
        let conn = rusqlite::Connection::open(world.server.db()).unwrap();
        conn.execute(
            "UPDATE documents SET raw_bytes = ?1 WHERE customer_id = 'cus-1'",
            [cap - 100],
        )
        .unwrap();
        conn.query_row(
            "SELECT heads FROM documents WHERE customer_id = 'cus-1'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    world.server.restart();
    // A request (a few hundred bytes of change) is refused for cus-1 …
    let refused = callsync(&desk, &["desk", "request", "cus-1", "--number", NUMBER]);
    refused.refused("document-too-large");
    let conn = rusqlite::Connection::open(world.server.db()).unwrap();
    let heads_after: Vec<u8> = conn
        .query_row(
            "SELECT heads FROM documents WHERE customer_id = 'cus-1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(heads_after, heads_before, "nothing of it was stored");
    // … and the same request is taken for a customer under the cap.
    callsync(&desk, &["desk", "request", "cus-2", "--number", NUMBER]).ok();
}

#[test]
fn an_address_holds_at_most_64_connections_that_have_not_said_who_they_are() {
    let world = World::start(&[]);
    let cap = 64;
    let (held, refused, other) = runtime().block_on(async {
        let addr: SocketAddr = world.server.addr.parse().unwrap();
        let mut ep = quinn::Endpoint::client("127.0.0.6:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(
            client_config(&Trust::Fingerprint(world.server.fingerprint.clone())).unwrap(),
        );
        // Connections that finish QUIC's handshake and then say nothing.
        let mut held = Vec::new();
        for _ in 0..cap {
            let connection = ep.connect(addr, "localhost").unwrap().await.unwrap();
            held.push(connection);
        }
        // The next from the same address is refused before any state is kept …
        let refused = match tokio::time::timeout(
            Duration::from_secs(5),
            ep.connect(addr, "localhost").unwrap(),
        )
        .await
        {
            Ok(Ok(_)) => false,
            Ok(Err(_)) => true,
            Err(_) => panic!("no answer to the connection past the cap"),
        };
        // … while another address logs in.
        let other = crate::hardening::login_from(
            &world.server,
            "127.0.0.7",
            crate::network::OWNER,
            crate::network::PASSWORD,
        )
        .await;
        (held.len(), refused, other)
    });
    assert_eq!(held, cap);
    assert!(
        refused,
        "the connection past the address's cap was accepted"
    );
    assert_eq!(other, "logged-in");
}
