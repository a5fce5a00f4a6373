//! The client session: one device's side of the sync protocol, sans-IO.
//!
//! Owns: the `join` (with the saved cursor) and what `peer` starts (the catch-up of
//! exactly the documents the server lists, the configuration's sync, the outbox
//! push), applying the server's sync messages to the local documents, answering
//! them, clearing the outbox once the server's heads hold a local change, moving
//! the cursor only when every listed document has caught up, requests and their
//! replies, refusals, and the reconnect wait ([`backoff`], with the randomness
//! passed in). What happens is reported as [`ClientEvent`]s.
//! Does not own: the connection, the clock, random numbers or the database: the
//! device's driver (`callsync-replica` over QUIC and SQLite today; the browser over
//! WebTransport and IndexedDB in step 5).
//!
//! # Call order
//!
//! For every call that takes a [`ClientStore`], the driver opens one write
//! transaction, makes the call, commits, and only then sends the
//! [`ClientOutput`]'s messages and reports its events; if the call or the commit
//! fails, it drops the output and the connection, and reconnects.
//!
//! 1. [`ClientSession::join`]: the `join` message to send first;
//! 2. [`ClientSession::on_peer`] with the server's first message;
//! 3. then [`ClientSession::handle`] for each message, [`ClientSession::push_local`]
//!    when another process wrote local changes, [`ClientSession::send_rpc`] to ask
//!    something (the answer through [`ClientSession::take_reply`]);
//! 4. [`ClientSession::leave`] to say goodbye.
//!
//! A new connection starts a new session.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use automerge::sync::{self, SyncDoc};
use automerge::{ActorId, AutoCommit};
use callsync_core::catchup::{CatchUp, holds_peer_heads};
use callsync_core::wire::{self, Cursor, ErrorBody, Message, RpcCall, RpcResult};
use callsync_core::{CallId, CustomerDoc, CustomerId, DeviceId, DeviceKind, EventKind, TenantId};
use serde::Serialize;

use crate::storage::{LoadedDoc, StorageError};

mod config;

/// Documents a client keeps parsed between messages.
const MAX_KEPT_DOCS: usize = 1_024;

/// Something a device's user (or a script) may want to know, one JSON line each.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Serialize)]
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
        /// What the races among the flags ask of the rep, in English.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        advice_en: Vec<String>,
        /// The same, in Japanese.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        advice_ja: Vec<String>,
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
    /// What a phone of the same user said last of the recordings it still
    /// holds (empty: none, or the phone went away).
    PhoneUploads {
        /// The phone.
        device: DeviceId,
        /// Its recordings, oldest first.
        uploads: Vec<callsync_core::UploadStatus>,
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
    #[serde(rename_all = "camelCase")]
    Disconnected {
        /// Why.
        reason: String,
        /// When the next attempt is due (device clock), if one is planned.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_at: Option<callsync_core::Timestamp>,
    },
    /// The device learnt the server's clock at a join.
    #[serde(rename_all = "camelCase")]
    ClockLearned {
        /// Server time minus device time, in ms.
        offset_ms: i64,
        /// How far off that may be, in ms.
        uncertainty_ms: i64,
    },
    /// The server says the member's role is another one now: the screens that
    /// role may see change.
    RoleChanged {
        /// The role now.
        role: callsync_core::Role,
    },
    /// The session stopped; only the user can move it on (see the reason).
    #[serde(rename_all = "camelCase")]
    Stopped {
        /// Why.
        reason: crate::device::StopReason,
        /// The server's refusal code that stopped it (`logged-out` for a logout).
        code: String,
        /// What to tell the user, in English.
        message: String,
        /// … and in Japanese.
        message_ja: String,
    },
    /// The answer to a request the screens made.
    Reply {
        /// The request's ticket.
        ticket: u64,
        /// The answer (a refusal is one).
        result: RpcResult,
    },
    /// A request the screens made got no answer.
    #[serde(rename_all = "camelCase")]
    AskFailed {
        /// The request's ticket.
        ticket: u64,
        /// Why, as a code (`no-answer`, `connection-lost`, `stopped`).
        code: String,
        /// English.
        message: String,
        /// Japanese.
        message_ja: String,
    },
    /// A call result was saved on this device (and goes to the server with the
    /// outbox).
    #[serde(rename_all = "camelCase")]
    ResultSaved {
        /// The save's ticket.
        ticket: u64,
        /// The customer.
        customer: CustomerId,
        /// The call.
        call: CallId,
        /// Set when the pick was saved as made, without the tenant's rules: why.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kept_as_picked: Option<String>,
    },
    /// A call result was not saved: the rules (or the call's state) refused it;
    /// the form stays open with these words.
    #[serde(rename_all = "camelCase")]
    ResultRefused {
        /// The save's ticket.
        ticket: u64,
        /// The reason's code.
        code: String,
        /// English.
        message: String,
        /// Japanese.
        message_ja: String,
    },
}

/// Why a client session call failed; the driver drops the connection.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientFailure {
    /// Local storage failed or held something unreadable.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The server broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server refused, with its reason.
    #[error("{}", .0.message)]
    Refused(ErrorBody),
}

/// What a call produced, released by the driver after its commit.
#[derive(Debug, Default)]
pub struct ClientOutput {
    /// Messages for the server, in order.
    pub messages: Vec<Message>,
    /// What to tell the user.
    pub events: Vec<ClientEvent>,
    /// The server closed the session with this error (after the commit, the
    /// driver ends the connection with it).
    pub refused: Option<ErrorBody>,
}

/// A device's local storage, as the client session asks it (one write
/// transaction per call: see the module's call order).
pub trait ClientStore {
    /// A loaded document.
    type Doc: LoadedDoc;

    /// The saved catch-up cursor.
    fn cursor(&mut self) -> Result<Option<Cursor>, StorageError>;
    /// Saves the catch-up cursor.
    fn set_cursor(&mut self, cursor: &Cursor) -> Result<(), StorageError>;
    /// Loads a document (`None`: this device does not hold it yet); changes made
    /// to it are written by `actor`.
    fn load(
        &mut self,
        tenant: &TenantId,
        customer: &CustomerId,
        actor: ActorId,
    ) -> Result<Option<Self::Doc>, StorageError>;
    /// Whether a document kept in memory still describes storage (no other process,
    /// such as a local command, saved it since).
    fn is_current(&mut self, doc: &Self::Doc) -> Result<bool, StorageError>;
    /// Saves what changed in a loaded document.
    fn save(&mut self, doc: &mut Self::Doc) -> Result<(), StorageError>;
    /// Stores a document this device receives for the first time.
    fn insert(&mut self, doc: &mut CustomerDoc) -> Result<Self::Doc, StorageError>;
    /// The saved sync state with the server for a document.
    fn sync_state(
        &mut self,
        tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<Option<Vec<u8>>, StorageError>;
    /// Saves the sync state with the server for a document.
    fn set_sync_state(
        &mut self,
        tenant: &TenantId,
        customer: &CustomerId,
        state: &[u8],
    ) -> Result<(), StorageError>;
    /// Documents with local changes the server has not confirmed.
    fn outbox(&mut self, tenant: &TenantId) -> Result<Vec<CustomerId>, StorageError>;
    /// The server holds the document's local changes (or refused them for good).
    fn clear_outbox(
        &mut self,
        tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<(), StorageError>;
    /// Forgets a document and everything kept for it (the server refused this
    /// device's changes to it; the server's copy is fetched again).
    fn forget(&mut self, tenant: &TenantId, customer: &CustomerId) -> Result<(), StorageError>;
    /// The tenant's configuration document, as last synced.
    fn config(&mut self, tenant: &TenantId) -> Result<Option<Vec<u8>>, StorageError>;
    /// Saves the configuration document (whole).
    fn put_config(&mut self, tenant: &TenantId, bytes: &[u8]) -> Result<(), StorageError>;
    /// Forgets the configuration document.
    fn delete_config(&mut self, tenant: &TenantId) -> Result<(), StorageError>;
}

/// Who the device is.
#[derive(Debug, Clone)]
pub struct Device {
    /// Its tenant.
    pub tenant: TenantId,
    /// Its id.
    pub id: DeviceId,
    /// The Automerge actor it writes under.
    pub actor: ActorId,
}

/// One connection's worth of a device's sync. `D` is the storage's document.
pub struct ClientSession<D> {
    device: Device,
    catch_up: Option<CatchUp>,
    states: HashMap<CustomerId, sync::State>,
    /// Documents the server started sending that are not whole yet.
    fresh: HashMap<CustomerId, AutoCommit>,
    /// Documents kept between messages; checked against storage before use, since
    /// local commands in other processes write to it too.
    docs: HashMap<CustomerId, D>,
    replies: HashMap<u64, RpcResult>,
    next_rpc: u64,
    config: Option<config::LocalConfig>,
}

type Outcome = Result<(), ClientFailure>;

impl<D: LoadedDoc> ClientSession<D> {
    /// A session for `device`, not yet joined.
    pub fn new(device: Device) -> Self {
        Self {
            device,
            catch_up: None,
            states: HashMap::new(),
            fresh: HashMap::new(),
            docs: HashMap::new(),
            replies: HashMap::new(),
            next_rpc: 1,
            config: None,
        }
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The first message: `join` with the session token and the saved cursor.
    pub fn join<S: ClientStore<Doc = D>>(
        &self,
        store: &mut S,
        token: &str,
    ) -> Result<Message, ClientFailure> {
        Ok(Message::Join {
            sender_id: self.device.id.clone(),
            supported_protocol_versions: vec![wire::PROTOCOL_VERSION.to_owned()],
            token: token.to_owned(),
            cursor: store.cursor()?,
        })
    }

    /// The server's answer to `join`: `peer` starts the catch-up, the configuration's
    /// sync and the outbox push; anything else is a refusal or a broken protocol.
    pub fn on_peer<S: ClientStore<Doc = D>>(
        &mut self,
        store: &mut S,
        message: Message,
        out: &mut ClientOutput,
    ) -> Outcome {
        let (target, changed, config_heads) = match message {
            Message::Peer {
                cursor,
                changed,
                config_heads,
                ..
            } => (cursor, changed, config_heads),
            Message::Error(body) => return Err(ClientFailure::Refused(body)),
            other => {
                return Err(ClientFailure::Protocol(format!(
                    "expected 'peer', got '{}'",
                    other.kind()
                )));
            }
        };
        out.events.push(ClientEvent::Joined {
            changed: changed.len(),
        });
        self.catch_up = Some(CatchUp::new(target, changed));
        self.start_config_sync(store, &config_heads, out)?;
        if let Some(cursor) = self.catch_up.as_mut().and_then(CatchUp::reached) {
            store.set_cursor(&cursor)?;
            out.events.push(ClientEvent::CaughtUp { seq: cursor.seq });
        }
        self.push_local(store, out)
    }

    /// Documents still to catch up on.
    pub fn catching_up(&self) -> usize {
        self.catch_up.as_ref().map_or(0, CatchUp::pending)
    }

    /// Whether the catch-up is done, the configuration is synced and the server
    /// holds every local change.
    pub fn is_settled<S: ClientStore<Doc = D>>(
        &mut self,
        store: &mut S,
    ) -> Result<bool, ClientFailure> {
        Ok(self.catching_up() == 0
            && self.config_settled()
            && store.outbox(&self.device.tenant)?.is_empty())
    }

    /// `leave`, to say goodbye.
    pub fn leave(&self) -> Message {
        Message::Leave {
            sender_id: self.device.id.to_string(),
        }
    }

    /// Asks the server something; the answer arrives through [`Self::handle`] and
    /// [`Self::take_reply`].
    pub fn send_rpc(&mut self, call: RpcCall, out: &mut ClientOutput) -> u64 {
        let id = self.next_rpc;
        self.next_rpc += 1;
        out.messages.push(Message::Rpc { id, call });
        id
    }

    /// The answer to request `id`, once it has arrived.
    pub fn take_reply(&mut self, id: u64) -> Option<RpcResult> {
        self.replies.remove(&id)
    }

    fn state<S: ClientStore<Doc = D>>(
        &mut self,
        store: &mut S,
        doc: &CustomerId,
    ) -> Result<&mut sync::State, ClientFailure> {
        if !self.states.contains_key(doc) {
            let saved = store.sync_state(&self.device.tenant, doc)?;
            let mut state = saved
                .and_then(|bytes| sync::State::decode(&bytes).ok())
                .unwrap_or_default();
            callsync_core::catchup::resume(&mut state);
            self.states.insert(doc.clone(), state);
        }
        self.states
            .get_mut(doc)
            .ok_or_else(|| ClientFailure::Protocol("sync state vanished".to_owned()))
    }

    /// The document as saved, from the kept copy if it is still current.
    fn doc<S: ClientStore<Doc = D>>(
        &mut self,
        store: &mut S,
        doc: &CustomerId,
    ) -> Result<Option<D>, ClientFailure> {
        if let Some(kept) = self.docs.remove(doc)
            && store.is_current(&kept)?
        {
            return Ok(Some(kept));
        }
        Ok(store.load(&self.device.tenant, doc, self.device.actor.clone())?)
    }

    fn keep(&mut self, doc: CustomerId, stored: D) {
        if self.docs.len() >= MAX_KEPT_DOCS
            && let Some(any) = self.docs.keys().next().cloned()
        {
            self.docs.remove(&any);
        }
        self.docs.insert(doc, stored);
    }

    /// Offers the server what it lacks of every document in the outbox.
    pub fn push_local<S: ClientStore<Doc = D>>(
        &mut self,
        store: &mut S,
        out: &mut ClientOutput,
    ) -> Outcome {
        for doc in store.outbox(&self.device.tenant)? {
            let Some(mut stored) = self.doc(store, &doc)? else {
                continue;
            };
            let state = self.state(store, &doc)?;
            let message = stored.doc_mut().generate_sync_message(state);
            self.keep(doc.clone(), stored);
            if let Some(message) = message {
                push_sync(out, doc, message);
            }
        }
        Ok(())
    }

    /// Whether the local document holds everything the server last said it had.
    fn holds_server_heads<S: ClientStore<Doc = D>>(
        &mut self,
        store: &mut S,
        doc: &CustomerId,
    ) -> Result<bool, ClientFailure> {
        let Some(state) = self.states.get(doc).cloned() else {
            return Ok(false);
        };
        match self.doc(store, doc)? {
            Some(mut stored) => {
                let holds = holds_peer_heads(stored.doc_mut().automerge_mut(), &state);
                self.keep(doc.clone(), stored);
                Ok(holds)
            }
            None => Ok(false),
        }
    }

    /// Handles one message from the server.
    pub fn handle<S: ClientStore<Doc = D>>(
        &mut self,
        store: &mut S,
        message: Message,
        out: &mut ClientOutput,
    ) -> Outcome {
        match message {
            Message::Sync { document_id, data } | Message::Request { document_id, data } => {
                let message = sync::Message::decode(&data)
                    .map_err(|e| ClientFailure::Protocol(format!("bad sync message: {e}")))?;
                self.apply(store, &document_id, message, out)?;
                if let Some(reply) = self.reply_for(store, &document_id)? {
                    push_sync(out, document_id, reply);
                }
            }
            Message::ConfigSync { data } => self.on_config_sync(store, &data, out)?,
            Message::DocUnavailable { document_id } => {
                if let Some(cursor) = self
                    .catch_up
                    .as_mut()
                    .and_then(|c| c.document_done(&document_id))
                {
                    store.set_cursor(&cursor)?;
                    out.events.push(ClientEvent::CaughtUp { seq: cursor.seq });
                }
                out.events.push(ClientEvent::Unavailable {
                    customer: document_id,
                });
            }
            Message::Rejected { document_id, error } => {
                // The server will never take these changes, and Automerge cannot
                // take them back: the local copy is forgotten and the server's
                // fetched again, so this device converges on what the server holds
                // (the refused changes are reported, never silently kept).
                store.forget(&self.device.tenant, &document_id)?;
                self.docs.remove(&document_id);
                let mut state = sync::State::new();
                let mut empty = AutoCommit::new().with_actor(self.device.actor.clone());
                if let Some(message) = empty.sync().generate_sync_message(&mut state) {
                    push_sync(out, document_id.clone(), message);
                }
                self.states.insert(document_id.clone(), state);
                self.fresh.insert(document_id.clone(), empty);
                // Settled only once the server's copy is back.
                if let Some(catch_up) = self.catch_up.as_mut() {
                    catch_up.add(document_id.clone());
                }
                tracing::info!(doc = %document_id, code = %error.code, "the server rejected local changes; fetching its copy again");
                out.events.push(ClientEvent::Rejected {
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
            } => out.events.push(ClientEvent::Presence {
                device,
                kind,
                online,
            }),
            Message::PhoneUploads { device, uploads } => out
                .events
                .push(ClientEvent::PhoneUploads { device, uploads }),
            Message::Reply { id, result } => {
                if let RpcResult::Subscribed(documents) = &result {
                    // A subscribed (or created) document syncs like a changed one:
                    // settle until it has arrived.
                    for doc in documents {
                        if !self.holds_server_heads(store, doc)?
                            && let Some(catch_up) = self.catch_up.as_mut()
                        {
                            catch_up.add(doc.clone());
                        }
                    }
                }
                self.replies.insert(id, result);
            }
            Message::Error(body) => {
                if body.code == "config-read-only" {
                    self.forget_config(store)?;
                }
                out.refused = Some(body);
            }
            other => {
                return Err(ClientFailure::Protocol(format!(
                    "unexpected '{}' from the server",
                    other.kind()
                )));
            }
        }
        Ok(())
    }

    /// Applies a server sync message to the local document (with its sync state)
    /// and reports what changed.
    fn apply<S: ClientStore<Doc = D>>(
        &mut self,
        store: &mut S,
        doc_id: &CustomerId,
        message: sync::Message,
        out: &mut ClientOutput,
    ) -> Outcome {
        let tenant = self.device.tenant.clone();
        let actor = self.device.actor.clone();
        self.state(store, doc_id)?;
        let kept = self.doc(store, doc_id)?;
        let state = self
            .states
            .get_mut(doc_id)
            .ok_or_else(|| ClientFailure::Protocol("sync state vanished".to_owned()))?;
        let (before, mut after_doc) = match kept {
            Some(mut stored) => {
                let before = event_keys(stored.doc());
                stored
                    .doc_mut()
                    .receive_sync_message(state, message)
                    .map_err(|e| ClientFailure::Protocol(format!("sync message refused: {e}")))?;
                store.save(&mut stored)?;
                (before, Some(stored))
            }
            None => {
                let am = self
                    .fresh
                    .entry(doc_id.clone())
                    .or_insert_with(|| AutoCommit::new().with_actor(actor.clone()));
                am.sync()
                    .receive_sync_message(state, message)
                    .map_err(|e| ClientFailure::Protocol(format!("sync message refused: {e}")))?;
                match CustomerDoc::from_automerge(am.clone()) {
                    Ok(mut doc) if doc.tenant() == &tenant && doc.id() == doc_id => {
                        let stored = store.insert(&mut doc)?;
                        self.fresh.remove(doc_id);
                        (BTreeSet::new(), Some(stored))
                    }
                    // Not enough yet to be a document: wait for more.
                    _ => (BTreeSet::new(), None),
                }
            }
        };
        store.set_sync_state(&tenant, doc_id, &state.encode())?;
        let caught_up = match after_doc.as_mut() {
            Some(stored) => holds_peer_heads(stored.doc_mut().automerge_mut(), state),
            None => false,
        };
        let acknowledged = match after_doc.as_mut() {
            Some(stored) => {
                let mut ours = stored.doc_mut().heads();
                ours.sort();
                let mut theirs = state.their_heads.clone().unwrap_or_default();
                theirs.sort();
                ours == theirs
            }
            None => false,
        };
        if let Some(stored) = after_doc {
            report_changes(
                stored.doc(),
                doc_id,
                &before,
                &self.device.id,
                &mut out.events,
            );
            self.keep(doc_id.clone(), stored);
        }
        if acknowledged && store.outbox(&tenant)?.contains(doc_id) {
            store.clear_outbox(&tenant, doc_id)?;
            out.events.push(ClientEvent::Acknowledged {
                customer: doc_id.clone(),
            });
        }
        if caught_up
            && let Some(catch_up) = self.catch_up.as_mut()
            && catch_up.is_pending(doc_id)
            && let Some(cursor) = catch_up.document_done(doc_id)
        {
            store.set_cursor(&cursor)?;
            out.events.push(ClientEvent::CaughtUp { seq: cursor.seq });
        }
        Ok(())
    }

    fn reply_for<S: ClientStore<Doc = D>>(
        &mut self,
        store: &mut S,
        doc_id: &CustomerId,
    ) -> Result<Option<sync::Message>, ClientFailure> {
        let Some(mut state) = self.states.remove(doc_id) else {
            return Ok(None);
        };
        let message = if let Some(am) = self.fresh.get_mut(doc_id) {
            am.sync().generate_sync_message(&mut state)
        } else {
            match self.doc(store, doc_id) {
                Ok(Some(mut stored)) => {
                    let message = stored.doc_mut().generate_sync_message(&mut state);
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
}

/// Queues one document's sync message.
fn push_sync(out: &mut ClientOutput, document_id: CustomerId, message: sync::Message) {
    out.messages.push(Message::Sync {
        document_id,
        data: message.encode(),
    });
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
            let advice: Vec<(&str, &str)> = view.flags.iter().filter_map(|f| f.advice()).collect();
            events.push(ClientEvent::CallUpdated {
                customer: customer.clone(),
                call,
                phase: view.phase.as_str().to_owned(),
                flags: view.flags.iter().map(|f| f.as_str().to_owned()).collect(),
                advice_en: advice.iter().map(|(en, _)| (*en).to_owned()).collect(),
                advice_ja: advice.iter().map(|(_, ja)| (*ja).to_owned()).collect(),
            });
        }
    }
}

/// How long to wait before reconnect attempt `attempt` (0-based): exponential from
/// `min`, capped at `max`, with "full jitter" (uniform in [wait/2, wait], from
/// `unit` in [0, 1] the driver draws), so a thousand phones coming back at once do
/// not reconnect in lockstep.
pub fn backoff(min: Duration, max: Duration, attempt: u32, unit: f64) -> Duration {
    let base = min.saturating_mul(1u32 << attempt.min(16)).min(max);
    base.mul_f64(0.5 + unit.clamp(0.0, 1.0) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_caps_and_never_drops_below_half() {
        let (min, max) = (Duration::from_millis(200), Duration::from_secs(30));
        for attempt in 0..40 {
            let base = min.saturating_mul(1u32 << attempt.min(16)).min(max);
            for unit in [0.0, 0.3, 1.0, -1.0, 2.0] {
                let wait = backoff(min, max, attempt, unit);
                assert!(
                    wait <= base && wait >= base / 2,
                    "{attempt} {unit}: {wait:?}"
                );
            }
        }
        assert_eq!(backoff(min, max, 30, 1.0), max);
        assert_eq!(backoff(min, max, 0, 0.0), min / 2);
    }
}
