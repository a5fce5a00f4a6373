//! One connection, native QUIC or a browser's WebTransport session: handshake,
//! authentication, then relaying messages.
//!
//! Both kinds arrive on the same UDP port and are told apart by ALPN. A browser's
//! connection first completes WebTransport's HTTP/3 `CONNECT` to [`WEB_PATH`];
//! from then on both carry the same frames on one bidirectional stream through
//! the same code (a native connection is wrapped as a raw session, which adds no
//! bytes on the wire).
//!
//! Owns: the per-connection limits (one deadline to open the stream and send the
//! first message, a 4 KiB first frame and a small receive window until `join`,
//! the caps per member and device, message rate, frame size via the framing
//! layer, large frames decoded off the async workers, a writer stalled 30 s cut
//! off), the WebTransport `Origin` check, `login`, checking a `join`'s token,
//! answering account requests and result decisions, and carrying the hub's
//! frames out with their bytes counted.
//! A peer that misbehaves gets one `error` message and is disconnected; nothing
//! it sent is stored. Nothing here panics on input.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use callsync_core::wire::WireError;
use callsync_core::wire::{self, ErrorBody, Message, Refusal};
use callsync_net::NetError;
use callsync_net::framing::{read_frame_within, read_message_within, write_frame, write_message};
use callsync_session::connection::{ServerConnection, Step, sessions_ended_by};
use callsync_session::hub::HubInput;
use callsync_store::Store;
use tokio::sync::{Mutex, Semaphore, mpsc};
use web_transport_quinn::{RecvStream, SendStream, Session as Link};

use crate::accounts::{self, AuthError, Session};
use crate::clock;
use crate::hub::{DriverInput, Gauge, Hubs, Outbox, Outgoing};
use crate::limits::{AddressSlot, ConnectionLimits};
use crate::throttle::{LoginThrottle, Throttled};

pub use callsync_session::connection::{RATE_BURST, RATE_PER_SEC};

/// How long a new connection has, by default, to open its stream and send its
/// first message.
pub const HANDSHAKE_TIMEOUT: Duration =
    Duration::from_millis(callsync_session::connection::HANDSHAKE_TIMEOUT_MS as u64);
/// Frames queued for a connection before it counts as too slow.
const OUT_QUEUE: usize = 4_096;
/// The QUIC close code of a connection the server cut off (its reason says why).
const CUT_OFF: u32 = 2;

/// What every connection task shares.
pub(crate) struct Shared {
    /// Every tenant's hub. Each has a bounded queue: a connection waits for room
    /// (and stops reading its stream meanwhile, so QUIC flow control slows the
    /// device) rather than growing the queue without bound.
    pub(crate) hubs: Arc<Hubs>,
    pub(crate) accounts: Mutex<Store>,
    pub(crate) next_conn: AtomicU64,
    pub(crate) session_ttl_ms: i64,
    /// Argon2 is slow by design; at most this many hash at once, so a login
    /// storm cannot starve sync. Never held together with `accounts`: hashing
    /// happens with no lock held, and the lock is taken only after the permit is
    /// released (one order, so no cycle).
    pub(crate) hashing: Semaphore,
    /// Plugin checks and compiles, one at a time, apart from `hashing` so that
    /// installs never hold up a login.
    pub(crate) compiling: Semaphore,
    /// Result decisions run for browsers, two at a time, apart from installs.
    pub(crate) deciding: Semaphore,
    /// Large frames decoded at once, on the blocking pool: fewer than the async
    /// workers, so large decodes never occupy all of them.
    pub(crate) decoding: Semaphore,
    /// The server's Automerge actor (hex), which no device may bind.
    pub(crate) server_actor: String,
    /// Login attempts per address and per account (checked before hashing).
    pub(crate) throttle: std::sync::Mutex<LoginThrottle>,
    /// How long a new connection has to open its stream and say `login`/`join`.
    pub(crate) handshake_timeout: Duration,
    /// Checks and compiles plugins on install (here, not on a hub's thread).
    pub(crate) plugins: Arc<callsync_plugin_host::PluginHost>,
    /// Connections per address, member and device.
    pub(crate) limits: Arc<ConnectionLimits>,
    /// Which web pages may open WebTransport sessions.
    pub(crate) origins: crate::web::PageOrigins,
    /// Each tenant's share of plugin time (its hub's re-checks and decisions).
    pub(crate) plugin_shares: Arc<crate::rules::PluginShares>,
    /// Each member's rate of `decide-result`.
    pub(crate) decides: crate::limits::RatePerKey<callsync_core::UserId>,
    /// The recordings' blob store and the rates of their streams.
    pub(crate) recordings: crate::recordings::Recordings,
    /// Signs the links recordings play from in the page.
    pub(crate) playback: Arc<crate::playback::Playback>,
    /// Each tenant's turn at [`Self::compiling`].
    pub(crate) tenant_compiles:
        std::sync::Mutex<std::collections::HashMap<callsync_core::TenantId, Arc<Semaphore>>>,
}

impl Shared {
    /// The tenant's own compile permit (taken before the server's).
    fn tenant_compile(&self, tenant: &callsync_core::TenantId) -> Arc<Semaphore> {
        self.tenant_compiles
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(tenant.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(1)))
            .clone()
    }
}

fn net_error_body(e: &NetError) -> ErrorBody {
    match e {
        NetError::Wire(w) => Refusal::from(w).body(),
        other => Refusal::Transport {
            detail: other.to_string(),
        }
        .body(),
    }
}

/// Sends `error`, lets the peer read it, and closes.
async fn refuse(connection: &Link, send: &mut SendStream, error: ErrorBody) {
    tracing::info!(code = %error.code, remote = %connection.remote_address(), "refusing connection");
    let _ = write_message(send, &Message::Error(error)).await;
    finish_and_close(connection, send).await;
}

/// How long a peer has to read a connection's last message and close.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Finishes the stream and leaves the close to the peer, for up to
/// [`CLOSE_GRACE`]. Waiting for the data to be acknowledged is not enough: a
/// browser acknowledges stream data before the page reads it, and drops what is
/// unread when the connection closes, so the page would see "Connection lost"
/// instead of the login reply or the refusal.
async fn finish_and_close(connection: &Link, send: &mut SendStream) {
    let _ = send.finish();
    let _ = tokio::time::timeout(CLOSE_GRACE, connection.closed()).await;
    connection.close(0, b"bye");
}

/// The WebTransport URL path a page connects to (`https://host:port/callsync`).
pub const WEB_PATH: &str = "/callsync";

/// Opens a connection's session: native QUIC as is, WebTransport after its
/// HTTP/3 `CONNECT` (any other path is answered 404). `None` when the peer did
/// not get that far in time.
async fn open_link(
    connection: quinn::Connection,
    deadline: tokio::time::Instant,
    origins: &crate::web::PageOrigins,
) -> Option<Link> {
    let alpn = connection
        .handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol);
    if alpn.as_deref() != Some(callsync_net::web::WEBTRANSPORT_ALPN) {
        let link = Link::raw(connection.clone());
        // The protocol has no use for unidirectional streams: stop any a native
        // peer opens, so they hold no buffers.
        tokio::spawn(async move {
            while let Ok(mut stream) = connection.accept_uni().await {
                let _ = stream.stop(0u32.into());
            }
        });
        return Some(link);
    }
    let request = match tokio::time::timeout_at(
        deadline,
        web_transport_quinn::Request::accept(connection.clone()),
    )
    .await
    {
        Ok(Ok(request)) => request,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "WebTransport handshake failed");
            connection.close(1u32.into(), b"not a WebTransport session");
            return None;
        }
        Err(_) => {
            connection.close(1u32.into(), b"no WebTransport session opened in time");
            return None;
        }
    };
    if request.url.path() != WEB_PATH {
        let _ = request.reject(http::StatusCode::NOT_FOUND).await;
        connection.close(1u32.into(), b"no such path");
        return None;
    }
    // A page of another site must not spend this address's login allowance, or
    // act with the cookies-free but still local position of an office browser.
    let origin = request
        .headers
        .get(http::header::ORIGIN)
        .and_then(|o| o.to_str().ok());
    if !origins.allow(origin, &request.url) {
        tracing::info!(origin = ?origin, remote = %connection.remote_address(), "refused a WebTransport session from a foreign origin");
        let _ = request.reject(http::StatusCode::FORBIDDEN).await;
        connection.close(1u32.into(), b"origin not allowed");
        return None;
    }
    match request.ok().await {
        Ok(session) => Some(session),
        Err(e) => {
            tracing::debug!(error = %e, "WebTransport session not accepted");
            None
        }
    }
}

/// Serves one incoming connection to its end.
pub(crate) async fn serve(incoming: quinn::Incoming, shared: Arc<Shared>, address: AddressSlot) {
    // One deadline for everything before the peer has said who it is: the QUIC
    // handshake, a browser's CONNECT, opening the stream and the first message.
    let deadline = tokio::time::Instant::now() + shared.handshake_timeout;
    let connection = match tokio::time::timeout_at(deadline, incoming).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!("QUIC handshake not finished in time");
            return;
        }
    };
    let quic = connection.clone();
    let Some(connection) = open_link(connection, deadline, &shared.origins).await else {
        return;
    };
    let (mut send, mut recv) = match tokio::time::timeout_at(deadline, connection.accept_bi()).await
    {
        Ok(Ok(streams)) => streams,
        _ => {
            connection.close(1, b"no stream opened in time");
            return;
        }
    };
    let mut protocol =
        ServerConnection::new(clock::now(), shared.handshake_timeout.as_millis() as i64);
    // Before anyone is authenticated, a first frame larger than a `login` or
    // `join` is refused unread (and the QUIC receive window is small).
    let first = match tokio::time::timeout_at(
        deadline,
        read_message_within(&mut recv, wire::MAX_FIRST_FRAME_BYTES),
    )
    .await
    {
        Ok(Ok(Some(message))) => message,
        Ok(Ok(None)) => {
            connection.close(0, b"bye");
            return;
        }
        Ok(Err(e)) => return refuse(&connection, &mut send, net_error_body(&e)).await,
        Err(_) => return refuse(&connection, &mut send, protocol.timed_out()).await,
    };
    match protocol.receive(clock::now(), first) {
        Step::Login {
            email,
            password,
            device,
        } => {
            let address = connection.remote_address().ip();
            let reply = login(&shared, address, email, password, device).await;
            let _ = write_message(&mut send, &reply).await;
            finish_and_close(&connection, &mut send).await;
        }
        Step::Logout { token } => {
            let reply = logout(&shared, &token).await;
            let _ = write_message(&mut send, &reply).await;
            finish_and_close(&connection, &mut send).await;
        }
        Step::Authenticate {
            token,
            device,
            cursor,
        } => {
            let outcome = authenticate(&shared, token, device)
                .await
                .map_err(|e| e.body());
            if let Err(error) = protocol.joined(clock::now(), outcome) {
                return refuse(&connection, &mut send, error).await;
            }
            // Authenticated: the connection may now have a frame's worth in flight.
            quic.set_receive_window(callsync_net::tls::CONNECTION_RECEIVE_WINDOW.into());
            run_session(connection, send, recv, shared, protocol, cursor, address).await;
        }
        Step::Refuse(error) => refuse(&connection, &mut send, error).await,
        other => {
            tracing::error!(step = ?other, "a first message led nowhere");
            refuse(&connection, &mut send, Refusal::ShuttingDown.body()).await;
        }
    }
}

/// The refusal of a login attempt that came too soon.
fn throttled(t: Throttled) -> Message {
    let seconds = t.retry_after.as_secs().max(1);
    Message::Error(
        Refusal::LoginThrottled {
            retry_after_secs: seconds,
        }
        .body(),
    )
}

fn throttle(shared: &Shared) -> std::sync::MutexGuard<'_, LoginThrottle> {
    // The throttle's state stays consistent at every step, so a poisoned lock
    // (a panic elsewhere while held) is still safe to use.
    shared
        .throttle
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Logs in, in three steps that never hold a lock while hashing: read the member
/// (accounts lock), check the password (a hashing permit, no lock), open the
/// session (accounts lock). The throttle is asked first, so a refused attempt
/// costs no hashing.
async fn login(
    shared: &Shared,
    address: std::net::IpAddr,
    email: String,
    password: String,
    device: wire::DeviceRegistration,
) -> Message {
    let account = email.trim().to_lowercase();
    if account.chars().count() > crate::throttle::MAX_ACCOUNT_CHARS {
        // No member has such an email; refused before it can become a throttle key.
        return Message::Error(AuthError::InvalidCredentials.body());
    }
    if let Err(t) = throttle(shared).begin(&account, address, Instant::now()) {
        tracing::info!(%address, "login throttled");
        return throttled(t);
    }
    let member = {
        let store = shared.accounts.lock().await;
        tokio::task::block_in_place(|| accounts::find_member(&store, &email))
    };
    let checked = match member {
        Ok(member) => {
            let Ok(_permit) = shared.hashing.acquire().await else {
                return Message::Error(AuthError::Hash("shutting down".to_owned()).body());
            };
            tokio::task::spawn_blocking(move || accounts::check_password(member, &password))
                .await
                .unwrap_or_else(|e| Err(AuthError::Hash(e.to_string())))
        }
        Err(e) => Err(e),
    };
    let result = match checked {
        Ok(member) => {
            throttle(shared).succeeded(&account, address, Instant::now());
            let mut store = shared.accounts.lock().await;
            tokio::task::block_in_place(|| {
                accounts::open_session(
                    &mut store,
                    &member,
                    &device,
                    &shared.server_actor,
                    clock::now(),
                    shared.session_ttl_ms,
                )
            })
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(done) => {
            tracing::info!(user = %done.member.email, device = %device.id, "logged in");
            Message::LoggedIn {
                token: done.token,
                expires_at: done.expires_at,
                tenant: done.member.tenant,
                user: done.member.email,
                role: done.member.role,
                server_time: Some(clock::now()),
            }
        }
        Err(e) => {
            tracing::info!(code = %e.body().code, device = %device.id, "login refused");
            Message::Error(e.body())
        }
    }
}

/// An account request: the new password (if any) is hashed under a hashing
/// permit with no lock held; the permit is released before the accounts lock is
/// taken for the short database work.
async fn account_request(
    shared: &Shared,
    session: &Session,
    call: &wire::RpcCall,
) -> Result<wire::RpcResult, AuthError> {
    let hashes = matches!(
        call,
        wire::RpcCall::UserAdd { .. } | wire::RpcCall::UserResetPassword { .. }
    );
    let hashed = if !hashes {
        None
    } else {
        let Ok(_permit) = shared.hashing.acquire().await else {
            return Err(AuthError::Hash("shutting down".to_owned()));
        };
        let (session, call) = (session.clone(), call.clone());
        tokio::task::spawn_blocking(move || accounts::hash_for(&session, &call))
            .await
            .unwrap_or_else(|e| Err(AuthError::Hash(e.to_string())))?
    };
    let mut store = shared.accounts.lock().await;
    tokio::task::block_in_place(|| {
        accounts::account_call(&mut store, session, call, hashed, clock::now())
    })
}

/// Ends the session with `token` (a logout): answered `logged-out` whether or not
/// the token still worked, so a device that logged out offline can end it later.
async fn logout(shared: &Shared, token: &str) -> Message {
    let hash = accounts::token_hash(token);
    let mut store = shared.accounts.lock().await;
    match tokio::task::block_in_place(|| store.end_session(&hash)) {
        Ok(ended) => {
            tracing::info!(ended, "logout");
            Message::LoggedOut
        }
        Err(e) => {
            tracing::error!(error = %e, "a logout could not be stored");
            Message::Error(Refusal::ServerTrouble.body())
        }
    }
}

async fn authenticate(
    shared: &Shared,
    token: String,
    device: callsync_core::DeviceId,
) -> Result<Session, AuthError> {
    let store = shared.accounts.lock().await;
    tokio::task::block_in_place(|| accounts::authenticate(&store, &token, &device, clock::now()))
}

async fn run_session(
    connection: Link,
    mut send: SendStream,
    mut recv: RecvStream,
    shared: Arc<Shared>,
    mut protocol: ServerConnection,
    cursor: Option<wire::Cursor>,
    mut address: AddressSlot,
) {
    let Some(member) = protocol.member().cloned() else {
        return refuse(&connection, &mut send, shutting_down()).await;
    };
    let hub = match tokio::task::block_in_place(|| shared.hubs.sender(&member.tenant)) {
        Ok(hub) => hub,
        Err(e) => {
            tracing::error!(tenant = %member.tenant, error = %e, "the tenant's hub could not start");
            return refuse(&connection, &mut send, shutting_down()).await;
        }
    };
    let _member_slot = match shared.limits.join(&member, &mut address) {
        Ok(slot) => slot,
        Err(refusal) => {
            tracing::info!(device = %member.device, code = refusal.code(), "refusing a connection over its cap");
            return refuse(&connection, &mut send, refusal.body()).await;
        }
    };
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let gauge = shared.hubs.gauge();
    let (out, mut outgoing) = mpsc::channel::<Outgoing>(OUT_QUEUE);
    let out = Queue {
        sender: out,
        gauge: gauge.clone(),
    };
    let (cut_off, mut cut_off_signal) = tokio::sync::watch::channel(None);
    let started = Arc::new(AtomicU64::new(0));
    if hub
        .send(DriverInput::Open {
            conn,
            member: member.clone(),
            cursor,
            out: Outbox {
                queue: out.sender.clone(),
                cut_off,
                started: started.clone(),
                gauge: gauge.clone(),
            },
        })
        .await
        .is_err()
    {
        return refuse(&connection, &mut send, shutting_down()).await;
    }
    // The hub cuts a connection off when its writer is stuck (the device does not
    // read): closing the connection fails the stuck write, and the reader's next
    // read, so both tasks end.
    let watched = connection.clone();
    tokio::spawn(async move {
        tokio::select! {
            reason = cut_off_signal.wait_for(Option::is_some) => {
                let reason = reason
                    .ok()
                    .and_then(|r| r.as_ref().map(|b| format!("{}: {}", b.code, b.message)));
                if let Some(reason) = reason {
                    tracing::info!(remote = %watched.remote_address(), %reason, "cutting a connection off");
                    watched.close(CUT_OFF, reason.as_bytes());
                }
            }
            _ = watched.closed() => {}
        }
    });
    // Recordings travel on streams of their own beside this one.
    let streams = tokio::spawn(crate::recordings::accept_streams(
        connection.clone(),
        shared.clone(),
        conn,
        member.clone(),
    ));
    let writer_connection = connection.clone();
    let writer = tokio::spawn(async move {
        while let Some(item) = outgoing.recv().await {
            match item {
                Outgoing::Frame(frame) => {
                    let written =
                        tokio::time::timeout(WRITE_STALL, write_frame(&mut send, &frame)).await;
                    gauge.sub(frame.len());
                    match written {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break,
                        Err(_) => {
                            // The device has read nothing for this long.
                            cut_off_too_slow(&writer_connection);
                            break;
                        }
                    }
                }
                Outgoing::Close(error) => {
                    refuse(&writer_connection, &mut send, error).await;
                    break;
                }
            }
        }
        // What is still queued will never be written: give its bytes back.
        outgoing.close();
        while let Some(item) = outgoing.recv().await {
            if let Outgoing::Frame(frame) = item {
                gauge.sub(frame.len());
            }
        }
    });
    loop {
        let message = match read_frame_within(&mut recv, wire::MAX_FRAME_BYTES).await {
            Ok(Some(body)) => decode(&shared, body).await.map_err(NetError::Wire),
            Ok(None) => break,
            Err(e) => Err(e),
        };
        let message = match message {
            Ok(message) => message,
            Err(NetError::Wire(e)) => {
                deliver(
                    &out,
                    &connection,
                    Outgoing::Close(net_error_body(&NetError::Wire(e))),
                )
                .await;
                break;
            }
            Err(_) => break,
        };
        protocol.server_started(started.swap(0, Ordering::Relaxed));
        let mut step = protocol.receive(clock::now(), message);
        if let Step::Recheck { token, device } = step {
            let outcome = authenticate(&shared, token, device)
                .await
                .map_err(|e| e.body());
            step = protocol.rechecked(clock::now(), outcome);
        }
        let carried_on = match step {
            Step::Hub(message) => {
                if hub
                    .send(DriverInput::Session(HubInput::Received { conn, message }))
                    .await
                    .is_err()
                {
                    deliver(&out, &connection, Outgoing::Close(shutting_down())).await;
                    false
                } else {
                    true
                }
            }
            Step::Account { id, call } => {
                let Some(member) = protocol.member().cloned() else {
                    break;
                };
                let result = match account_request(&shared, &member, &call).await {
                    Ok(result) => {
                        tracing::info!(admin = %member.user, method = call.method(), "account change");
                        if let Some((user, reason)) = sessions_ended_by(&call) {
                            let _ = hub
                                .send(DriverInput::Session(HubInput::EndSessions { user, reason }))
                                .await;
                        }
                        result
                    }
                    Err(e) => wire::RpcResult::Refused(e.body()),
                };
                reply(&out, &connection, Message::Reply { id, result }).await
            }
            Step::Install { id, call } => {
                let Some(tenant) = protocol.member().map(|m| m.tenant.clone()) else {
                    break;
                };
                let asked = Asked {
                    conn,
                    tenant: &tenant,
                    id,
                };
                install(&shared, &hub, &out, &connection, asked, call).await
            }
            Step::Decide { id, call } => {
                let Some(member) = protocol.member().cloned() else {
                    break;
                };
                let result = decide_result(&shared, &member, call).await;
                reply(&out, &connection, Message::Reply { id, result }).await
            }
            Step::RecordingLink { id, call } => {
                let result = crate::recordings::link(&shared, conn, &member, call).await;
                reply(&out, &connection, Message::Reply { id, result }).await
            }
            Step::Reply(message) => reply(&out, &connection, message).await,
            Step::Refuse(error) => {
                deliver(&out, &connection, Outgoing::Close(error)).await;
                false
            }
            Step::Leave => false,
            Step::Continue => true,
            other => {
                tracing::error!(step = ?other, "a joined connection's message led nowhere");
                deliver(&out, &connection, Outgoing::Close(shutting_down())).await;
                false
            }
        };
        if !carried_on {
            break;
        }
    }
    streams.abort();
    let _ = hub
        .send(DriverInput::Session(HubInput::Closed { conn }))
        .await;
    drop(out);
    let _ = tokio::time::timeout(Duration::from_secs(3), writer).await;
    connection.close(0, b"bye");
}

/// Frames up to this size are decoded where they are read; larger ones on the
/// blocking pool under [`Shared::decoding`].
const LARGE_FRAME_BYTES: usize = 64 * 1024;

/// Decodes a joined connection's frame. Decoding is bounded in what it allocates
/// (see `wire::decode_body`), but an 8 MiB frame still takes milliseconds: a
/// large one waits for a decoding permit and runs off the async workers.
async fn decode(shared: &Shared, body: Vec<u8>) -> Result<Message, WireError> {
    if body.len() <= LARGE_FRAME_BYTES {
        return wire::decode_body(&body);
    }
    let Ok(_permit) = shared.decoding.acquire().await else {
        return Err(WireError::Malformed(
            "the server is shutting down".to_owned(),
        ));
    };
    tokio::task::spawn_blocking(move || wire::decode_body(&body))
        .await
        .unwrap_or_else(|e| Err(WireError::Malformed(e.to_string())))
}

/// A connection's writer queue as the connection's own task fills it (replies it
/// answers itself, its closing message), counting frames' bytes like the hub.
#[derive(Clone)]
struct Queue {
    sender: mpsc::Sender<Outgoing>,
    gauge: Gauge,
}

/// How long the writer may wait for the device to take one frame before the
/// connection counts as stuck: a device that reads nothing for this long is cut
/// off (it reconnects and catches up when it reads again).
const WRITE_STALL: Duration = Duration::from_secs(30);

/// Closes a connection as too slow (close code [`CUT_OFF`], reason `too-slow`).
fn cut_off_too_slow(connection: &Link) {
    let refusal = Refusal::TooSlow.body();
    tracing::info!(remote = %connection.remote_address(), "cutting off a connection that stopped reading");
    connection.close(
        CUT_OFF,
        format!("{}: {}", refusal.code, refusal.message).as_bytes(),
    );
}

/// Queues a reply for the connection's writer. False when the connection is done.
async fn reply(out: &Queue, connection: &Link, message: Message) -> bool {
    match wire::encode_frame(&message) {
        Ok(frame) => deliver(out, connection, Outgoing::Frame(Arc::new(frame))).await,
        Err(e) => {
            tracing::error!(error = %e, "could not encode a reply");
            true
        }
    }
}

/// Decides a result form's pick with the tenant's active rule set, for a device
/// that runs no plugins (the browser). In order, so that a flood costs its
/// sender and no one else: the member's rate of decisions, a decision permit
/// (at most `deciding`'s at once, apart from installs' compiles), the tenant's
/// share of plugin time (the same one its hub's re-checks draw on), then the
/// configuration as kept (read, on a miss, over a connection of its own: no lock
/// logins and joins wait on), and the plugin.
async fn decide_result(shared: &Shared, member: &Session, call: wire::RpcCall) -> wire::RpcResult {
    let refused = |refusal: Refusal| wire::RpcResult::Refused(refusal.body());
    if let Err(refusal) = callsync_session::connection::check_decide_request(clock::now(), &call) {
        return refused(refusal);
    }
    let wire::RpcCall::DecideResult {
        pick,
        ended_at,
        attempt,
        saved_at,
    } = call
    else {
        return wire::RpcResult::Done;
    };
    if !shared.decides.allow(&member.user, Instant::now()) {
        return refused(Refusal::Busy);
    }
    let Ok(_permit) = shared.deciding.acquire().await else {
        return refused(Refusal::ShuttingDown);
    };
    if !shared.plugin_shares.has_time(&member.tenant, clock::now()) {
        return refused(Refusal::Busy);
    }
    let doc = match shared.hubs.tenant_config(&member.tenant).await {
        Ok(Some(doc)) => doc,
        Ok(None) => {
            let e = callsync_plugin_host::decide::DecideError::NoRules;
            return refused(Refusal::ResultNotDecided {
                reason: e.code(),
                en: e.to_string(),
                ja: e.message_ja(),
            });
        }
        Err(e) => {
            tracing::error!(error = %e, "could not read the tenant configuration");
            return refused(Refusal::ConfigUnreadable);
        }
    };
    let facts = callsync_core::plugin::CallFacts { ended_at, attempt };
    let started = Instant::now();
    let decided = tokio::task::block_in_place(|| {
        callsync_plugin_host::decide::decide(&shared.plugins, &doc, &pick, facts, saved_at)
    });
    shared
        .plugin_shares
        .charge(&member.tenant, started.elapsed());
    match decided {
        Ok(decided) => wire::RpcResult::Decided(wire::DecidedResult {
            option: decided.option,
            customer_status: decided.customer_status,
            decision: decided.record,
        }),
        Err(e) => refused(Refusal::ResultNotDecided {
            reason: e.code(),
            en: e.to_string(),
            ja: e.message_ja(),
        }),
    }
}

/// Who asked for an install: the connection, its tenant and the request's id.
struct Asked<'a> {
    conn: callsync_session::ConnId,
    tenant: &'a callsync_core::TenantId,
    id: u64,
}

/// Checks and compiles a plugin here, off the hub's thread; only a plugin that
/// passed goes to the hub to be published. False when the connection is done.
async fn install(
    shared: &Shared,
    hub: &mpsc::Sender<DriverInput>,
    out: &Queue,
    connection: &Link,
    asked: Asked<'_>,
    call: wire::RpcCall,
) -> bool {
    let Asked { conn, tenant, id } = asked;
    let wire::RpcCall::PluginInstall {
        file,
        settings,
        holidays,
        time_zone,
    } = call
    else {
        return true;
    };
    let prepared = {
        // One compile per tenant waits for the server's compile permit at a
        // time, so a tenant's admins queueing installs delay another tenant's
        // install by one compile at most.
        let _tenant_permit = shared.tenant_compile(tenant).acquire_owned().await;
        let _permit = shared.compiling.acquire().await;
        let request = callsync_plugin_host::install::InstallRequest {
            file: &file,
            settings,
            holidays,
            time_zone,
        };
        tokio::task::block_in_place(|| {
            callsync_plugin_host::install::prepare(&shared.plugins, request, clock::now())
        })
    };
    match prepared {
        Ok(prepared) => {
            let publish = DriverInput::Session(HubInput::Publish {
                conn,
                id,
                prepared: Box::new(prepared),
            });
            if hub.send(publish).await.is_err() {
                deliver(out, connection, Outgoing::Close(shutting_down())).await;
                return false;
            }
            true
        }
        Err(err) => {
            tracing::warn!(code = err.code(), error = %err, "plugin install refused");
            let error = Refusal::InstallRefused {
                code: err.code(),
                detail: err.to_string(),
                ja: err.message_ja(),
            }
            .body();
            reply(
                out,
                connection,
                Message::Reply {
                    id,
                    result: wire::RpcResult::Refused(error),
                },
            )
            .await
        }
    }
}

/// How long the reader waits for room in its writer's queue before deciding the
/// device has stopped reading.
const DELIVER_WAIT: Duration = Duration::from_secs(2);

/// Queues `item` for the connection's writer. A queue still full after
/// [`DELIVER_WAIT`] means the device stopped reading: the connection is cut off
/// (close code [`CUT_OFF`], reason `too-slow`) rather than the reader blocking on
/// it for good. False when the connection is done.
async fn deliver(out: &Queue, connection: &Link, item: Outgoing) -> bool {
    let len = match &item {
        Outgoing::Frame(frame) => frame.len(),
        Outgoing::Close(_) => 0,
    };
    if len > 0 && out.gauge.would_overflow(len) {
        // Replies the device never reads, up to its limit in bytes.
        cut_off_too_slow(connection);
        return false;
    }
    out.gauge.add(len);
    match tokio::time::timeout(DELIVER_WAIT, out.sender.send(item)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => {
            out.gauge.sub(len);
            false
        }
        Err(_) => {
            out.gauge.sub(len);
            cut_off_too_slow(connection);
            false
        }
    }
}

fn shutting_down() -> ErrorBody {
    Refusal::ShuttingDown.body()
}
