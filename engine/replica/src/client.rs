//! The sync client of one device: the QUIC and SQLite host of its
//! [`DeviceSession`] (`callsync-session`), which makes every protocol decision:
//! when to connect and retry, the join, the server's clock, requests and their
//! deadlines, what a refusal means, the rep's actions.
//!
//! Call order: [`SyncClient::open`] (the saved session, no connection) for local
//! actions ([`SyncClient::act`]); [`SyncClient::connect`] to join (the server
//! lists what changed since the saved cursor and starts those syncs; the client
//! pushes its outbox); then loop: [`SyncClient::recv`] (cancel-safe, for
//! `select!`) and [`SyncClient::handle_arrived`], [`SyncClient::push_local`] when
//! [`SyncClient::local_changes`] says another process wrote,
//! [`SyncClient::handle_timeout`] when [`SyncClient::next_timeout`] comes; end
//! with [`SyncClient::leave`].
//!
//! Each session call runs in one SQLite write transaction, committed before any
//! message it produced is sent or any event reported; a call that fails is
//! rolled back and releases nothing but the close of its connection.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use callsync_core::wire::{self, ErrorBody, Message, RpcCall, RpcResult};
use callsync_core::{CustomerId, Timestamp};
use callsync_net::framing::{read_message_sized, write_frame};
use callsync_net::{NetError, endpoint};
use callsync_session::device::{
    DeviceFailure, DeviceInput, DeviceOutput, DeviceSession, DeviceSettings, Phase,
};
use callsync_store::{Store, StoredDoc, WriteTx};
use tokio::sync::mpsc;

use crate::session::{SavedSession, SystemEntropy};
use crate::{ClientError, DB_FILE};

pub use callsync_session::client::ClientEvent;

/// Most arrived messages handled in one transaction.
const MAX_BATCH: usize = 256;

/// The device's session, as a phone or the CLI's desk runs it.
pub type Session = DeviceSession<StoredDoc>;

/// One open QUIC connection.
struct Link {
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    send: quinn::SendStream,
    incoming: mpsc::Receiver<Result<Message, NetError>>,
}

/// One device's data directory and its link to the server.
pub struct SyncClient {
    store: Store,
    saved: SavedSession,
    device: Session,
    rng: SystemEntropy,
    link: Option<Link>,
    /// A read error found while draining arrived messages, reported by the next
    /// [`SyncClient::recv`].
    pending_error: Option<NetError>,
    data_version: i64,
    bytes_in: Arc<AtomicU64>,
    bytes_out: u64,
    replies: HashMap<u64, RpcResult>,
    failed: HashMap<u64, ErrorBody>,
    /// Why the session last stopped or dropped, for a one-shot command's error.
    last_trouble: Option<ClientError>,
}

/// The device's wall clock.
pub fn now() -> Timestamp {
    crate::clock::now()
}

impl SyncClient {
    /// The data directory's saved session, not connected: for local actions, or
    /// to [`Self::start`] later.
    pub fn open(data_dir: &Path) -> Result<Self, ClientError> {
        let mut store = Store::open(&data_dir.join(DB_FILE))?;
        let saved = SavedSession::load(&store)?.ok_or(ClientError::NotLoggedIn)?;
        let mut tx = store.write()?;
        let restored =
            DeviceSession::restore(DeviceSettings::default(), &mut tx).map_err(failure)?;
        let device = match restored {
            Some(device) => {
                drop(tx);
                device
            }
            // A data directory of an older build: its identity is saved now.
            None => {
                let device = DeviceSession::logged_in(
                    DeviceSettings::default(),
                    &mut tx,
                    saved.identity.clone(),
                    None,
                )
                .map_err(failure)?;
                tx.commit()?;
                device
            }
        };
        let data_version = store.data_version()?;
        Ok(Self {
            store,
            saved,
            device,
            rng: SystemEntropy,
            link: None,
            pending_error: None,
            data_version,
            bytes_in: Arc::new(AtomicU64::new(0)),
            bytes_out: 0,
            replies: HashMap::new(),
            failed: HashMap::new(),
            last_trouble: None,
        })
    }

    /// Joins the server with the saved session and cursor, and pushes the
    /// outbox. Fails (rather than waiting to retry) when the join does not
    /// succeed: with the server's refusal, or the connection's error.
    pub async fn connect(data_dir: &Path) -> Result<(Self, Vec<ClientEvent>), ClientError> {
        let mut client = Self::open(data_dir)?;
        if let Some(reason) = client.device.stop_reason() {
            let (message, message_ja) = reason.words();
            return Err(ClientError::Refused(ErrorBody {
                code: reason.as_str().to_owned(),
                message: message.to_owned(),
                message_ja: message_ja.to_owned(),
            }));
        }
        let mut events = client.start().await?;
        while client.device.phase() == Phase::Connecting {
            let message = client.recv().await;
            let more = match message {
                Ok(message) => client.handle_arrived(message).await?,
                Err(e) => client.disconnected(&e.to_string()).await?,
            };
            events.extend(more);
        }
        client.ensure_online()?;
        Ok((client, events))
    }

    /// Goes online: the session asks for a connection and joins.
    pub async fn start(&mut self) -> Result<Vec<ClientEvent>, ClientError> {
        let now = now();
        self.device.start(now);
        let out = self.device.take_output();
        self.release(out).await
    }

    /// An error for a one-shot command when the session is not online.
    fn ensure_online(&mut self) -> Result<(), ClientError> {
        match self.device.phase() {
            Phase::Online => Ok(()),
            _ => Err(self.last_trouble.take().unwrap_or_else(|| {
                ClientError::Net(NetError::Read("the connection was lost".to_owned()))
            })),
        }
    }

    /// Runs one session call in one write transaction: commits it on success,
    /// rolls it back on failure; either way returns what the session wants done.
    fn transact<T, E>(
        &mut self,
        call: impl FnOnce(&mut Session, Timestamp, &mut SystemEntropy, &mut WriteTx<'_>) -> Result<T, E>,
    ) -> Result<(Result<T, E>, DeviceOutput), ClientError> {
        let now = now();
        let mut tx = self.store.write()?;
        let result = call(&mut self.device, now, &mut self.rng, &mut tx);
        let committed = match &result {
            Ok(_) => tx.commit(),
            Err(_) => {
                drop(tx);
                Ok(())
            }
        };
        let mut out = self.device.take_output();
        if result.is_err() {
            out.after_rollback();
        }
        if let Err(e) = committed {
            // Nothing of the call is on disk: nothing of it leaves the device,
            // and the connection goes (the outbox sends again on the next one).
            self.drop_link();
            self.last_trouble = Some(e.into());
            let _ = out;
            return Err(ClientError::Protocol(
                "storage failed; nothing was sent".to_owned(),
            ));
        }
        Ok((result, out))
    }

    /// Runs a session call, then carries out its output.
    async fn drive(
        &mut self,
        call: impl FnOnce(
            &mut Session,
            Timestamp,
            &mut SystemEntropy,
            &mut WriteTx<'_>,
        ) -> Result<(), DeviceFailure>,
    ) -> Result<Vec<ClientEvent>, ClientError> {
        let (result, out) = self.transact(call)?;
        let events = self.release(out).await?;
        match result {
            Ok(()) => Ok(events),
            Err(e) => {
                self.last_trouble = Some(failure(e.clone()));
                Err(failure(e))
            }
        }
    }

    /// Runs one of the rep's actions (or any session call that returns a value)
    /// in one transaction and carries out its output (with no connection, only
    /// the storage writes happen: the outbox sends them later).
    pub async fn act<T, E>(
        &mut self,
        call: impl FnOnce(&mut Session, Timestamp, &mut SystemEntropy, &mut WriteTx<'_>) -> Result<T, E>,
    ) -> Result<(Result<T, E>, Vec<ClientEvent>), ClientError> {
        let (result, out) = self.transact(call)?;
        let events = self.release(out).await?;
        Ok((result, events))
    }

    /// Carries out a committed call's output: close, send, connect (then the
    /// session hears how that went), and returns its events.
    async fn release(&mut self, out: DeviceOutput) -> Result<Vec<ClientEvent>, ClientError> {
        let mut events = Vec::new();
        let mut pending = Some(out);
        while let Some(out) = pending.take() {
            for event in &out.events {
                match event {
                    ClientEvent::Reply { ticket, result } => {
                        self.replies.insert(*ticket, result.clone());
                    }
                    ClientEvent::AskFailed {
                        ticket,
                        code,
                        message,
                        message_ja,
                    } => {
                        self.failed.insert(
                            *ticket,
                            ErrorBody {
                                code: code.clone(),
                                message: message.clone(),
                                message_ja: message_ja.clone(),
                            },
                        );
                    }
                    ClientEvent::Stopped {
                        code,
                        message,
                        message_ja,
                        ..
                    } => {
                        self.last_trouble = Some(ClientError::Refused(ErrorBody {
                            code: code.clone(),
                            message: message.clone(),
                            message_ja: message_ja.clone(),
                        }));
                    }
                    ClientEvent::Disconnected { reason, .. } => {
                        self.last_trouble = Some(ClientError::Net(NetError::Read(reason.clone())));
                    }
                    _ => {}
                }
            }
            events.extend(out.events);
            let mut lost = None;
            if let Some(link) = self.link.as_mut() {
                for message in &out.send {
                    let frame = wire::encode_frame(message).map_err(NetError::from)?;
                    self.bytes_out += frame.len() as u64;
                    if let Err(e) = write_frame(&mut link.send, &frame).await {
                        lost = Some(e.to_string());
                        break;
                    }
                    log_changes_sent(message);
                }
            }
            if out.close {
                self.close_link();
            }
            let input = if let Some(reason) = lost {
                self.drop_link();
                Some(DeviceInput::Disconnected { reason })
            } else if out.connect {
                self.close_link();
                match self.open_link().await {
                    Ok(()) => Some(DeviceInput::Connected),
                    Err(e) => Some(DeviceInput::Disconnected {
                        reason: e.to_string(),
                    }),
                }
            } else {
                None
            };
            if let Some(input) = input {
                let (result, out) =
                    self.transact(|s, now, rng, tx| s.handle(now, rng, tx, input))?;
                if let Err(e) = result {
                    self.last_trouble = Some(failure(e));
                }
                pending = Some(out);
            }
        }
        Ok(events)
    }

    async fn open_link(&mut self) -> Result<(), ClientError> {
        let endpoint = self.saved.endpoint()?;
        let (connection, send, mut recv) =
            endpoint::connect(&endpoint, self.saved.server, &self.saved.server_name).await?;
        let (tx, incoming) = mpsc::channel(1024);
        let counter = self.bytes_in.clone();
        tokio::spawn(async move {
            loop {
                match read_message_sized(&mut recv).await {
                    Ok(Some((message, size))) => {
                        counter.fetch_add(size as u64, Ordering::Relaxed);
                        if tx.send(Ok(message)).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => {
                        let _ = tx
                            .send(Err(NetError::Read(
                                "the server closed the connection".to_owned(),
                            )))
                            .await;
                        break;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        break;
                    }
                }
            }
        });
        self.pending_error = None;
        self.link = Some(Link {
            endpoint,
            connection,
            send,
            incoming,
        });
        Ok(())
    }

    /// Closes the connection politely (what was written still leaves).
    fn close_link(&mut self) {
        if let Some(mut link) = self.link.take() {
            let _ = link.send.finish();
            link.connection.close(0u32.into(), b"close");
            // The endpoint drains in the background.
            drop(link.endpoint);
        }
    }

    /// Drops the connection at once (as a crash or a cut link would).
    fn drop_link(&mut self) {
        if let Some(link) = self.link.take() {
            link.connection.close(1u32.into(), b"abort");
        }
    }

    /// The QUIC connection while the session is online: recordings' uploads
    /// and downloads open their own streams beside the sync stream on it.
    pub fn connection(&self) -> Option<&quinn::Connection> {
        match self.device.phase() {
            Phase::Online => self.link.as_ref().map(|l| &l.connection),
            _ => None,
        }
    }

    /// The session this client runs under.
    pub fn session(&self) -> &SavedSession {
        &self.saved
    }

    /// The device session.
    pub fn device(&self) -> &Session {
        &self.device
    }

    /// Frame bytes received so far.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    /// Frame bytes sent so far.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_out
    }

    /// Documents still to catch up on.
    pub fn catching_up(&self) -> usize {
        self.device.catching_up()
    }

    /// Whether the catch-up is done and the server holds every local change.
    pub fn is_settled(&mut self) -> Result<bool, ClientError> {
        let (settled, _) = self.transact(|s, _, _, tx| s.is_settled(tx))?;
        settled.map_err(failure)
    }

    /// Whether another process (a local command) wrote since the last look. This
    /// connection's own commits do not count (SQLite's `data_version` moves only
    /// for other connections' commits).
    pub fn local_changes(&mut self) -> Result<bool, ClientError> {
        let version = self.store.data_version()?;
        let changed = version != self.data_version;
        self.data_version = version;
        Ok(changed)
    }

    /// Sends the server what it lacks of every document in the outbox.
    pub async fn push_local(&mut self) -> Result<Vec<ClientEvent>, ClientError> {
        self.drive(|s, now, rng, tx| s.handle(now, rng, tx, DeviceInput::LocalChanged))
            .await
    }

    /// The connection failed or closed: the session plans the next attempt.
    pub async fn disconnected(&mut self, reason: &str) -> Result<Vec<ClientEvent>, ClientError> {
        self.drop_link();
        let reason = reason.to_owned();
        self.drive(|s, now, rng, tx| s.handle(now, rng, tx, DeviceInput::Disconnected { reason }))
            .await
    }

    /// When [`Self::handle_timeout`] is next due (the device's clock).
    pub fn next_timeout(&self) -> Option<Timestamp> {
        self.device.poll_timeout()
    }

    /// Runs what is due now: a reconnect, a deadline.
    pub async fn handle_timeout(&mut self) -> Result<Vec<ClientEvent>, ClientError> {
        self.drive(|s, now, rng, tx| s.handle_timeout(now, rng, tx))
            .await
    }

    /// Asks the server to replicate these documents to this device.
    pub async fn subscribe(&mut self, documents: Vec<CustomerId>) -> Result<u64, ClientError> {
        self.send_rpc(RpcCall::Subscribe { documents }).await
    }

    /// Sends a request; the answer arrives through [`SyncClient::handle_arrived`]
    /// and [`SyncClient::take_reply`] (by the returned ticket).
    pub async fn send_rpc(&mut self, call: RpcCall) -> Result<u64, ClientError> {
        let (ticket, out) = self.transact(|s, now, _, _| s.ask(now, call))?;
        self.release(out).await?;
        ticket.map_err(failure)
    }

    /// The answer to request `ticket`, once it has arrived.
    pub fn take_reply(&mut self, ticket: u64) -> Option<RpcResult> {
        self.replies.remove(&ticket)
    }

    /// How request `ticket` ended, once it has: its answer, or why none will
    /// come (lost with its connection, or given up on).
    pub fn take_outcome(&mut self, ticket: u64) -> Option<Result<RpcResult, ErrorBody>> {
        if let Some(result) = self.replies.remove(&ticket) {
            return Some(Ok(result));
        }
        self.failed.remove(&ticket).map(Err)
    }

    /// Sends a request and handles messages until its answer arrives.
    pub async fn rpc(
        &mut self,
        call: RpcCall,
    ) -> Result<(RpcResult, Vec<ClientEvent>), ClientError> {
        let ticket = self.send_rpc(call).await?;
        let mut events = Vec::new();
        loop {
            if let Some(result) = self.take_reply(ticket) {
                return Ok((result, events));
            }
            if let Some(body) = self.failed.remove(&ticket) {
                return Err(ClientError::Refused(body));
            }
            self.ensure_online()?;
            let message = self.recv().await?;
            events.extend(self.handle_arrived(message).await?);
        }
    }

    /// Handles messages until the catch-up is done and the outbox is empty, or
    /// `limit` passes.
    pub async fn settle(&mut self, limit: Duration) -> Result<Vec<ClientEvent>, ClientError> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut events = Vec::new();
        while !self.is_settled()? {
            self.ensure_online()?;
            let message = tokio::time::timeout_at(deadline, self.recv())
                .await
                .map_err(|_| NetError::Timeout(limit))??;
            events.extend(self.handle_arrived(message).await?);
        }
        Ok(events)
    }

    /// The next message from the server. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Message, ClientError> {
        if let Some(e) = self.pending_error.take() {
            return Err(e.into());
        }
        let Some(link) = self.link.as_mut() else {
            return Err(ClientError::Net(NetError::Read("not connected".to_owned())));
        };
        match link.incoming.recv().await {
            Some(Ok(message)) => Ok(message),
            Some(Err(e)) => Err(e.into()),
            None => Err(ClientError::Net(NetError::Read(
                "the server closed the connection".to_owned(),
            ))),
        }
    }

    /// Handles one message from the server: applied and committed, then answered.
    pub async fn handle(&mut self, message: Message) -> Result<Vec<ClientEvent>, ClientError> {
        self.handle_arrived(message).await
    }

    /// Handles `first` and every message that has already arrived after it (up to
    /// [`MAX_BATCH`]) in one transaction: one durable commit for a catch-up's
    /// hundreds of documents rather than one each. Answers leave after the commit.
    /// A refusal that ends the session comes back as [`ClientError::Refused`].
    pub async fn handle_arrived(
        &mut self,
        first: Message,
    ) -> Result<Vec<ClientEvent>, ClientError> {
        let mut messages = vec![first];
        if let Some(link) = self.link.as_mut() {
            while messages.len() < MAX_BATCH && self.pending_error.is_none() {
                match link.incoming.try_recv() {
                    Ok(Ok(message)) => messages.push(message),
                    Ok(Err(e)) => self.pending_error = Some(e),
                    Err(_) => break,
                }
            }
        }
        let events = self
            .drive(|s, now, rng, tx| {
                for message in messages {
                    s.handle(now, rng, tx, DeviceInput::Received(message))?;
                    if matches!(s.phase(), Phase::Stopped | Phase::Offline) {
                        break;
                    }
                }
                Ok(())
            })
            .await?;
        match self.device.phase() {
            Phase::Stopped => Err(self.last_trouble.take().unwrap_or(ClientError::NotLoggedIn)),
            _ => Ok(events),
        }
    }

    /// Says goodbye and closes the connection (the session stays logged in).
    pub async fn leave(mut self) {
        self.device.leave();
        let out = self.device.take_output();
        if let Some(mut link) = self.link.take() {
            for message in &out.send {
                if let Ok(frame) = wire::encode_frame(message) {
                    let _ = write_frame(&mut link.send, &frame).await;
                }
            }
            let _ = link.send.finish();
            let _ = tokio::time::timeout(Duration::from_millis(200), link.send.stopped()).await;
            link.connection.close(0u32.into(), b"leave");
            // Long enough for the close to leave (so the server sees the device go
            // at once), not for the whole draining period.
            let _ =
                tokio::time::timeout(Duration::from_millis(100), link.endpoint.wait_idle()).await;
        }
    }

    /// Drops the connection without a goodbye (as a crash or a cut link would).
    pub fn abort(mut self) {
        self.drop_link();
    }
}

fn failure(e: DeviceFailure) -> ClientError {
    match e {
        DeviceFailure::Storage(e) => ClientError::Storage(e),
        DeviceFailure::Protocol(detail) => ClientError::Protocol(detail),
    }
}

/// Logs (at debug) a sync message that carried changes, once it is written, so a
/// test can tell a connection lost before the server had this device's changes
/// from one lost while it was taking them. Decodes only when debug is on.
fn log_changes_sent(message: &Message) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    if let Message::Sync { document_id, data } = message
        && let Ok(sync) = automerge::sync::Message::decode(data)
        && !sync.changes.is_empty()
    {
        tracing::debug!(doc = %document_id, changes = sync.changes.len(), "sent changes to the server");
    }
}
