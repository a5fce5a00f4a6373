//! One QUIC connection: handshake, authentication, then relaying messages.
//!
//! Owns: the per-connection limits (time to open the stream and send the first
//! message, message rate, frame size via the framing layer), `login`, checking a
//! `join`'s token, answering account requests, and carrying the hub's frames out.
//! A peer that misbehaves gets one `error` message and is disconnected; nothing
//! it sent is stored. Nothing here panics on input.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use callsync_core::wire::{self, ErrorBody, Message, PROTOCOL_VERSION, Refusal};
use callsync_net::NetError;
use callsync_net::framing::{read_message, write_frame, write_message};
use callsync_store::Store;
use tokio::sync::{Mutex, Semaphore, mpsc};

use crate::accounts::{self, AuthError, Session};
use crate::clock;
use crate::hub::{ConnId, HubInput, Outbox, Outgoing};
use crate::throttle::{LoginThrottle, Throttled};

/// How long a new connection has, by default, to open its stream and send its
/// first message.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages a connection may send in a burst …
pub const RATE_BURST: f64 = 2_000.0;
/// … and per second after it.
pub const RATE_PER_SEC: f64 = 1_000.0;
/// Frames queued for a connection before it counts as too slow.
const OUT_QUEUE: usize = 4_096;
/// The QUIC close code of a connection the server cut off (its reason says why).
const CUT_OFF: u32 = 2;
/// How often a long connection re-checks its session (revoked contract, reset
/// password).
const RECHECK_EVERY: Duration = Duration::from_secs(30);

/// What every connection task shares.
pub(crate) struct Shared {
    /// The hub's bounded queue: a connection waits for room (and stops reading
    /// its stream meanwhile, so QUIC flow control slows the device) rather than
    /// growing the queue without bound.
    pub(crate) hub: mpsc::Sender<HubInput>,
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
    /// The server's Automerge actor (hex), which no device may bind.
    pub(crate) server_actor: String,
    /// Login attempts per address and per account (checked before hashing).
    pub(crate) throttle: std::sync::Mutex<LoginThrottle>,
    /// How long a new connection has to open its stream and say `login`/`join`.
    pub(crate) handshake_timeout: Duration,
    /// Checks and compiles plugins on install (here, not on the hub's thread).
    pub(crate) plugins: Arc<callsync_plugin_host::PluginHost>,
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
async fn refuse(connection: &quinn::Connection, send: &mut quinn::SendStream, error: ErrorBody) {
    tracing::info!(code = %error.code, remote = %connection.remote_address(), "refusing connection");
    let _ = write_message(send, &Message::Error(error)).await;
    finish_and_close(connection, send).await;
}

async fn finish_and_close(connection: &quinn::Connection, send: &mut quinn::SendStream) {
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    connection.close(0u32.into(), b"bye");
}

/// Serves one incoming connection to its end.
pub(crate) async fn serve(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let connection = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "handshake failed");
            return;
        }
    };
    let (mut send, mut recv) =
        match tokio::time::timeout(shared.handshake_timeout, connection.accept_bi()).await {
            Ok(Ok(streams)) => streams,
            _ => {
                connection.close(1u32.into(), b"no stream opened in time");
                return;
            }
        };
    let first = match tokio::time::timeout(shared.handshake_timeout, read_message(&mut recv)).await
    {
        Ok(Ok(Some(message))) => message,
        Ok(Ok(None)) => {
            connection.close(0u32.into(), b"bye");
            return;
        }
        Ok(Err(e)) => return refuse(&connection, &mut send, net_error_body(&e)).await,
        Err(_) => {
            return refuse(&connection, &mut send, Refusal::HandshakeTimeout.body()).await;
        }
    };
    let versions_ok = |v: &[String]| v.iter().any(|v| v == PROTOCOL_VERSION);
    match first {
        Message::Login {
            supported_protocol_versions,
            email,
            password,
            device,
        } => {
            if !versions_ok(&supported_protocol_versions) {
                return refuse(&connection, &mut send, unsupported()).await;
            }
            let address = connection.remote_address().ip();
            let reply = login(&shared, address, email, password, device).await;
            let _ = write_message(&mut send, &reply).await;
            finish_and_close(&connection, &mut send).await;
        }
        Message::Join {
            sender_id,
            supported_protocol_versions,
            token,
            cursor,
        } => {
            if !versions_ok(&supported_protocol_versions) {
                return refuse(&connection, &mut send, unsupported()).await;
            }
            let session = match authenticate(&shared, token.clone(), sender_id).await {
                Ok(session) => session,
                Err(e) => return refuse(&connection, &mut send, e.body()).await,
            };
            run_session(connection, send, recv, shared, session, token, cursor).await;
        }
        other => {
            refuse(
                &connection,
                &mut send,
                Refusal::JoinRequired {
                    got: other.kind().to_owned(),
                }
                .body(),
            )
            .await;
        }
    }
}

fn unsupported() -> ErrorBody {
    Refusal::UnsupportedProtocol.body()
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

async fn authenticate(
    shared: &Shared,
    token: String,
    device: callsync_core::DeviceId,
) -> Result<Session, AuthError> {
    let store = shared.accounts.lock().await;
    tokio::task::block_in_place(|| accounts::authenticate(&store, &token, &device, clock::now()))
}

/// A token bucket over the messages a connection sends.
struct RateLimit {
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    fn new() -> Self {
        Self {
            tokens: RATE_BURST,
            at: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * RATE_PER_SEC;
        self.tokens = (self.tokens + refill).min(RATE_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

async fn run_session(
    connection: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shared: Arc<Shared>,
    mut session: Session,
    token: String,
    cursor: Option<wire::Cursor>,
) {
    let conn: ConnId = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let (out, mut outgoing) = mpsc::channel::<Outgoing>(OUT_QUEUE);
    let (cut_off, mut cut_off_signal) = tokio::sync::watch::channel(None);
    if shared
        .hub
        .send(HubInput::Open {
            conn,
            session: session.clone(),
            cursor,
            out: Outbox {
                queue: out.clone(),
                cut_off,
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
                    watched.close(CUT_OFF.into(), reason.as_bytes());
                }
            }
            _ = watched.closed() => {}
        }
    });
    let writer_connection = connection.clone();
    let writer = tokio::spawn(async move {
        while let Some(item) = outgoing.recv().await {
            match item {
                Outgoing::Frame(frame) => {
                    if write_frame(&mut send, &frame).await.is_err() {
                        break;
                    }
                }
                Outgoing::Close(error) => {
                    refuse(&writer_connection, &mut send, error).await;
                    break;
                }
            }
        }
    });
    let mut rate = RateLimit::new();
    let mut checked = Instant::now();
    loop {
        let message = match read_message(&mut recv).await {
            Ok(Some(message)) => message,
            Ok(None) => break,
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
        if !rate.allow() {
            deliver(
                &out,
                &connection,
                Outgoing::Close(
                    Refusal::RateLimited {
                        per_sec: RATE_PER_SEC as u32,
                    }
                    .body(),
                ),
            )
            .await;
            break;
        }
        if checked.elapsed() >= RECHECK_EVERY || session.expires_at <= clock::now() {
            checked = Instant::now();
            match authenticate(&shared, token.clone(), session.device.clone()).await {
                Ok(fresh) => session = fresh,
                Err(e) => {
                    deliver(&out, &connection, Outgoing::Close(e.body())).await;
                    break;
                }
            }
        }
        match message {
            Message::Rpc { id, call } if accounts::is_account_call(&call) => {
                let result = match account_request(&shared, &session, &call).await {
                    Ok(result) => {
                        tracing::info!(admin = %session.user, method = call.method(), "account change");
                        if let Some((user, reason)) = ended_sessions(&call) {
                            let _ = shared
                                .hub
                                .send(HubInput::EndSessions {
                                    tenant: session.tenant.clone(),
                                    user,
                                    reason,
                                })
                                .await;
                        }
                        result
                    }
                    Err(e) => wire::RpcResult::Refused(e.body()),
                };
                match wire::encode_frame(&Message::Reply { id, result }) {
                    Ok(frame) => {
                        if !deliver(&out, &connection, Outgoing::Frame(Arc::new(frame))).await {
                            break;
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "could not encode a reply"),
                }
            }
            Message::Rpc {
                id,
                call:
                    wire::RpcCall::PluginInstall {
                        file,
                        settings,
                        holidays,
                        time_zone,
                    },
            } => {
                // Checked and compiled here, off the hub's thread; only a plugin
                // that passed goes to the hub to be published.
                let refused = if session.role.is_admin() {
                    let _permit = shared.compiling.acquire().await;
                    let request = callsync_plugin_host::install::InstallRequest {
                        file: &file,
                        settings,
                        holidays,
                        time_zone,
                    };
                    let prepared = tokio::task::block_in_place(|| {
                        callsync_plugin_host::install::prepare(
                            &shared.plugins,
                            request,
                            clock::now(),
                        )
                    });
                    match prepared {
                        Ok(prepared) => {
                            let publish = HubInput::Publish {
                                conn,
                                id,
                                prepared: Box::new(prepared),
                            };
                            if shared.hub.send(publish).await.is_err() {
                                deliver(&out, &connection, Outgoing::Close(shutting_down())).await;
                                break;
                            }
                            None
                        }
                        Err(err) => {
                            tracing::warn!(user = %session.user, code = err.code(), error = %err, "plugin install refused");
                            Some(
                                Refusal::InstallRefused {
                                    code: err.code(),
                                    detail: err.to_string(),
                                }
                                .body(),
                            )
                        }
                    }
                } else {
                    Some(crate::hub::install_needs_admin())
                };
                if let Some(error) = refused {
                    let reply = Message::Reply {
                        id,
                        result: wire::RpcResult::Refused(error),
                    };
                    match wire::encode_frame(&reply) {
                        Ok(frame) => {
                            if !deliver(&out, &connection, Outgoing::Frame(Arc::new(frame))).await {
                                break;
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "could not encode a reply"),
                    }
                }
            }
            Message::Leave { .. } => break,
            message @ (Message::Sync { .. }
            | Message::Request { .. }
            | Message::ConfigSync { .. }
            | Message::Rpc { .. }) => {
                if shared
                    .hub
                    .send(HubInput::Received { conn, message })
                    .await
                    .is_err()
                {
                    deliver(&out, &connection, Outgoing::Close(shutting_down())).await;
                    break;
                }
            }
            other => {
                deliver(
                    &out,
                    &connection,
                    Outgoing::Close(
                        Refusal::UnexpectedMessage {
                            kind: other.kind().to_owned(),
                        }
                        .body(),
                    ),
                )
                .await;
                break;
            }
        }
    }
    let _ = shared.hub.send(HubInput::Closed { conn }).await;
    drop(out);
    let _ = tokio::time::timeout(Duration::from_secs(3), writer).await;
    connection.close(0u32.into(), b"bye");
}

/// How long the reader waits for room in its writer's queue before deciding the
/// device has stopped reading.
const DELIVER_WAIT: Duration = Duration::from_secs(2);

/// Queues `item` for the connection's writer. A queue still full after
/// [`DELIVER_WAIT`] means the device stopped reading: the connection is cut off
/// (close code [`CUT_OFF`], reason `too-slow`) rather than the reader blocking on
/// it for good. False when the connection is done.
async fn deliver(
    out: &mpsc::Sender<Outgoing>,
    connection: &quinn::Connection,
    item: Outgoing,
) -> bool {
    match tokio::time::timeout(DELIVER_WAIT, out.send(item)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            let refusal = Refusal::TooSlow.body();
            tracing::info!(remote = %connection.remote_address(), "cutting off a connection that stopped reading");
            connection.close(
                CUT_OFF.into(),
                format!("{}: {}", refusal.code, refusal.message).as_bytes(),
            );
            false
        }
    }
}

/// The member whose live connections an account change ends, and why.
fn ended_sessions(call: &wire::RpcCall) -> Option<(callsync_core::UserId, ErrorBody)> {
    match call {
        wire::RpcCall::UserSetContract {
            email,
            contract: false,
        } => Some((email.clone(), AuthError::ContractRequired.body())),
        wire::RpcCall::UserResetPassword { email, .. } => {
            Some((email.clone(), AuthError::InvalidSession.body()))
        }
        _ => None,
    }
}

fn shutting_down() -> ErrorBody {
    Refusal::ShuttingDown.body()
}
