//! The browser's way in, without the browser: a WebTransport (HTTP/3) client on
//! the same UDP port as native QUIC, trusting the server by the certificate hash
//! the page's HTTP endpoint hands out, logs in and joins with the same frames as
//! a phone. The browser itself is exercised by `clients/web/tests`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use callsync_core::DeviceKind;
use callsync_core::wire::{self, DeviceRegistration, Message};
use callsync_net::framing::{read_message, write_message};
use serde_json::Value;

use crate::network::{OWNER, PASSWORD, ServerProcess};
use crate::support::runtime;

/// `GET path` on the page's HTTP listener: (status line, headers, body).
fn http_get(page: &str, path: &str) -> (String, String, String) {
    http_get_with(page, path, "")
}

/// As [`http_get`], with `headers` (each line ending in CRLF) added; the body
/// as text.
fn http_get_with(page: &str, path: &str, headers: &str) -> (String, String, String) {
    let (status, headers, body) = crate::support::http_get(page, path, headers);
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// The development certificate's hashes `/api/transport` hands the page.
fn certificate_hashes(server: &ServerProcess) -> Vec<String> {
    let (_, _, body) = http_get(&server.page, "/api/transport");
    let info: Value = serde_json::from_str(&body).unwrap();
    info["certificateHashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_owned())
        .collect()
}

fn hex(bytes: &str) -> Vec<u8> {
    (0..bytes.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&bytes[i..i + 2], 16).unwrap())
        .collect()
}

async fn web_session(
    server: &ServerProcess,
    hashes: &[String],
    path: &str,
) -> Result<web_transport_quinn::Session, web_transport_quinn::ClientError> {
    web_session_at(&server.addr, hashes, path).await
}

/// A WebTransport session to the server listening at `addr`.
async fn web_session_at(
    addr: &str,
    hashes: &[String],
    path: &str,
) -> Result<web_transport_quinn::Session, web_transport_quinn::ClientError> {
    let client = web_transport_quinn::ClientBuilder::new()
        .with_server_certificate_hashes(hashes.iter().map(|h| hex(h)).collect())
        .unwrap();
    let port = addr.rsplit(':').next().unwrap();
    let url: url::Url = format!("https://127.0.0.1:{port}{path}").parse().unwrap();
    client.connect(url).await
}

/// A session to `/callsync` whose CONNECT carries `origin`, as a page's would.
async fn web_session_from(
    server: &ServerProcess,
    hashes: &[String],
    origin: &str,
) -> Result<web_transport_quinn::Session, web_transport_quinn::ClientError> {
    let client = web_transport_quinn::ClientBuilder::new()
        .with_server_certificate_hashes(hashes.iter().map(|h| hex(h)).collect())
        .unwrap();
    let port = server.addr.rsplit(':').next().unwrap();
    let url: url::Url = format!("https://127.0.0.1:{port}/callsync")
        .parse()
        .unwrap();
    let request = web_transport_proto::ConnectRequest::new(url).with_header(
        web_transport_quinn::http::header::ORIGIN,
        web_transport_quinn::http::HeaderValue::from_str(origin).unwrap(),
    );
    client.connect(request).await
}

#[test]
fn a_webtransport_session_from_a_foreign_origin_is_refused_and_the_pages_own_is_not() {
    let root = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        &root.path().join("server"),
        "127.0.0.1:0",
        &[],
        &[
            "--init-owner",
            OWNER,
            "--allow-origin",
            "https://crm.example.com",
        ],
    );
    let hashes = certificate_hashes(&server);
    let own = server.page.trim_end_matches('/').to_owned();
    let page_port = own.rsplit(':').next().unwrap().to_owned();
    runtime().block_on(async {
        for foreign in [
            "https://evil.example".to_owned(),
            format!("http://evil.example:{page_port}"),
            // The right host on another port is another origin.
            "http://127.0.0.1:1".to_owned(),
            "null".to_owned(),
        ] {
            assert!(
                web_session_from(&server, &hashes, &foreign).await.is_err(),
                "{foreign} was let in"
            );
        }
        // The page's own origin, and a listed one, log in.
        for allowed in [own.clone(), "https://crm.example.com".to_owned()] {
            let session = web_session_from(&server, &hashes, &allowed)
                .await
                .unwrap_or_else(|e| panic!("{allowed}: {e}"));
            let (mut send, mut recv) = session.open_bi().await.unwrap();
            write_message(&mut send, &login_message("desk-web-origin"))
                .await
                .unwrap();
            assert!(
                matches!(
                    read_message(&mut recv).await,
                    Ok(Some(Message::LoggedIn { .. }))
                ),
                "{allowed}"
            );
        }
    });
}

fn login_message(device: &str) -> Message {
    Message::Login {
        supported_protocol_versions: vec![wire::PROTOCOL_VERSION.to_owned()],
        email: OWNER.to_owned(),
        password: PASSWORD.to_owned(),
        device: DeviceRegistration {
            id: device.parse().unwrap(),
            kind: DeviceKind::Desk,
            actor: "0123456789abcdef0123456789abcdef".to_owned(),
        },
    }
}

#[test]
fn a_webtransport_client_logs_in_and_joins_on_the_native_port() {
    let root = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        &root.path().join("server"),
        "127.0.0.1:0",
        &[],
        &["--init-owner", OWNER],
    );
    let (status, headers, body) = http_get(&server.page, "/api/transport");
    assert!(status.contains(" 200 "), "{status}");
    assert!(headers.contains("cache-control: no-store"), "{headers}");
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        info["port"].as_u64().unwrap().to_string(),
        server.addr.rsplit(':').next().unwrap()
    );
    assert_eq!(info["path"], "/callsync");
    let hashes = certificate_hashes(&server);
    assert_eq!(hashes.len(), 1);
    assert_ne!(
        hashes[0], server.fingerprint,
        "browsers get the short-lived certificate, phones keep the pinned one"
    );

    runtime().block_on(async {
        // A native client's pin does not open the browsers' certificate, nor the
        // other way round.
        assert!(
            web_session(
                &server,
                std::slice::from_ref(&server.fingerprint),
                "/callsync"
            )
            .await
            .is_err()
        );
        // Another path is not served.
        assert!(web_session(&server, &hashes, "/elsewhere").await.is_err());

        let session = web_session(&server, &hashes, "/callsync").await.unwrap();
        let (mut send, mut recv) = session.open_bi().await.unwrap();
        write_message(&mut send, &login_message("desk-web-1"))
            .await
            .unwrap();
        let token = match read_message(&mut recv).await.unwrap() {
            Some(Message::LoggedIn { token, role, .. }) => {
                assert_eq!(role, callsync_core::Role::Owner);
                token
            }
            other => panic!("expected logged-in, got {other:?}"),
        };
        // The server leaves the close to the reader: a browser drops stream
        // data it has not handed to the page when the connection closes, so a
        // server closing as soon as the reply is acknowledged loses it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            session.close_reason().is_none(),
            "the server closed before the page had time to read: {:?}",
            session.close_reason()
        );
        // A reader that never closes is closed on after the grace.
        let waited = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(10), session.closed())
            .await
            .expect("the server closes a connection left open after its last message");
        assert!(
            waited.elapsed() >= Duration::from_secs(1),
            "{:?}",
            waited.elapsed()
        );

        let session = web_session(&server, &hashes, "/callsync").await.unwrap();
        let (mut send, mut recv) = session.open_bi().await.unwrap();
        write_message(
            &mut send,
            &Message::Join {
                sender_id: "desk-web-1".parse().unwrap(),
                supported_protocol_versions: vec![wire::PROTOCOL_VERSION.to_owned()],
                token,
                cursor: None,
            },
        )
        .await
        .unwrap();
        match read_message(&mut recv).await.unwrap() {
            Some(Message::Peer { .. }) => {}
            other => panic!("expected peer, got {other:?}"),
        }
        // A wrong password over WebTransport gets the same typed refusal.
        let session2 = web_session(&server, &hashes, "/callsync").await.unwrap();
        let (mut send2, mut recv2) = session2.open_bi().await.unwrap();
        let mut wrong = login_message("desk-web-2");
        if let Message::Login { password, .. } = &mut wrong {
            *password = "not the password".to_owned();
        }
        write_message(&mut send2, &wrong).await.unwrap();
        match read_message(&mut recv2).await.unwrap() {
            Some(Message::Error(body)) => assert_eq!(body.code, "invalid-credentials"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        session.close(0, b"done");
    });

    // The native protocol on the same port is unchanged.
    server.login(&root.path().join("desk"), "desk", OWNER).ok();
}

#[test]
fn the_page_is_served_with_its_security_headers_and_routes_fall_back_to_it() {
    let root = tempfile::tempdir().unwrap();
    let page = root.path().join("page");
    std::fs::create_dir_all(page.join("assets")).unwrap();
    std::fs::write(
        page.join("index.html"),
        "<!doctype html><title>index</title>",
    )
    .unwrap();
    std::fs::write(page.join("assets/app.js"), "console.log(1)").unwrap();
    // What the build writes beside the engine (contents stand-ins: the server
    // picks the file by the browser's Accept-Encoding, it does not decode it).
    std::fs::write(page.join("assets/engine.wasm"), "plain engine").unwrap();
    std::fs::write(page.join("assets/engine.wasm.br"), "brotli engine").unwrap();
    std::fs::write(page.join("assets/engine.wasm.gz"), "gzip engine").unwrap();
    let server = ServerProcess::start(
        &root.path().join("server"),
        "127.0.0.1:0",
        &[],
        &["--init-owner", OWNER, "--page", page.to_str().unwrap()],
    );
    let (status, headers, body) = http_get(&server.page, "/assets/app.js");
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(body, "console.log(1)");
    assert!(headers.contains("content-security-policy: default-src 'self'"));
    assert!(headers.contains("x-content-type-options: nosniff"));
    // The engine goes precompressed to a browser that accepts it, with its own
    // type (WebAssembly compiles while it streams only as application/wasm).
    for (accept, encoding, expected) in [
        ("br, gzip", Some("br"), "brotli engine"),
        ("gzip", Some("gzip"), "gzip engine"),
        ("identity", None, "plain engine"),
    ] {
        let (status, headers, body) = http_get_with(
            &server.page,
            "/assets/engine.wasm",
            &format!("Accept-Encoding: {accept}\r\n"),
        );
        assert!(status.contains(" 200 "), "{status}");
        assert_eq!(body, expected, "{accept}");
        assert!(
            headers.contains("content-type: application/wasm"),
            "{headers}"
        );
        match encoding {
            Some(encoding) => assert!(
                headers.contains(&format!("content-encoding: {encoding}")),
                "{headers}"
            ),
            None => assert!(!headers.contains("content-encoding"), "{headers}"),
        }
    }
    // It may connect to this server's WebTransport origin and its own, no other.
    let quic_port = server.addr.rsplit(':').next().unwrap();
    assert!(
        headers.contains(&format!("connect-src 'self' https://127.0.0.1:{quic_port}"))
            && !headers.contains("https:;"),
        "{headers}"
    );
    assert!(!headers.contains("strict-transport-security"), "plain HTTP");
    // A build file that does not exist is 404, not the page under its name.
    let (status, _, body) = http_get(&server.page, "/assets/missing-0123.js");
    assert!(status.contains(" 404 "), "{status}");
    assert!(!body.contains("<title>index</title>"));
    // The page's own routes reload into the page.
    let (status, _, body) = http_get(&server.page, "/customers/cus-1");
    assert!(status.contains(" 200 "), "{status}");
    assert!(body.contains("<title>index</title>"));
    // Nothing outside the directory.
    let (status, _, body) = http_get(&server.page, "/../Cargo.toml");
    assert!(!body.contains("[package]"), "{status}");
}

/// The page's device (the same Rust the page runs as WebAssembly), driven the
/// way the page's pump drives it, over real WebTransport sessions.
struct PageDriver {
    replica: callsync_web::replica::Replica,
    server: String,
    hashes: Vec<String>,
    link: Option<(
        web_transport_quinn::Session,
        web_transport_quinn::SendStream,
        web_transport_quinn::RecvStream,
    )>,
    /// What the page would have put in IndexedDB.
    persisted: std::collections::BTreeMap<String, Vec<u8>>,
    events: Vec<Value>,
}

fn page_now() -> callsync_core::Timestamp {
    callsync_core::Timestamp::from_millis(chrono_now())
}

impl PageDriver {
    /// Logs in as the page does (the login frame on its own session), then joins
    /// on a second session and waits for the catch-up.
    async fn log_in(server: &ServerProcess, hashes: &[String], email: &str) -> Self {
        // Each page its own randomness (a page draws it from the browser's).
        let seed = email
            .bytes()
            .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        let mut replica = callsync_web::replica::Replica::new(seed, 60_000);
        let session = web_session(server, hashes, "/callsync").await.unwrap();
        let (mut send, mut recv) = session.open_bi().await.unwrap();
        let frame = replica.login_start(page_now(), email, PASSWORD).unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut send, &frame)
            .await
            .unwrap();
        let reply = loop {
            let mut buf = vec![0u8; 4096];
            let n = recv.read(&mut buf).await.unwrap().unwrap();
            if let Some(reply) = replica.login_receive(page_now(), &buf[..n]).unwrap() {
                break reply;
            }
        };
        assert!(
            reply.get("loggedIn").is_some(),
            "{email} not logged in: {reply}"
        );
        let mut page = PageDriver {
            replica,
            server: server.addr.clone(),
            hashes: hashes.to_vec(),
            link: None,
            persisted: Default::default(),
            events: Vec::new(),
        };
        page.release().await;
        page.replica.start(page_now()).unwrap();
        page.release().await;
        page.until(|e| e["event"] == "caught-up").await;
        page
    }

    /// Asks the server `call` (the wire's JSON) and waits for the answer.
    async fn ask(&mut self, call: &str) -> Value {
        let ticket = self.replica.ask(page_now(), call).unwrap();
        self.release().await;
        self.until(|e| e["event"] == "reply" && e["ticket"] == ticket)
            .await["result"]
            .clone()
    }

    /// Persists, then carries out the steps the engine releases: the page's order.
    async fn release(&mut self) {
        loop {
            while let Some((ticket, records)) = self.replica.take_flush() {
                for (key, value) in records {
                    match value {
                        Some(bytes) => self.persisted.insert(key, bytes),
                        None => self.persisted.remove(&key),
                    };
                }
                self.replica.flushed(page_now(), ticket, true).unwrap();
            }
            let steps = self.replica.take_outgoing();
            if steps.is_empty() {
                break;
            }
            for step in steps {
                match step {
                    callsync_web::replica::Step::Connect => {
                        let session = web_session_at(&self.server, &self.hashes, "/callsync")
                            .await
                            .unwrap();
                        let (send, recv) = session.open_bi().await.unwrap();
                        self.link = Some((session, send, recv));
                        self.replica.connected(page_now()).unwrap();
                    }
                    callsync_web::replica::Step::Send(bytes) => {
                        let (_, send, _) = self.link.as_mut().expect("connected");
                        tokio::io::AsyncWriteExt::write_all(send, &bytes)
                            .await
                            .unwrap();
                    }
                    callsync_web::replica::Step::Close => self.link = None,
                }
            }
        }
        self.events.extend(self.replica.take_events());
    }

    /// Reads until `done` holds of an event (10 s at most).
    async fn until(&mut self, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(found) = self.events.iter().find(|e| done(e)) {
                return found.clone();
            }
            self.read_once(deadline).await;
        }
    }

    /// Reads what the stream has and handles it, as the page does per chunk.
    async fn read_once(&mut self, deadline: tokio::time::Instant) {
        let mut buf = vec![0u8; 64 * 1024];
        let (_, _, recv) = self.link.as_mut().expect("connected");
        let read = tokio::time::timeout_at(deadline, recv.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("timed out; events so far: {:?}", self.events))
            .unwrap()
            .expect("the server ended the stream");
        self.replica.receive(page_now(), &buf[..read]).unwrap();
        self.release().await;
    }
}

#[test]
fn the_pages_replica_catches_up_opens_a_customer_and_requests_a_call_the_phone_gets() {
    let world = crate::network::World::start(&[]);
    let (_desk, phone) = world.rep_devices();
    let mut phone_run = crate::network::PhoneRun::start(&phone);
    let hashes = certificate_hashes(&world.server);
    let call = runtime().block_on(async {
        let mut page = PageDriver::log_in(&world.server, &hashes, crate::network::REP).await;

        // The customer list, kept for offline use.
        let ticket = page.replica.list_customers(page_now(), "").unwrap();
        page.release().await;
        let reply = page
            .until(|e| e["event"] == "reply" && e["ticket"] == ticket)
            .await;
        assert_eq!(reply["result"]["customers"][0]["id"], "cus-1", "{reply}");
        assert!(page.persisted.contains_key("customers"));
        assert_eq!(page.replica.local_customers("")[0]["company"], "株式会社さくら物産");

        // Opening the customer subscribes to its document, which then syncs here.
        page.replica
            .ask(page_now(), r#"{"method":"subscribe","documents":["cus-1"]}"#)
            .unwrap();
        page.release().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while page.replica.customer("cus-1").unwrap().is_null() {
            page.read_once(deadline).await;
        }
        let held = page.replica.customer("cus-1").unwrap();
        assert_eq!(held["customer"]["company"], "株式会社さくら物産", "{held}");
        assert!(page.persisted.contains_key("doc:cus-1"));

        // The tenant's rules decide a result form's pick for the page (which runs
        // no plugins); a skewed time or an unknown type is refused, nothing saved.
        let now = chrono_now();
        let decide = |result_type: &str, saved_at: i64| {
            format!(
                r#"{{"method":"decide-result","pick":{{"result_type":"{result_type}","option":"none"}},"endedAt":{},"attempt":1,"savedAt":{saved_at}}}"#,
                saved_at - 60_000
            )
        };
        let mut answers = Vec::new();
        for call in [
            decide("appointment", now),
            decide("appointment", now + 3_600_000),
            decide("no-such-type", now),
            decide("appointment", now).replace(r#""attempt":1"#, r#""attempt":0"#),
            decide("appointment", now).replace(
                &format!(r#""endedAt":{}"#, now - 60_000),
                &format!(r#""endedAt":{}"#, now + 60_000),
            ),
        ] {
            answers.push(page.ask(&call).await);
        }
        for impossible in &answers[3..] {
            assert_eq!(impossible["refused"]["code"], "bad-request", "{impossible}");
        }
        assert_eq!(
            answers[0]["decided"]["decision"]["plugin"]["id"], "standard",
            "{}",
            answers[0]
        );
        assert_eq!(answers[1]["refused"]["code"], "bad-request", "{}", answers[1]);
        assert_eq!(
            answers[2]["refused"]["code"], "result-not-decided",
            "{}",
            answers[2]
        );

        // 顧客にコール: the phone is asked to dial.
        let view = page
            .replica
            .request_call(page_now(), "cus-1", crate::network::NUMBER, "phone-rep", true)
            .unwrap();
        let call = view.call.to_string();
        assert_eq!(view.phase.as_str(), "awaiting-start");
        page.release().await;
        assert!(
            page.persisted.contains_key("outbox:cus-1"),
            "persisted before it is sent"
        );
        page.until(|e| e["event"] == "acknowledged" && e["customer"] == "cus-1")
            .await;
        assert!(!page.persisted.contains_key("outbox:cus-1"));
        call
    });
    let requested = phone_run.wait_for(|e| e["event"] == "call-requested");
    assert_eq!(requested["call"], call);
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `GET path` over HTTPS, trusting exactly `cert_der`.
fn https_get(page: &str, path: &str, cert_der: &[u8]) -> (String, String) {
    use std::sync::Arc;
    let host = page
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_owned();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(cert_der.to_vec()))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(&host).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    // The server may close without a TLS close_notify; what was read counts.
    let _ = tls.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    // The status line and the headers, lowercase.
    (head.to_ascii_lowercase(), body.to_owned())
}

#[test]
fn with_a_given_certificate_the_page_is_served_over_https_and_no_hash_is_handed_out() {
    let root = tempfile::tempdir().unwrap();
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let (cert, key) = (root.path().join("cert.pem"), root.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let server = ServerProcess::start(
        &root.path().join("server"),
        "127.0.0.1:0",
        &[],
        &[
            "--init-owner",
            OWNER,
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert!(server.page.starts_with("https://"), "{}", server.page);
    let (status, body) = https_get(&server.page, "/api/transport", certified.cert.der());
    assert!(status.contains(" 200 "), "{status}");
    assert!(
        status.contains("strict-transport-security: max-age=31536000"),
        "{status}"
    );
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["certificateHashes"], serde_json::json!([]));
    // Plain HTTP on the TLS port gets no page.
    let host = server
        .page
        .trim_start_matches("https://")
        .trim_end_matches('/');
    let mut plain = TcpStream::connect(host).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(plain, "GET /api/transport HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!String::from_utf8_lossy(&answer).contains("certificateHashes"));
}

#[test]
fn call_stats_need_a_manager_and_a_period_of_at_most_400_days() {
    let world = crate::network::World::start(&[]);
    let hashes = certificate_hashes(&world.server);
    let stats =
        |from: i64, to: i64| format!(r#"{{"method":"call-stats","from":{from},"to":{to}}}"#);
    let day = 24 * 3600 * 1000;
    runtime().block_on(async {
        let mut rep = PageDriver::log_in(&world.server, &hashes, crate::network::REP).await;
        let refused = rep.ask(&stats(0, day)).await;
        assert_eq!(refused["refused"]["code"], "role-required", "{refused}");
        assert_eq!(
            refused["refused"]["messageJa"],
            "この操作にはマネージャー以上の権限が必要です"
        );
        let mut owner = PageDriver::log_in(&world.server, &hashes, OWNER).await;
        for (from, to) in [(day, day), (2 * day, day), (0, 401 * day)] {
            let refused = owner.ask(&stats(from, to)).await;
            assert_eq!(
                refused["refused"]["code"], "bad-request",
                "{from}..{to}: {refused}"
            );
        }
        let answer = owner.ask(&stats(0, 400 * day)).await;
        assert_eq!(answer["call-stats"], serde_json::json!([]), "{answer}");
    });
}
