//! The sync client of one device: the QUIC and SQLite driver of a
//! [`ClientSession`] (`callsync-session`), which makes every protocol decision.
//!
//! Call order: [`SyncClient::connect`] (join, then the server lists what changed
//! since the saved cursor and starts those syncs; the client pushes its outbox);
//! then loop: [`SyncClient::recv`] (cancel-safe, for `select!`) and
//! [`SyncClient::handle`]; call [`SyncClient::push_local`] when
//! [`SyncClient::local_changes`] says another process wrote; end with
//! [`SyncClient::leave`].
//!
//! Each session call runs in one SQLite write transaction, committed before any
//! message it produced is sent or any event reported.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use callsync_core::CustomerId;
use callsync_core::wire::{self, Message, RpcCall, RpcResult};
use callsync_net::framing::{read_message_sized, write_message};
use callsync_net::{NetError, endpoint};
use callsync_session::client::{ClientOutput, ClientSession, Device};
use callsync_store::{Store, StoredDoc, WriteTx};
use tokio::sync::mpsc;

use crate::session::{SavedSession, device_actor};
use crate::{ClientError, DB_FILE};

pub use callsync_session::client::ClientEvent;

/// Most arrived messages handled in one transaction.
const MAX_BATCH: usize = 256;

/// One connected session of a device.
pub struct SyncClient {
    store: Store,
    session: SavedSession,
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    send: quinn::SendStream,
    incoming: mpsc::Receiver<Result<Message, NetError>>,
    protocol: ClientSession<StoredDoc>,
    /// A read error found while draining arrived messages, reported by the next
    /// [`SyncClient::recv`].
    pending_error: Option<NetError>,
    data_version: i64,
    bytes_in: Arc<AtomicU64>,
    bytes_out: u64,
}

/// Runs one session call in one write transaction and commits it; the output is
/// released only after the commit.
fn transact(
    store: &mut Store,
    protocol: &mut ClientSession<StoredDoc>,
    call: impl FnOnce(
        &mut ClientSession<StoredDoc>,
        &mut WriteTx<'_>,
        &mut ClientOutput,
    ) -> Result<(), callsync_session::client::ClientFailure>,
) -> Result<ClientOutput, ClientError> {
    let mut tx = store.write()?;
    let mut out = ClientOutput::default();
    call(protocol, &mut tx, &mut out)?;
    tx.commit()?;
    Ok(out)
}

impl SyncClient {
    /// Joins the server with the saved session and cursor, and pushes the outbox.
    pub async fn connect(data_dir: &Path) -> Result<(Self, Vec<ClientEvent>), ClientError> {
        let mut store = Store::open(&data_dir.join(DB_FILE))?;
        let session = SavedSession::load(&store)?.ok_or(ClientError::NotLoggedIn)?;
        let actor = device_actor(&mut store)?;
        let mut protocol = ClientSession::new(Device {
            tenant: session.tenant.clone(),
            id: session.device.clone(),
            actor,
        });
        let mut join = None;
        // Only reads: the transaction is rolled back.
        transact(&mut store, &mut protocol, |p, tx, _| {
            join = Some(p.join(tx, &session.token)?);
            Ok(())
        })?;
        let join = join.ok_or_else(|| ClientError::Protocol("no join".to_owned()))?;
        let data_version = store.data_version()?;
        let endpoint = session.endpoint()?;
        let (connection, mut send, mut recv) =
            endpoint::connect(&endpoint, session.server, &session.server_name).await?;
        let bytes_out = wire::encode_frame(&join).map_err(NetError::from)?.len() as u64;
        write_message(&mut send, &join).await?;
        let bytes_in = Arc::new(AtomicU64::new(0));
        let (tx, incoming) = mpsc::channel(1024);
        let counter = bytes_in.clone();
        tokio::spawn(async move {
            loop {
                match read_message_sized(&mut recv).await {
                    Ok(Some((message, size))) => {
                        counter.fetch_add(size as u64, Ordering::Relaxed);
                        if tx.send(Ok(message)).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        break;
                    }
                }
            }
        });
        let mut client = Self {
            store,
            session,
            endpoint,
            connection,
            send,
            incoming,
            protocol,
            pending_error: None,
            data_version,
            bytes_in,
            bytes_out,
        };
        let first = match client.incoming.recv().await {
            Some(Ok(message)) => message,
            Some(Err(e)) => return Err(e.into()),
            None => return Err(ClientError::Protocol("closed before 'peer'".to_owned())),
        };
        let out = transact(&mut client.store, &mut client.protocol, |p, tx, out| {
            p.on_peer(tx, first, out)
        })?;
        let events = client.release(out).await?;
        Ok((client, events))
    }

    /// Sends a committed call's messages; its events, or the server's refusal.
    async fn release(&mut self, out: ClientOutput) -> Result<Vec<ClientEvent>, ClientError> {
        for message in &out.messages {
            self.send(message).await?;
            log_changes_sent(message);
        }
        match out.refused {
            Some(body) => Err(ClientError::Refused(body)),
            None => Ok(out.events),
        }
    }

    /// The session this client runs under.
    pub fn session(&self) -> &SavedSession {
        &self.session
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
        self.protocol.catching_up()
    }

    /// Whether the catch-up is done and the server holds every local change.
    pub fn is_settled(&mut self) -> Result<bool, ClientError> {
        let mut settled = false;
        transact(&mut self.store, &mut self.protocol, |p, tx, _| {
            settled = p.is_settled(tx)?;
            Ok(())
        })?;
        Ok(settled)
    }

    async fn send(&mut self, message: &Message) -> Result<(), ClientError> {
        let frame = wire::encode_frame(message).map_err(NetError::from)?;
        self.bytes_out += frame.len() as u64;
        callsync_net::framing::write_frame(&mut self.send, &frame).await?;
        Ok(())
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
    pub async fn push_local(&mut self) -> Result<(), ClientError> {
        let out = transact(&mut self.store, &mut self.protocol, |p, tx, out| {
            p.push_local(tx, out)
        })?;
        self.release(out).await?;
        Ok(())
    }

    /// Asks the server to replicate these documents to this device.
    pub async fn subscribe(&mut self, documents: Vec<CustomerId>) -> Result<u64, ClientError> {
        self.send_rpc(RpcCall::Subscribe { documents }).await
    }

    /// Sends a request; the answer arrives through [`SyncClient::handle`] and
    /// [`SyncClient::take_reply`].
    pub async fn send_rpc(&mut self, call: RpcCall) -> Result<u64, ClientError> {
        let mut out = ClientOutput::default();
        let id = self.protocol.send_rpc(call, &mut out);
        self.release(out).await?;
        Ok(id)
    }

    /// The answer to request `id`, once it has arrived.
    pub fn take_reply(&mut self, id: u64) -> Option<RpcResult> {
        self.protocol.take_reply(id)
    }

    /// Sends a request and handles messages until its answer arrives.
    pub async fn rpc(
        &mut self,
        call: RpcCall,
    ) -> Result<(RpcResult, Vec<ClientEvent>), ClientError> {
        let id = self.send_rpc(call).await?;
        let mut events = Vec::new();
        loop {
            if let Some(result) = self.take_reply(id) {
                return Ok((result, events));
            }
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
        match self.incoming.recv().await {
            Some(Ok(message)) => Ok(message),
            Some(Err(e)) => Err(e.into()),
            None => Err(ClientError::Net(NetError::Read(
                "the server closed the connection".to_owned(),
            ))),
        }
    }

    /// Handles one message from the server: applied and committed, then answered.
    pub async fn handle(&mut self, message: Message) -> Result<Vec<ClientEvent>, ClientError> {
        let out = transact(&mut self.store, &mut self.protocol, |p, tx, out| {
            p.handle(tx, message, out)
        })?;
        self.release(out).await
    }

    /// Handles `first` and every message that has already arrived after it (up to
    /// [`MAX_BATCH`]) in one transaction: one durable commit for a catch-up's
    /// hundreds of documents rather than one each. Answers leave after the commit.
    pub async fn handle_arrived(
        &mut self,
        first: Message,
    ) -> Result<Vec<ClientEvent>, ClientError> {
        let mut messages = vec![first];
        while messages.len() < MAX_BATCH && self.pending_error.is_none() {
            match self.incoming.try_recv() {
                Ok(Ok(message)) => messages.push(message),
                Ok(Err(e)) => self.pending_error = Some(e),
                Err(_) => break,
            }
        }
        let out = transact(&mut self.store, &mut self.protocol, |p, tx, out| {
            for message in messages {
                p.handle(tx, message, out)?;
                if out.refused.is_some() {
                    break;
                }
            }
            Ok(())
        })?;
        self.release(out).await
    }

    /// Says goodbye and closes the connection.
    pub async fn leave(mut self) {
        let leave = self.protocol.leave();
        let _ = self.send(&leave).await;
        let _ = self.send.finish();
        let _ = tokio::time::timeout(Duration::from_millis(200), self.send.stopped()).await;
        self.connection.close(0u32.into(), b"leave");
        // Long enough for the close to leave (so the server sees the device go at
        // once), not for the whole draining period.
        let _ = tokio::time::timeout(Duration::from_millis(100), self.endpoint.wait_idle()).await;
    }

    /// Drops the connection without a goodbye (as a crash or a cut link would).
    pub fn abort(self) {
        self.connection.close(1u32.into(), b"abort");
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
