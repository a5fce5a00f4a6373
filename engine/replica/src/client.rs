//! The sync client of one device: one connection's worth of catching up,
//! pushing and applying.
//!
//! Call order: [`SyncClient::connect`] (join, then the server lists what changed
//! since the saved cursor and starts those syncs; the client pushes its outbox);
//! then loop: [`SyncClient::recv`] (cancel-safe, for `select!`) and
//! [`SyncClient::handle`]; call [`SyncClient::push_local`] when
//! [`SyncClient::local_changes`] says another process wrote; end with
//! [`SyncClient::leave`].

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use automerge::sync::{self, SyncDoc};
use automerge::{ActorId, AutoCommit};
use callsync_core::catchup::{CatchUp, holds_peer_heads};
use callsync_core::wire::{self, Cursor, Message, RpcCall, RpcResult};
use callsync_core::{CallId, CustomerDoc, CustomerId, DeviceId, DeviceKind, EventKind};

mod config;
use callsync_net::framing::{read_message_sized, write_message};
use callsync_net::{NetError, endpoint};
use callsync_store::{ReplicationQueries, Store, StoreError, StoredDoc, is_current};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::session::{SavedSession, device_actor};
use crate::{ClientError, DB_FILE};

const CURSOR_KEY: &str = "cursor";
/// Documents a client keeps parsed between messages.
const MAX_KEPT_DOCS: usize = 1_024;
/// The sync-state key of the one peer a device syncs with.
const SERVER_PEER: &str = "server";

/// Something a device's user (or a script) may want to know, one JSON line each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum ClientEvent {
    /// Connected; the server listed this many changed documents.
    Joined {
        /// Documents to catch up on.
        changed: usize,
    },
    /// Every listed document has caught up; the cursor moved.
    CaughtUp {
        /// The new cursor's sequence number.
        seq: u64,
    },
    /// A call was requested for this phone.
    CallRequested {
        /// The customer.
        customer: CustomerId,
        /// The call.
        call: CallId,
        /// The number to dial.
        number: String,
        /// Whether to record.
        recording: bool,
    },
    /// A call's state changed here because of what the server sent.
    CallUpdated {
        /// The customer.
        customer: CustomerId,
        /// The call.
        call: CallId,
        /// Its phase.
        phase: String,
        /// Its flags.
        flags: Vec<String>,
    },
    /// The server holds every local change of this document.
    Acknowledged {
        /// The customer.
        customer: CustomerId,
    },
    /// A device of the same user came online or went away.
    Presence {
        /// The device.
        device: DeviceId,
        /// Its kind.
        kind: DeviceKind,
        /// Whether it is connected.
        online: bool,
    },
    /// The server refused this device's changes to a document.
    Rejected {
        /// The customer.
        customer: CustomerId,
        /// The reason's code.
        code: String,
        /// English.
        message: String,
        /// Japanese.
        message_ja: String,
    },
    /// The server has no such document for this device.
    Unavailable {
        /// The customer.
        customer: CustomerId,
    },
    /// The tenant's configuration changed here (an admin installed a plugin, or
    /// this device caught up).
    ConfigChanged {
        /// The active rule set's id.
        ruleset: String,
        /// Its plugin, `id@version (hash)`.
        plugin: String,
    },
    /// The connection dropped; the client will reconnect.
    Disconnected {
        /// Why.
        reason: String,
    },
}

/// One connected session of a device.
pub struct SyncClient {
    store: Store,
    session: SavedSession,
    actor: ActorId,
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    send: quinn::SendStream,
    incoming: mpsc::Receiver<Result<Message, NetError>>,
    catch_up: CatchUp,
    states: HashMap<CustomerId, sync::State>,
    fresh: HashMap<CustomerId, AutoCommit>,
    /// Documents kept between messages; checked against the database before use,
    /// since local commands in other processes write to it too.
    docs: HashMap<CustomerId, StoredDoc>,
    replies: HashMap<u64, RpcResult>,
    next_rpc: u64,
    data_version: i64,
    bytes_in: Arc<AtomicU64>,
    bytes_out: u64,
    /// The tenant's configuration, once joined.
    config: Option<config::LocalConfig>,
}

impl SyncClient {
    /// Joins the server with the saved session and cursor, and pushes the outbox.
    pub async fn connect(data_dir: &Path) -> Result<(Self, Vec<ClientEvent>), ClientError> {
        let mut store = Store::open(&data_dir.join(DB_FILE))?;
        let session = SavedSession::load(&store)?.ok_or(ClientError::NotLoggedIn)?;
        let actor = device_actor(&mut store)?;
        let cursor: Option<Cursor> = store
            .setting(CURSOR_KEY)?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let endpoint = session.endpoint()?;
        let (connection, mut send, mut recv) =
            endpoint::connect(&endpoint, session.server, &session.server_name).await?;
        let join = Message::Join {
            sender_id: session.device.clone(),
            supported_protocol_versions: vec![wire::PROTOCOL_VERSION.to_owned()],
            token: session.token.clone(),
            cursor,
        };
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
        let mut incoming = incoming;
        let (target, changed, config_heads) = match incoming.recv().await {
            Some(Ok(Message::Peer {
                cursor,
                changed,
                config_heads,
                ..
            })) => (cursor, changed, config_heads),
            Some(Ok(Message::Error(body))) => return Err(ClientError::Refused(body)),
            Some(Ok(other)) => {
                return Err(ClientError::Protocol(format!(
                    "expected 'peer', got '{}'",
                    other.kind()
                )));
            }
            Some(Err(e)) => return Err(e.into()),
            None => return Err(ClientError::Protocol("closed before 'peer'".to_owned())),
        };
        let data_version = store.data_version()?;
        let mut events = vec![ClientEvent::Joined {
            changed: changed.len(),
        }];
        let mut client = Self {
            store,
            session,
            actor,
            endpoint,
            connection,
            send,
            incoming,
            catch_up: CatchUp::new(target, changed),
            states: HashMap::new(),
            fresh: HashMap::new(),
            docs: HashMap::new(),
            replies: HashMap::new(),
            next_rpc: 1,
            data_version,
            bytes_in,
            bytes_out,
            config: None,
        };
        client.start_config_sync(&config_heads).await?;
        if let Some(cursor) = client.catch_up.reached() {
            client.save_cursor(&cursor)?;
            events.push(ClientEvent::CaughtUp { seq: cursor.seq });
        }
        client.push_local().await?;
        Ok((client, events))
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
        self.catch_up.pending()
    }

    /// Whether the catch-up is done and the server holds every local change.
    pub fn is_settled(&mut self) -> Result<bool, ClientError> {
        Ok(self.catch_up.pending() == 0
            && self.config_settled()
            && self.store.outbox(&self.session.tenant)?.is_empty())
    }

    async fn send(&mut self, message: &Message) -> Result<(), ClientError> {
        let frame = wire::encode_frame(message).map_err(NetError::from)?;
        self.bytes_out += frame.len() as u64;
        callsync_net::framing::write_frame(&mut self.send, &frame).await?;
        Ok(())
    }

    /// Sends one document's sync message. A message carrying changes is logged
    /// (at debug), so a test can tell a connection lost before the server had this
    /// device's changes from one lost while it was taking them.
    async fn send_sync(
        &mut self,
        document_id: CustomerId,
        message: sync::Message,
    ) -> Result<(), ClientError> {
        let changes = message.changes.len();
        self.send(&Message::Sync {
            document_id: document_id.clone(),
            data: message.encode(),
        })
        .await?;
        if changes > 0 {
            tracing::debug!(doc = %document_id, changes, "sent changes to the server");
        }
        Ok(())
    }

    fn save_cursor(&mut self, cursor: &Cursor) -> Result<(), ClientError> {
        let json = serde_json::to_vec(cursor).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.store.set_setting(CURSOR_KEY, &json)?;
        Ok(())
    }

    fn state(&mut self, doc: &CustomerId) -> Result<&mut sync::State, ClientError> {
        if !self.states.contains_key(doc) {
            let saved = self
                .store
                .sync_state(SERVER_PEER, &self.session.tenant, doc)?;
            let mut state = saved
                .and_then(|bytes| sync::State::decode(&bytes).ok())
                .unwrap_or_default();
            callsync_core::catchup::resume(&mut state);
            self.states.insert(doc.clone(), state);
        }
        self.states
            .get_mut(doc)
            .ok_or_else(|| ClientError::Protocol("sync state vanished".to_owned()))
    }

    /// The document as saved, from the kept copy if it is still current.
    fn doc(&mut self, doc: &CustomerId) -> Result<Option<StoredDoc>, ClientError> {
        if let Some(kept) = self.docs.remove(doc)
            && is_current(&self.store, &kept)?
        {
            return Ok(Some(kept));
        }
        match self
            .store
            .load(&self.session.tenant, doc, self.actor.clone())
        {
            Ok(stored) => Ok(Some(stored)),
            Err(StoreError::UnknownCustomer { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn keep(&mut self, doc: CustomerId, stored: StoredDoc) {
        if self.docs.len() >= MAX_KEPT_DOCS
            && let Some(any) = self.docs.keys().next().cloned()
        {
            self.docs.remove(&any);
        }
        self.docs.insert(doc, stored);
    }

    /// Whether another process (a local command) wrote since the last look.
    pub fn local_changes(&mut self) -> Result<bool, ClientError> {
        let version = self.store.data_version()?;
        let changed = version != self.data_version;
        self.data_version = version;
        Ok(changed)
    }

    /// Sends the server what it lacks of every document in the outbox.
    pub async fn push_local(&mut self) -> Result<(), ClientError> {
        let tenant = self.session.tenant.clone();
        for doc in self.store.outbox(&tenant)? {
            let Some(mut stored) = self.doc(&doc)? else {
                continue;
            };
            let state = self.state(&doc)?;
            let message = stored
                .doc
                .automerge_mut()
                .sync()
                .generate_sync_message(state);
            self.keep(doc.clone(), stored);
            if let Some(message) = message {
                self.send_sync(doc, message).await?;
            }
        }
        Ok(())
    }

    /// Asks the server to replicate these documents to this device.
    pub async fn subscribe(&mut self, documents: Vec<CustomerId>) -> Result<u64, ClientError> {
        self.send_rpc(RpcCall::Subscribe { documents }).await
    }

    /// Whether the local document holds everything the server last said it had.
    fn holds_server_heads(&mut self, doc: &CustomerId) -> Result<bool, ClientError> {
        let Some(state) = self.states.get(doc).cloned() else {
            return Ok(false);
        };
        match self.doc(doc)? {
            Some(mut stored) => {
                let holds = holds_peer_heads(stored.doc.automerge_mut(), &state);
                self.keep(doc.clone(), stored);
                Ok(holds)
            }
            None => Ok(false),
        }
    }

    /// Sends a request; the answer arrives through [`SyncClient::handle`] and
    /// [`SyncClient::take_reply`].
    pub async fn send_rpc(&mut self, call: RpcCall) -> Result<u64, ClientError> {
        let id = self.next_rpc;
        self.next_rpc += 1;
        self.send(&Message::Rpc { id, call }).await?;
        Ok(id)
    }

    /// The answer to request `id`, once it has arrived.
    pub fn take_reply(&mut self, id: u64) -> Option<RpcResult> {
        self.replies.remove(&id)
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
            events.extend(self.handle(message).await?);
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
            events.extend(self.handle(message).await?);
        }
        Ok(events)
    }

    /// The next message from the server. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Message, ClientError> {
        match self.incoming.recv().await {
            Some(Ok(message)) => Ok(message),
            Some(Err(e)) => Err(e.into()),
            None => Err(ClientError::Net(NetError::Read(
                "the server closed the connection".to_owned(),
            ))),
        }
    }

    /// Handles one message from the server.
    pub async fn handle(&mut self, message: Message) -> Result<Vec<ClientEvent>, ClientError> {
        let mut events = Vec::new();
        match message {
            Message::Sync { document_id, data } | Message::Request { document_id, data } => {
                let message = sync::Message::decode(&data)
                    .map_err(|e| ClientError::Protocol(format!("bad sync message: {e}")))?;
                self.apply(&document_id, message, &mut events)?;
                let reply = self.reply_for(&document_id)?;
                if let Some(reply) = reply {
                    self.send_sync(document_id, reply).await?;
                }
            }
            Message::ConfigSync { data } => self.on_config_sync(&data, &mut events).await?,
            Message::DocUnavailable { document_id } => {
                if let Some(cursor) = self.catch_up.document_done(&document_id) {
                    self.save_cursor(&cursor)?;
                    events.push(ClientEvent::CaughtUp { seq: cursor.seq });
                }
                events.push(ClientEvent::Unavailable {
                    customer: document_id,
                });
            }
            Message::Rejected { document_id, error } => {
                // The server will never take these changes; stop offering them.
                self.states.insert(document_id.clone(), sync::State::new());
                self.store
                    .clear_outbox(&self.session.tenant, &document_id)?;
                // Reported to the caller as `ClientEvent::Rejected`; not logged twice.
                tracing::info!(doc = %document_id, code = %error.code, "the server rejected local changes");
                events.push(ClientEvent::Rejected {
                    customer: document_id,
                    code: error.code,
                    message: error.message,
                    message_ja: error.message_ja,
                });
            }
            Message::Presence {
                device,
                kind,
                online,
            } => events.push(ClientEvent::Presence {
                device,
                kind,
                online,
            }),
            Message::Reply { id, result } => {
                if let RpcResult::Subscribed(documents) = &result {
                    // A subscribed (or created) document syncs like a changed one:
                    // settle until it has arrived.
                    for doc in documents {
                        if !self.holds_server_heads(doc)? {
                            self.catch_up.add(doc.clone());
                        }
                    }
                }
                self.replies.insert(id, result);
            }
            Message::Error(body) => {
                if body.code == "config-read-only" {
                    self.forget_config()?;
                }
                return Err(ClientError::Refused(body));
            }
            other => {
                return Err(ClientError::Protocol(format!(
                    "unexpected '{}' from the server",
                    other.kind()
                )));
            }
        }
        Ok(events)
    }

    /// Applies a server sync message to the local document in one transaction
    /// (with the sync state), and reports what changed.
    fn apply(
        &mut self,
        doc_id: &CustomerId,
        message: sync::Message,
        events: &mut Vec<ClientEvent>,
    ) -> Result<(), ClientError> {
        let tenant = self.session.tenant.clone();
        let my_device = self.session.device.clone();
        self.state(doc_id)?;
        let actor = self.actor.clone();
        let mut tx = self.store.write()?;
        let state = self
            .states
            .get_mut(doc_id)
            .ok_or_else(|| ClientError::Protocol("sync state vanished".to_owned()))?;
        let kept = match self.docs.remove(doc_id) {
            Some(kept) if is_current(&tx, &kept)? => Ok(kept),
            _ => tx.load(&tenant, doc_id, actor.clone()),
        };
        let (before, mut after_doc) = match kept {
            Ok(mut stored) => {
                let before = event_keys(&stored.doc);
                stored
                    .doc
                    .automerge_mut()
                    .sync()
                    .receive_sync_message(state, message)
                    .map_err(|e| ClientError::Protocol(format!("sync message refused: {e}")))?;
                tx.save(&mut stored)?;
                (before, Some(stored))
            }
            Err(StoreError::UnknownCustomer { .. }) => {
                let am = self
                    .fresh
                    .entry(doc_id.clone())
                    .or_insert_with(|| AutoCommit::new().with_actor(actor.clone()));
                am.sync()
                    .receive_sync_message(state, message)
                    .map_err(|e| ClientError::Protocol(format!("sync message refused: {e}")))?;
                match CustomerDoc::from_automerge(am.clone()) {
                    Ok(mut doc) if doc.tenant() == &tenant && doc.id() == doc_id => {
                        let stored = tx.insert(&mut doc)?;
                        self.fresh.remove(doc_id);
                        (BTreeSet::new(), Some(stored))
                    }
                    // Not enough yet to be a document: wait for more.
                    _ => (BTreeSet::new(), None),
                }
            }
            Err(e) => return Err(e.into()),
        };
        tx.set_sync_state(SERVER_PEER, &tenant, doc_id, &state.encode())?;
        let caught_up = match after_doc.as_mut() {
            Some(stored) => holds_peer_heads(stored.doc.automerge_mut(), state),
            None => false,
        };
        let acknowledged = match after_doc.as_mut() {
            Some(stored) => {
                let mut ours = stored.doc.heads();
                ours.sort();
                let mut theirs = state.their_heads.clone().unwrap_or_default();
                theirs.sort();
                ours == theirs
            }
            None => false,
        };
        tx.commit()?;
        self.data_version = self.store.data_version()?;
        if let Some(stored) = after_doc {
            report_changes(&stored.doc, doc_id, &before, &my_device, events);
            self.keep(doc_id.clone(), stored);
        }
        if acknowledged && self.store.outbox(&tenant)?.contains(doc_id) {
            self.store.clear_outbox(&tenant, doc_id)?;
            events.push(ClientEvent::Acknowledged {
                customer: doc_id.clone(),
            });
        }
        if caught_up
            && self.catch_up.is_pending(doc_id)
            && let Some(cursor) = self.catch_up.document_done(doc_id)
        {
            self.save_cursor(&cursor)?;
            events.push(ClientEvent::CaughtUp { seq: cursor.seq });
        }
        Ok(())
    }

    fn reply_for(&mut self, doc_id: &CustomerId) -> Result<Option<sync::Message>, ClientError> {
        let Some(mut state) = self.states.remove(doc_id) else {
            return Ok(None);
        };
        let message = if let Some(am) = self.fresh.get_mut(doc_id) {
            am.sync().generate_sync_message(&mut state)
        } else {
            match self.doc(doc_id) {
                Ok(Some(mut stored)) => {
                    let message = stored
                        .doc
                        .automerge_mut()
                        .sync()
                        .generate_sync_message(&mut state);
                    self.keep(doc_id.clone(), stored);
                    message
                }
                Ok(None) => None,
                Err(e) => {
                    self.states.insert(doc_id.clone(), state);
                    return Err(e);
                }
            }
        };
        self.states.insert(doc_id.clone(), state);
        Ok(message)
    }

    /// Says goodbye and closes the connection.
    pub async fn leave(mut self) {
        let leave = Message::Leave {
            sender_id: self.session.device.to_string(),
        };
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

fn event_keys(doc: &CustomerDoc) -> BTreeSet<String> {
    doc.events()
        .0
        .into_iter()
        .map(|e| format!("{}/{}", e.call, e.id))
        .collect()
}

fn report_changes(
    doc: &CustomerDoc,
    customer: &CustomerId,
    before: &BTreeSet<String>,
    me: &DeviceId,
    events: &mut Vec<ClientEvent>,
) {
    let mut touched = BTreeSet::new();
    for event in doc.events().0 {
        if before.contains(&format!("{}/{}", event.call, event.id)) {
            continue;
        }
        if let EventKind::Requested {
            destination,
            origin,
            recording,
        } = &event.kind
            && origin == me
        {
            events.push(ClientEvent::CallRequested {
                customer: customer.clone(),
                call: event.call.clone(),
                number: destination.as_written().to_owned(),
                recording: *recording,
            });
        }
        touched.insert(event.call.clone());
    }
    for call in touched {
        if let Some(view) = doc.call(&call) {
            events.push(ClientEvent::CallUpdated {
                customer: customer.clone(),
                call,
                phase: view.phase.as_str().to_owned(),
                flags: view.flags.iter().map(|f| f.as_str().to_owned()).collect(),
            });
        }
    }
}
