//! The hub: the one place where the server reads and writes documents.
//!
//! Owns: the server's copies of documents (an LRU cache over the store), every
//! open session's per-document Automerge sync state, admission of incoming
//! changes, fan-out to subscribed devices that are online, subscriptions, the
//! start-limit expiry, and presence.
//! Does not own: sockets (connection tasks pass messages in and carry frames
//! out), or accounts (answered on the connection's task).
//!
//! It runs on its own thread and takes its inputs in batches: everything a batch
//! changes is written in one SQLite transaction, and no message that reflects a
//! change leaves before that transaction commits — so a device never hears of a
//! change (its own included) that a crash could take back. If the commit fails,
//! the batch's messages are dropped, the cache is emptied and the senders are
//! disconnected, to sync again from what is on disk.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use automerge::ActorId;
use automerge::sync::{self, SyncDoc};
use callsync_core::admission::{Directory, Sender, admit};
use callsync_core::screen::{ScreenLimits, screen_message};
use callsync_core::wire::{
    self, Cursor, CustomerSummary, DeviceSummary, ErrorBody, Message, Refusal, RpcCall, RpcResult,
};
use callsync_core::{
    CallEvent, CustomerDoc, CustomerId, DeviceId, DeviceKind, EventId, EventKind, Phase,
    ResultCatalog, RuleContext, Stamp, TenantId, Timestamp, UserId,
};
use callsync_store::{
    AccountQueries, Read, ReplicationQueries, Store, StoreError, StoredDoc, WriteTx,
};
use tokio::sync::mpsc;

use crate::accounts::Session;
use crate::clock;

mod config;

pub(crate) use config::install_needs_admin;

/// A connection's number, unique for the server's lifetime.
pub(crate) type ConnId = u64;

/// What the hub sends a connection's writer.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// An encoded frame.
    Frame(Arc<Vec<u8>>),
    /// Send this error, then close.
    Close(ErrorBody),
}

/// A connection's way out, as the hub holds it.
#[derive(Debug)]
pub(crate) struct Outbox {
    /// Frames and the closing message, in order, for the connection's writer.
    pub(crate) queue: mpsc::Sender<Outgoing>,
    /// Cuts the connection off at once, with this error as the close reason: for
    /// when the writer is stuck (the device does not read) and the queue has no
    /// room even for the closing message.
    pub(crate) cut_off: tokio::sync::watch::Sender<Option<ErrorBody>>,
}

impl Outbox {
    /// Sends `body` and closes after what is queued; cuts the connection off if
    /// the queue is full.
    fn close(&self, body: ErrorBody) {
        if let Err(e) = self.queue.try_send(Outgoing::Close(body))
            && let Outgoing::Close(body) = e.into_inner()
        {
            self.cut_off.send_replace(Some(body));
        }
    }
}

/// What the hub is told.
#[derive(Debug)]
pub(crate) enum HubInput {
    /// A session was authenticated on a connection.
    Open {
        conn: ConnId,
        session: Session,
        cursor: Option<Cursor>,
        out: Outbox,
    },
    /// A message arrived on an open connection.
    Received { conn: ConnId, message: Message },
    /// The connection is gone.
    Closed { conn: ConnId },
    /// A member's sessions were ended (contract revoked, password reset): close
    /// their connections now, with this reason.
    EndSessions {
        tenant: TenantId,
        user: UserId,
        reason: ErrorBody,
    },
    /// A plugin install that passed every check on the connection's task (off this
    /// thread: compiling takes tens of milliseconds): publish it and answer `rpc` `id`.
    Publish {
        conn: ConnId,
        id: u64,
        prepared: Box<callsync_plugin_host::install::Prepared>,
    },
    /// Finish the current batch and stop.
    Shutdown,
}

/// Fixed settings of a hub.
#[derive(Debug, Clone)]
pub(crate) struct HubConfig {
    pub(crate) start_limit_ms: i64,
    pub(crate) max_customers_per_tenant: u64,
    pub(crate) cache_docs: usize,
    pub(crate) server_device: DeviceId,
    pub(crate) server_user: UserId,
    pub(crate) server_actor: ActorId,
    pub(crate) epoch: String,
    /// Runs result-rule plugins (installs and re-evaluation).
    pub(crate) plugins: Arc<callsync_plugin_host::PluginHost>,
}

/// Largest uncompressed size (all its changes' bytes) a device's changes may take
/// a customer document to: half a frame, so any sync of it, whole or in changes,
/// fits one message, and a cached document stays small. A 1,000-call customer is
/// about 1 MB uncompressed.
pub(crate) const MAX_DOCUMENT_BYTES: u64 = (wire::MAX_FRAME_BYTES / 2) as u64;

/// Whether an answer encodes into one frame.
fn fits_one_frame(result: &RpcResult) -> bool {
    wire::encode_frame(&Message::Reply {
        id: 0,
        result: result.clone(),
    })
    .is_ok()
}

/// Most customers an unpaged `customer-list` (an older client's) answers.
const MAX_UNPAGED_CUSTOMERS: u32 = 10_000;

/// A `customer-list` answer of `rows`.
fn customer_page(rows: Vec<callsync_store::CustomerRow>) -> RpcResult {
    RpcResult::Customers(
        rows.into_iter()
            .map(|r| CustomerSummary {
                id: r.id,
                company: r.company,
                contact: r.contact,
                owner: r.owner,
                status: r.status,
            })
            .collect(),
    )
}

/// The answer to an unpaged `customer-list` given up to `max + 1` rows: all of
/// them, or `reply-too-large` past `max` rows or one frame.
fn unpaged_customers(rows: Vec<callsync_store::CustomerRow>, max: u32) -> RpcResult {
    let too_many = rows.len() > max as usize;
    let result = customer_page(rows);
    if too_many || !fits_one_frame(&result) {
        return RpcResult::Refused(Refusal::ReplyTooLarge { max }.body());
    }
    result
}

/// Inputs waiting for the hub at most; past this, connection tasks wait (and stop
/// reading their streams) until the hub catches up.
pub(crate) const INPUT_QUEUE: usize = 4_096;

/// Documents a batch starts syncing for joining devices, over all of them.
const CATCH_UP_PER_BATCH: usize = 256;
/// Free room a joining device's outgoing queue needs for its next catch-up slice.
const OUT_ROOM_FOR_CATCH_UP: usize = 64;
/// Plugin time (re-running result decisions) a tenant may use on the hub thread
/// per second, on average …
const PLUGIN_MS_PER_SEC: f64 = 250.0;
/// … and in a burst. Past it, a device sending results is asked to come back
/// later (`busy`), so one tenant's slow plugin cannot stall every tenant.
const PLUGIN_BURST_MS: f64 = 2_000.0;

/// Most inputs handled in one transaction.
const MAX_BATCH: usize = 512;
/// The longest the hub sleeps with nothing to do (it also wakes for expiries).
const IDLE_WAKE: Duration = Duration::from_secs(1);

type DocKey = (TenantId, CustomerId);

struct Cached {
    stored: StoredDoc,
    used: u64,
}

struct Conn {
    session: Session,
    out: Outbox,
    states: HashMap<CustomerId, sync::State>,
    /// States changed since they were last saved.
    dirty: HashSet<CustomerId>,
    /// Sync state of the tenant's configuration document (kept for the
    /// connection only: the document is small and changes rarely).
    config_state: sync::State,
    /// Documents changed since the device's cursor that it has not been sent yet:
    /// a join is answered a slice per batch, so a device with thousands of
    /// documents cannot hold the hub for everyone else.
    catch_up: VecDeque<CustomerId>,
}

#[derive(Default)]
struct Batch {
    sends: Vec<(ConnId, Message)>,
    closes: Vec<(ConnId, ErrorBody)>,
    senders: HashSet<ConnId>,
}

impl Batch {
    fn send(&mut self, conn: ConnId, message: Message) {
        self.sends.push((conn, message));
    }
}

pub(crate) struct Hub {
    store: Store,
    state: HubState,
}

struct HubState {
    config: HubConfig,
    docs: HashMap<DocKey, Cached>,
    /// Each tenant's configuration document, loaded when first needed.
    configs: HashMap<TenantId, callsync_core::tenant_config::TenantConfigDoc>,
    /// Each tenant's result types for admission (see `config::catalog`).
    catalogs: HashMap<TenantId, Arc<ResultCatalog>>,
    tick: u64,
    conns: HashMap<ConnId, Conn>,
    /// Connections with sync states changed since the last batch.
    dirty_conns: HashSet<ConnId>,
    /// The open connections of each device (fan-out looks devices up here rather
    /// than scanning every connection).
    by_device: HashMap<DeviceId, Vec<ConnId>>,
    /// Connections with documents left to catch up on.
    catching_up: BTreeSet<ConnId>,
    /// Documents whose stored bytes did not load (logged once; not tried again
    /// until the server restarts, so a broken document costs nothing per batch).
    unreadable: HashSet<DocKey>,
    /// An expiry pass skipped an unreadable document that is due.
    expiry_blocked: bool,
    /// The last catch-up pass found no joining device with room to send to.
    catch_up_stalled: bool,
    /// Plugin time each tenant may still spend re-running decisions on this
    /// thread (see [`PLUGIN_MS_PER_SEC`]).
    plugin_budget: HashMap<TenantId, PluginBudget>,
}

/// A tenant's allowance of plugin time on the hub thread.
#[derive(Debug, Clone, Copy)]
struct PluginBudget {
    ms: f64,
    at: std::time::Instant,
}

struct TxDirectory<'a, R: Read>(&'a R);

impl<R: Read> Directory for TxDirectory<'_, R> {
    fn actor_is_bound_to(&self, actor: &ActorId, device: &DeviceId) -> bool {
        matches!(self.0.device_of_actor(&actor.to_hex_string()), Ok(Some(d)) if &d == device)
    }

    fn is_phone_of(&self, device: &DeviceId, user: &UserId) -> bool {
        matches!(self.0.device(device), Ok(Some(d)) if d.kind == DeviceKind::Phone && &d.email == user)
    }
}

impl Hub {
    pub(crate) fn new(store: Store, config: HubConfig) -> Self {
        Self {
            store,
            state: HubState {
                config,
                docs: HashMap::new(),
                configs: HashMap::new(),
                catalogs: HashMap::new(),
                tick: 0,
                conns: HashMap::new(),
                dirty_conns: HashSet::new(),
                by_device: HashMap::new(),
                catching_up: BTreeSet::new(),
                unreadable: HashSet::new(),
                expiry_blocked: false,
                catch_up_stalled: false,
                plugin_budget: HashMap::new(),
            },
        }
    }

    /// Runs until [`HubInput::Shutdown`] or every sender is gone.
    pub(crate) fn run(mut self, mut inputs: mpsc::Receiver<HubInput>) {
        // Only to wait on the bounded queue with a timeout; the hub itself does no
        // async work.
        let waiter = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "the hub could not start its timer");
                return;
            }
        };
        loop {
            let wait = self.next_wake();
            let mut batch = Vec::new();
            // The timer is made inside `block_on`: it needs the runtime's clock.
            match waiter.block_on(async { tokio::time::timeout(wait, inputs.recv()).await }) {
                Ok(Some(input)) => batch.push(input),
                Ok(None) => break,
                Err(_elapsed) => {}
            }
            while batch.len() < MAX_BATCH {
                match inputs.try_recv() {
                    Ok(input) => batch.push(input),
                    Err(_) => break,
                }
            }
            let stop = batch.iter().any(|i| matches!(i, HubInput::Shutdown));
            self.process(batch);
            if stop {
                break;
            }
        }
        tracing::info!("hub stopped");
    }

    fn next_wake(&self) -> Duration {
        if !self.state.catching_up.is_empty() {
            // Continue at once, or shortly if every joining device's queue is full.
            return if self.state.catch_up_stalled {
                Duration::from_millis(10)
            } else {
                Duration::ZERO
            };
        }
        if self.state.expiry_blocked {
            return IDLE_WAKE;
        }
        let due = match self.store.oldest_awaiting_start() {
            Ok(Some(at)) => at.plus_millis(self.state.config.start_limit_ms),
            _ => return IDLE_WAKE,
        };
        let left = due.as_millis() - clock::now().as_millis();
        Duration::from_millis(left.clamp(1, IDLE_WAKE.as_millis() as i64) as u64)
    }

    fn process(&mut self, inputs: Vec<HubInput>) {
        let mut batch = Batch::default();
        let state = &mut self.state;
        let result = (|| -> Result<(), StoreError> {
            let mut tx = self.store.write()?;
            for input in inputs {
                state.handle(&mut tx, &mut batch, input)?;
            }
            state.advance_catch_up(&mut tx, &mut batch)?;
            state.expire_due(&mut tx, &mut batch, clock::now())?;
            state.save_sync_states(&mut tx)?;
            tx.commit()
        })();
        match result {
            Ok(()) => self.state.flush(batch),
            Err(e) => {
                tracing::error!(error = %e, "hub batch failed; nothing of it was acknowledged");
                self.state.docs.clear();
                self.state.configs.clear();
                self.state.catalogs.clear();
                let body = Refusal::SaveFailed.body();
                for conn in batch.senders {
                    if let Some(c) = self.state.remove_conn(conn) {
                        c.out.close(body.clone());
                    }
                }
            }
        }
    }
}

impl HubState {
    fn remove_conn(&mut self, conn: ConnId) -> Option<Conn> {
        let c = self.conns.remove(&conn)?;
        self.catching_up.remove(&conn);
        if let Some(list) = self.by_device.get_mut(&c.session.device) {
            list.retain(|id| *id != conn);
            if list.is_empty() {
                self.by_device.remove(&c.session.device);
            }
        }
        Some(c)
    }

    fn handle(
        &mut self,
        tx: &mut WriteTx<'_>,
        batch: &mut Batch,
        input: HubInput,
    ) -> Result<(), StoreError> {
        match input {
            HubInput::Open {
                conn,
                session,
                cursor,
                out,
            } => {
                // If the batch fails, the new connection is told so and reconnects
                // rather than waiting for a `peer` that never comes.
                batch.senders.insert(conn);
                self.open(tx, batch, conn, session, cursor, out)
            }
            HubInput::Received { conn, message } => {
                if !self.conns.contains_key(&conn) {
                    return Ok(());
                }
                batch.senders.insert(conn);
                match message {
                    Message::Sync { document_id, data }
                    | Message::Request { document_id, data } => {
                        self.sync(tx, batch, conn, document_id, &data)
                    }
                    Message::ConfigSync { data } => self.config_sync(tx, batch, conn, &data),
                    Message::Rpc { id, call } => {
                        let result = self.rpc(tx, batch, conn, call)?;
                        batch.send(conn, Message::Reply { id, result });
                        Ok(())
                    }
                    other => {
                        batch.closes.push((
                            conn,
                            Refusal::UnexpectedMessage {
                                kind: other.kind().to_owned(),
                            }
                            .body(),
                        ));
                        Ok(())
                    }
                }
            }
            HubInput::Closed { conn } => {
                self.save_conn_states(tx, conn)?;
                if let Some(c) = self.remove_conn(conn) {
                    let still_online = self
                        .conns
                        .values()
                        .any(|o| o.session.device == c.session.device);
                    if !still_online {
                        self.presence(batch, &c.session, false);
                    }
                }
                Ok(())
            }
            HubInput::EndSessions {
                tenant,
                user,
                reason,
            } => {
                for (id, c) in &self.conns {
                    if c.session.tenant == tenant && c.session.user == user {
                        batch.closes.push((*id, reason.clone()));
                    }
                }
                Ok(())
            }
            HubInput::Publish { conn, id, prepared } => {
                if self.conns.contains_key(&conn) {
                    batch.senders.insert(conn);
                    let result = self.publish_plugin(tx, batch, conn, &prepared)?;
                    batch.send(conn, Message::Reply { id, result });
                }
                Ok(())
            }
            HubInput::Shutdown => Ok(()),
        }
    }

    fn open(
        &mut self,
        tx: &mut WriteTx<'_>,
        batch: &mut Batch,
        conn: ConnId,
        session: Session,
        cursor: Option<Cursor>,
        out: Outbox,
    ) -> Result<(), StoreError> {
        let since = cursor
            .filter(|c| c.epoch == self.config.epoch)
            .map(|c| c.seq);
        let changed = tx.changed_for(&session.device, &session.tenant, since)?;
        let target = Cursor {
            epoch: self.config.epoch.clone(),
            seq: tx.last_change_seq()?,
        };
        let was_online = self
            .conns
            .values()
            .any(|c| c.session.device == session.device);
        // Tell the newcomer which of the user's other devices are online.
        let mut others: Vec<(DeviceId, DeviceKind)> = self
            .conns
            .values()
            .filter(|c| c.session.tenant == session.tenant && c.session.user == session.user)
            .filter(|c| c.session.device != session.device)
            .map(|c| (c.session.device.clone(), c.session.kind))
            .collect();
        others.sort();
        others.dedup();
        self.by_device
            .entry(session.device.clone())
            .or_default()
            .push(conn);
        self.conns.insert(
            conn,
            Conn {
                session: session.clone(),
                out,
                states: HashMap::new(),
                dirty: HashSet::new(),
                config_state: sync::State::new(),
                catch_up: VecDeque::new(),
            },
        );
        let config_heads = contained(self.config_heads(tx, &session.tenant))?.unwrap_or_else(|e| {
            tracing::error!(tenant = %session.tenant, error = %e, "the tenant configuration cannot be read");
            Vec::new()
        });
        batch.send(
            conn,
            Message::Peer {
                sender_id: self.config.server_device.to_string(),
                selected_protocol_version: wire::PROTOCOL_VERSION.to_owned(),
                tenant: session.tenant.clone(),
                user: session.user.clone(),
                role: session.role,
                cursor: target,
                changed: changed.clone(),
                config_heads,
            },
        );
        for (device, kind) in others {
            batch.send(
                conn,
                Message::Presence {
                    device,
                    kind,
                    online: true,
                },
            );
        }
        if !changed.is_empty() {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.catch_up = changed.into();
            }
            self.catching_up.insert(conn);
        }
        if !was_online {
            self.presence(batch, &session, true);
        }
        tracing::info!(device = %session.device, user = %session.user, "device joined");
        Ok(())
    }

    /// Tells the user's other connections that `session`'s device came or went.
    fn presence(&mut self, batch: &mut Batch, session: &Session, online: bool) {
        let targets: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.session.tenant == session.tenant && c.session.user == session.user)
            .filter(|(_, c)| c.session.device != session.device)
            .map(|(id, _)| *id)
            .collect();
        for conn in targets {
            batch.send(
                conn,
                Message::Presence {
                    device: session.device.clone(),
                    kind: session.kind,
                    online,
                },
            );
        }
    }

    /// Whether the session may see the document (it exists in the session's
    /// tenant, and the assignee restriction, where on, allows it).
    fn may_see(
        &self,
        tx: &WriteTx<'_>,
        session: &Session,
        doc: &CustomerId,
    ) -> Result<bool, StoreError> {
        let Some(owner) = tx.owner_of(&session.tenant, doc)? else {
            return Ok(false);
        };
        if session.role.is_limited_by_assignee_visibility()
            && tx.assignee_visibility(&session.tenant)?
        {
            return Ok(owner == session.user.as_str());
        }
        Ok(true)
    }

    /// Brings a document into the cache. `Ok(false)` when it cannot be read (it is
    /// gone, or its stored bytes no longer load): that is this document's problem
    /// alone, logged and answered per message, never a failed batch for everyone.
    /// Only a database error is returned as an error.
    fn load(&mut self, tx: &WriteTx<'_>, key: &DocKey) -> Result<bool, StoreError> {
        self.tick += 1;
        if let Some(cached) = self.docs.get_mut(key) {
            cached.used = self.tick;
            return Ok(true);
        }
        if self.unreadable.contains(key) {
            return Ok(false);
        }
        let stored = match tx.load(&key.0, &key.1, self.config.server_actor.clone()) {
            Ok(stored) => stored,
            Err(StoreError::Sqlite(e)) => return Err(StoreError::Sqlite(e)),
            Err(StoreError::UnknownCustomer { .. }) => return Ok(false),
            Err(e) => {
                tracing::error!(tenant = %key.0, doc = %key.1, error = %e, "a stored document cannot be read; skipping it until the server restarts");
                self.unreadable.insert(key.clone());
                return Ok(false);
            }
        };
        if self.docs.len() >= self.config.cache_docs {
            // Evict the least recently used (the cache is small; a scan is fine).
            if let Some(oldest) = self
                .docs
                .iter()
                .min_by_key(|(_, c)| c.used)
                .map(|(k, _)| k.clone())
            {
                self.docs.remove(&oldest);
            }
        }
        self.docs.insert(
            key.clone(),
            Cached {
                stored,
                used: self.tick,
            },
        );
        Ok(true)
    }

    /// Makes sure the connection has a sync state for the document, from memory
    /// or as saved for its device.
    fn ensure_state(
        &mut self,
        tx: &WriteTx<'_>,
        conn: ConnId,
        doc: &CustomerId,
    ) -> Result<(), StoreError> {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        if !c.states.contains_key(doc) {
            let saved = tx.sync_state(c.session.device.as_str(), &c.session.tenant, doc)?;
            let mut state = saved
                .and_then(|bytes| sync::State::decode(&bytes).ok())
                .unwrap_or_default();
            callsync_core::catchup::resume(&mut state);
            c.states.insert(doc.clone(), state);
        }
        Ok(())
    }

    /// Sends the connection the server's next sync message for a document, if
    /// there is anything to say.
    fn send_sync(&mut self, batch: &mut Batch, conn: ConnId, key: &DocKey, must: bool) {
        let (Some(c), Some(cached)) = (self.conns.get_mut(&conn), self.docs.get_mut(key)) else {
            return;
        };
        let Some(state) = c.states.get_mut(&key.1) else {
            return;
        };
        let am = cached.stored.doc.automerge_mut();
        let mut message = am.sync().generate_sync_message(state);
        if message.is_none() && must {
            // The state believes the device is up to date; start over so the
            // device hears our heads and can finish catching up.
            *state = sync::State::new();
            message = am.sync().generate_sync_message(state);
        }
        if let Some(message) = message {
            c.dirty.insert(key.1.clone());
            self.dirty_conns.insert(conn);
            batch.send(
                conn,
                Message::Sync {
                    document_id: key.1.clone(),
                    data: message.encode(),
                },
            );
        }
    }

    fn start_sync(
        &mut self,
        tx: &mut WriteTx<'_>,
        batch: &mut Batch,
        conn: ConnId,
        doc: &CustomerId,
    ) -> Result<(), StoreError> {
        let Some(tenant) = self.conns.get(&conn).map(|c| c.session.tenant.clone()) else {
            return Ok(());
        };
        let key = (tenant, doc.clone());
        if !self.load(tx, &key)? {
            batch.send(
                conn,
                Message::DocUnavailable {
                    document_id: doc.clone(),
                },
            );
            return Ok(());
        }
        self.ensure_state(tx, conn, doc)?;
        self.send_sync(batch, conn, &key, true);
        Ok(())
    }

    fn sync(
        &mut self,
        tx: &mut WriteTx<'_>,
        batch: &mut Batch,
        conn: ConnId,
        doc: CustomerId,
        data: &[u8],
    ) -> Result<(), StoreError> {
        let Some(session) = self.conns.get(&conn).map(|c| c.session.clone()) else {
            return Ok(());
        };
        if !self.may_see(tx, &session, &doc)? {
            batch.send(conn, Message::DocUnavailable { document_id: doc });
            return Ok(());
        }
        let message = match sync::Message::decode(data) {
            Ok(m) => m,
            Err(e) => {
                let error = Refusal::MalformedSync {
                    detail: e.to_string(),
                }
                .body();
                batch.send(
                    conn,
                    Message::Rejected {
                        document_id: doc,
                        error,
                    },
                );
                return Ok(());
            }
        };
        // Before Automerge sees it: everything the message would make the server
        // inflate or walk is bounded, and its summary is one an honest peer sends.
        if let Err(e) = screen_message(&message, &ScreenLimits::default()) {
            tracing::warn!(device = %session.device, doc = %doc, code = e.code(), error = %e, "refused a sync message before applying it");
            batch.send(
                conn,
                Message::Rejected {
                    document_id: doc,
                    error: Refusal::Screen(e).body(),
                },
            );
            return Ok(());
        }
        let key = (session.tenant.clone(), doc.clone());
        let catalog = match contained(self.catalog(tx, &session.tenant))? {
            Ok(catalog) => catalog,
            Err(e) => {
                // The whole tenant's problem, not this document's: the device is
                // disconnected (it reconnects with backoff and keeps its changes)
                // rather than told the document is unavailable, which would move
                // its catch-up cursor past it.
                batch.closes.push((conn, unreadable_config(&e)));
                return Ok(());
            }
        };
        if !self.load(tx, &key)? {
            batch.send(conn, Message::DocUnavailable { document_id: doc });
            return Ok(());
        }
        self.ensure_state(tx, conn, &doc)?;
        let (Some(c), Some(cached)) = (self.conns.get_mut(&conn), self.docs.get_mut(&key)) else {
            return Ok(());
        };
        let Some(state) = c.states.get_mut(&doc) else {
            return Ok(());
        };
        c.dirty.insert(doc.clone());
        self.dirty_conns.insert(conn);
        let stored = &mut cached.stored;
        let before = stored.doc.heads();
        // Automerge 0.12 asserts, rather than returns an error, on some changes it
        // parses fine: a sequence number that is not the actor's next, an actor the
        // document does not know at a sequence number past 1 (`change_graph.rs`,
        // `op_set2/change/batch.rs`). Knowing each actor's last sequence number
        // before applying would need a walk of the document's history, so the
        // panic is contained here instead: the document and the device's sync
        // state, which it may have left half-changed, are thrown away (the
        // document reloads from what is stored, where only admitted changes are)
        // and the message is refused. Nothing else is shared with the call.
        let received = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            stored
                .doc
                .automerge_mut()
                .sync()
                .receive_sync_message(state, message)
        }));
        let Ok(received) = received else {
            tracing::warn!(device = %session.device, doc = %doc, "Automerge panicked applying a device's sync message; refused it and reloaded the document");
            let error = Refusal::SyncNotApplied {
                detail: "Automerge refused the changes' sequence numbers or actors".to_owned(),
            };
            self.reject(batch, conn, &key, error.body());
            return Ok(());
        };
        if received.is_ok() && stored.doc.has_queued_changes() {
            // Changes whose dependencies the server lacks would wait in the cached
            // document, unadmitted, and collide with the next honest change under
            // the same actor and sequence number. Nothing of this message is kept.
            return self.drop_queued(tx, batch, conn, &key, &session);
        }
        let after = stored.doc.heads();
        let admitted = match received {
            Err(e) => Err(Refusal::SyncNotApplied {
                detail: e.to_string(),
            }
            .body()),
            Ok(()) if after == before => Ok(None),
            Ok(()) => {
                let sender = Sender {
                    tenant: session.tenant.clone(),
                    user: session.user.clone(),
                    role: session.role,
                    device: session.device.clone(),
                    kind: session.kind,
                };
                admit(
                    &mut stored.doc,
                    &before,
                    &sender,
                    &TxDirectory(&*tx),
                    &catalog,
                )
                .map(Some)
                .map_err(|e| Refusal::Admission(e).body())
            }
        };
        // Admitted changes: every result's decision is re-run with the rule set it
        // names, then the document is saved.
        let admitted = match admitted {
            Ok(Some(events)) => match contained(self.verify_results(tx, &session.tenant, &events))?
                .unwrap_or_else(|e| Err(config::Verdict::Refused(unreadable_config(&e))))
            {
                Err(config::Verdict::Busy) => {
                    // Not a refusal (that would make the device drop its result):
                    // the changes are forgotten and the device comes back later.
                    tracing::warn!(tenant = %session.tenant, device = %session.device, "plugin time used up; asking the device to retry");
                    self.docs.remove(&key);
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.states.insert(doc.clone(), sync::State::new());
                    }
                    batch.closes.push((conn, busy()));
                    return Ok(());
                }
                Err(config::Verdict::Refused(error)) => Err(error),
                Ok(()) => match self
                    .docs
                    .get_mut(&key)
                    .map(|c| tx.save_within(&mut c.stored, Some(MAX_DOCUMENT_BYTES)))
                {
                    None | Some(Ok(_)) => Ok(events),
                    Some(Err(StoreError::Sqlite(e))) => return Err(StoreError::Sqlite(e)),
                    Some(Err(e)) => Err(store_refusal(&e)),
                },
            },
            Ok(None) => Ok(Vec::new()),
            Err(error) => Err(error),
        };
        match admitted {
            Err(error) => {
                tracing::warn!(device = %session.device, doc = %doc, code = %error.code, "rejected changes");
                self.reject(batch, conn, &key, error);
            }
            Ok(events) => {
                if !events.is_empty() {
                    tx.subscribe(&session.device, &session.tenant, &doc)?;
                    for event in &events {
                        if let EventKind::Requested { origin, .. } = &event.kind {
                            tx.subscribe(origin, &session.tenant, &doc)?;
                        }
                    }
                    self.fan_out(tx, batch, &key, Some(conn))?;
                }
                self.send_sync(batch, conn, &key, false);
            }
        }
        Ok(())
    }

    /// Starts syncing the next slice of joining devices' changed documents: at most
    /// [`CATCH_UP_PER_BATCH`] in all, shared between the devices waiting.
    fn advance_catch_up(
        &mut self,
        tx: &mut WriteTx<'_>,
        batch: &mut Batch,
    ) -> Result<(), StoreError> {
        if self.catching_up.is_empty() {
            return Ok(());
        }
        let waiting: Vec<ConnId> = self.catching_up.iter().copied().collect();
        let share = (CATCH_UP_PER_BATCH / waiting.len()).max(1);
        let mut budget = CATCH_UP_PER_BATCH;
        self.catch_up_stalled = true;
        for conn in waiting {
            // A device whose outgoing queue has no room for its share waits for
            // the next batch, instead of being dropped as too slow.
            let room = self.conns.get(&conn).map_or(0, |c| c.out.queue.capacity());
            if room < share.min(OUT_ROOM_FOR_CATCH_UP) {
                continue;
            }
            self.catch_up_stalled = false;
            batch.senders.insert(conn);
            for _ in 0..share {
                if budget == 0 {
                    return Ok(());
                }
                let Some(c) = self.conns.get_mut(&conn) else {
                    break;
                };
                let Some(doc) = c.catch_up.pop_front() else {
                    break;
                };
                let session = c.session.clone();
                budget -= 1;
                if self.may_see(tx, &session, &doc)? {
                    self.start_sync(tx, batch, conn, &doc)?;
                } else {
                    batch.send(conn, Message::DocUnavailable { document_id: doc });
                }
            }
            if self.conns.get(&conn).is_none_or(|c| c.catch_up.is_empty()) {
                self.catching_up.remove(&conn);
            }
        }
        Ok(())
    }

    /// Whether the tenant may spend plugin time on this thread now.
    fn plugin_time_left(&mut self, tenant: &TenantId, now: std::time::Instant) -> bool {
        let budget = self
            .plugin_budget
            .entry(tenant.clone())
            .or_insert(PluginBudget {
                ms: PLUGIN_BURST_MS,
                at: now,
            });
        let refill = now.saturating_duration_since(budget.at).as_secs_f64() * PLUGIN_MS_PER_SEC;
        budget.ms = (budget.ms + refill).min(PLUGIN_BURST_MS);
        budget.at = now;
        budget.ms > 0.0
    }

    /// Charges plugin time to the tenant.
    fn spend_plugin_time(&mut self, tenant: &TenantId, spent: Duration) {
        if let Some(budget) = self.plugin_budget.get_mut(tenant) {
            budget.ms -= spent.as_secs_f64() * 1_000.0;
        }
    }

    /// Forgets a sync message that left changes queued: the document is reloaded
    /// from the store, and the device gets a fresh sync message with the reset
    /// flag, so an honest device (whose message only raced a lost commit) resends
    /// everything the server lacks, dependencies first, while a forged orphan has
    /// nothing to attach to. Not a `rejected`: that would make an honest device
    /// drop its outbox.
    /// Refuses a device's sync message: forgets what it changed (the document
    /// reloads from what is saved), starts the device's sync of the document over
    /// and tells it why.
    fn reject(&mut self, batch: &mut Batch, conn: ConnId, key: &DocKey, error: ErrorBody) {
        self.docs.remove(key);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.states.insert(key.1.clone(), sync::State::new());
        }
        batch.send(
            conn,
            Message::Rejected {
                document_id: key.1.clone(),
                error,
            },
        );
    }

    fn drop_queued(
        &mut self,
        tx: &mut WriteTx<'_>,
        batch: &mut Batch,
        conn: ConnId,
        key: &DocKey,
        session: &Session,
    ) -> Result<(), StoreError> {
        tracing::warn!(device = %session.device, doc = %key.1, "a sync message left changes waiting for missing dependencies; dropped it");
        // What the dropped changes waited for: asked for explicitly, so an honest
        // device sends it even if a bloom-filter false positive hid it before.
        let missing = self
            .docs
            .get_mut(key)
            .map(|c| c.stored.doc.automerge_mut().get_missing_deps(&[]))
            .unwrap_or_default();
        self.docs.remove(key);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.states.insert(key.1.clone(), sync::State::new());
            c.dirty.insert(key.1.clone());
        }
        if !self.load(tx, key)? {
            batch.send(
                conn,
                Message::DocUnavailable {
                    document_id: key.1.clone(),
                },
            );
            return Ok(());
        }
        let (Some(c), Some(cached)) = (self.conns.get_mut(&conn), self.docs.get_mut(key)) else {
            return Ok(());
        };
        let Some(state) = c.states.get_mut(&key.1) else {
            return Ok(());
        };
        if let Some(mut message) = cached
            .stored
            .doc
            .automerge_mut()
            .sync()
            .generate_sync_message(state)
        {
            message
                .flags
                .get_or_insert_with(sync::MessageFlags::new)
                .set(sync::MessageFlags::SYNC_RESET);
            message.need = missing;
            batch.send(
                conn,
                Message::Sync {
                    document_id: key.1.clone(),
                    data: message.encode(),
                },
            );
        }
        Ok(())
    }

    /// Sends every other online subscriber of the document what it lacks.
    fn fan_out(
        &mut self,
        tx: &mut WriteTx<'_>,
        batch: &mut Batch,
        key: &DocKey,
        except: Option<ConnId>,
    ) -> Result<(), StoreError> {
        let mut targets: Vec<(ConnId, Session)> = Vec::new();
        for device in tx.subscribers(&key.0, &key.1)? {
            for id in self.by_device.get(&device).into_iter().flatten() {
                if let Some(c) = self.conns.get(id)
                    && Some(*id) != except
                    && c.session.tenant == key.0
                {
                    targets.push((*id, c.session.clone()));
                }
            }
        }
        for (conn, session) in targets {
            // A subscription outlives the assignee restriction being turned on (or
            // the customer being given to someone else): visibility is checked on
            // every push, not only when subscribing.
            if !self.may_see(tx, &session, &key.1)? {
                continue;
            }
            self.ensure_state(tx, conn, &key.1)?;
            self.send_sync(batch, conn, key, false);
        }
        Ok(())
    }

    fn rpc(
        &mut self,
        tx: &mut WriteTx<'_>,
        batch: &mut Batch,
        conn: ConnId,
        call: RpcCall,
    ) -> Result<RpcResult, StoreError> {
        let Some(session) = self.conns.get(&conn).map(|c| c.session.clone()) else {
            return Ok(RpcResult::Done);
        };
        match call {
            RpcCall::RecallList => self.recalls(tx, &session),
            RpcCall::CustomerCreate { customer } => {
                if customer.tenant != session.tenant {
                    return Ok(RpcResult::Refused(Refusal::WrongTenant.body()));
                }
                let most = self.config.max_customers_per_tenant;
                if callsync_store::customer_count(&*tx, &session.tenant)? >= most {
                    return Ok(RpcResult::Refused(
                        Refusal::CustomerLimit { max: most }.body(),
                    ));
                }
                let now = clock::now();
                let mut doc =
                    match CustomerDoc::create(&customer, now, self.config.server_actor.clone()) {
                        Ok(doc) => doc,
                        Err(e) => {
                            return Ok(RpcResult::Refused(Refusal::Core(e).body()));
                        }
                    };
                match tx.insert(&mut doc) {
                    Ok(_) => {}
                    Err(StoreError::Sqlite(e)) => return Err(StoreError::Sqlite(e)),
                    Err(e) => return Ok(RpcResult::Refused(store_refusal(&e))),
                }
                tx.subscribe(&session.device, &session.tenant, &customer.id)?;
                self.start_sync(tx, batch, conn, &customer.id)?;
                Ok(RpcResult::Subscribed(vec![customer.id]))
            }
            RpcCall::CustomerList { after, limit } => {
                let restricted = session.role.is_limited_by_assignee_visibility()
                    && tx.assignee_visibility(&session.tenant)?;
                let owner = restricted.then_some(session.user.as_str());
                // An older client asks for everything at once: read one row past
                // what it may get, so a tenant with many customers costs a bounded
                // query, not all of them, before the refusal.
                let page = limit.map_or(MAX_UNPAGED_CUSTOMERS + 1, |l| {
                    l.clamp(1, wire::MAX_CUSTOMER_PAGE)
                });
                let rows = callsync_store::customers_page(
                    &*tx,
                    &session.tenant,
                    after.as_ref(),
                    owner,
                    page,
                )?;
                Ok(match limit {
                    Some(_) => customer_page(rows),
                    None => unpaged_customers(rows, MAX_UNPAGED_CUSTOMERS),
                })
            }
            RpcCall::Subscribe { documents } => {
                if documents.len() > wire::MAX_SUBSCRIBE {
                    return Ok(RpcResult::Refused(Refusal::TooManyDocuments.body()));
                }
                let mut subscribed = Vec::new();
                for doc in documents {
                    if self.may_see(tx, &session, &doc)? {
                        tx.subscribe(&session.device, &session.tenant, &doc)?;
                        self.start_sync(tx, batch, conn, &doc)?;
                        subscribed.push(doc);
                    } else {
                        batch.send(conn, Message::DocUnavailable { document_id: doc });
                    }
                }
                Ok(RpcResult::Subscribed(subscribed))
            }
            RpcCall::Devices => {
                let online: HashSet<&DeviceId> =
                    self.conns.values().map(|c| &c.session.device).collect();
                Ok(RpcResult::Devices(
                    tx.devices_of(&session.user)?
                        .into_iter()
                        .map(|d| DeviceSummary {
                            online: online.contains(&d.id),
                            id: d.id,
                            kind: d.kind,
                        })
                        .collect(),
                ))
            }
            account => Ok(RpcResult::Refused(
                Refusal::BadRequest {
                    detail: format!("{} is answered before the hub", account.method()),
                }
                .body(),
            )),
        }
    }

    /// Records `expired` on every call whose start limit has passed without a
    /// start the server knows of, and pushes it.
    fn expire_due(
        &mut self,
        tx: &mut WriteTx<'_>,
        batch: &mut Batch,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let cutoff = now.plus_millis(-self.config.start_limit_ms);
        self.expiry_blocked = false;
        for (tenant, customer, call) in tx.awaiting_start_before(cutoff)? {
            let key = (tenant, customer);
            if !self.load(tx, &key)? {
                self.expiry_blocked = true;
                continue;
            }
            let Some(cached) = self.docs.get_mut(&key) else {
                continue;
            };
            if cached.stored.doc.call(&call).map(|v| v.phase) != Some(Phase::AwaitingStart) {
                continue;
            }
            let event = CallEvent {
                id: match EventId::new(format!("expired-{call}")) {
                    Ok(id) => id,
                    Err(_) => continue,
                },
                call: call.clone(),
                stamp: Stamp {
                    at: now,
                    device: self.config.server_device.clone(),
                    device_kind: DeviceKind::Server,
                    user: self.config.server_user.clone(),
                },
                kind: EventKind::Expired,
            };
            let catalog = ResultCatalog::new(Vec::new());
            let ctx = RuleContext {
                // Expiry reads no result types.
                catalog: &catalog,
                start_limit_ms: self.config.start_limit_ms,
                other_open_calls: &[],
            };
            if let Err(e) = cached.stored.doc.record(event, &ctx) {
                tracing::warn!(call = %call, error = %e, "could not record expiry");
                self.docs.remove(&key);
                continue;
            }
            match tx.save(&mut cached.stored) {
                Ok(_) => {}
                Err(StoreError::Sqlite(e)) => return Err(StoreError::Sqlite(e)),
                Err(e) => {
                    tracing::warn!(call = %call, error = %e, "could not save expiry");
                    self.docs.remove(&key);
                    continue;
                }
            }
            tracing::info!(call = %call, "call expired: start limit passed");
            self.fan_out(tx, batch, &key, None)?;
        }
        Ok(())
    }

    fn save_conn_states(&mut self, tx: &mut WriteTx<'_>, conn: ConnId) -> Result<(), StoreError> {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        for doc in c.dirty.drain() {
            if let Some(state) = c.states.get(&doc) {
                tx.set_sync_state(
                    c.session.device.as_str(),
                    &c.session.tenant,
                    &doc,
                    &state.encode(),
                )?;
            }
        }
        Ok(())
    }

    fn save_sync_states(&mut self, tx: &mut WriteTx<'_>) -> Result<(), StoreError> {
        let conns: Vec<ConnId> = self.dirty_conns.drain().collect();
        for conn in conns {
            self.save_conn_states(tx, conn)?;
        }
        Ok(())
    }

    /// Hands the batch's messages to the connection writers (after the commit).
    fn flush(&mut self, batch: Batch) {
        let mut slow = Vec::new();
        for (conn, message) in batch.sends {
            let Some(c) = self.conns.get(&conn) else {
                continue;
            };
            let frame = match wire::encode_frame(&message) {
                Ok(frame) => frame,
                Err(e) => {
                    tracing::error!(error = %e, kind = message.kind(), "could not encode a message");
                    continue;
                }
            };
            if c.out
                .queue
                .try_send(Outgoing::Frame(Arc::new(frame)))
                .is_err()
            {
                slow.push(conn);
            }
        }
        for (conn, body) in batch.closes {
            if let Some(c) = self.conns.get(&conn) {
                c.out.close(body);
            }
        }
        for conn in slow {
            // A device that cannot keep up is dropped; it catches up on reconnect.
            // Its writer is stuck behind a full queue, so the connection is cut off
            // rather than sent a closing message it would never get to.
            if let Some(c) = self.remove_conn(conn) {
                tracing::warn!(device = %c.session.device, "dropping a connection that does not keep up");
                // A closing reason set earlier in this flush (a refusal) stands.
                c.out.cut_off.send_if_modified(|reason| {
                    let unset = reason.is_none();
                    if unset {
                        *reason = Some(Refusal::TooSlow.body());
                    }
                    unset
                });
            }
        }
    }
}

/// Splits a database error (the batch fails: returned as the outer error) from
/// any other (one document's or one tenant's problem: the inner error, answered
/// to the one device that asked).
fn contained<T>(result: Result<T, StoreError>) -> Result<Result<T, StoreError>, StoreError> {
    match result {
        Err(StoreError::Sqlite(e)) => Err(StoreError::Sqlite(e)),
        other => Ok(other),
    }
}

/// The refusal when a tenant's configuration cannot be read.
fn unreadable_config(e: &StoreError) -> ErrorBody {
    tracing::error!(error = %e, "the tenant configuration cannot be read");
    Refusal::ConfigUnreadable.body()
}

/// The answer to a device whose tenant has used up its plugin time: come back
/// later (a device reconnects with backoff and sends again).
fn busy() -> ErrorBody {
    Refusal::Busy.body()
}

/// A store refusal for the device.
fn store_refusal(e: &StoreError) -> ErrorBody {
    match e {
        StoreError::Core(core) => Refusal::Core(core.clone()),
        StoreError::DocumentTooLarge { limit } => Refusal::DocumentTooLarge { limit: *limit },
        StoreError::CustomerExists { customer } => Refusal::CustomerExists {
            customer: customer.to_string(),
        },
        StoreError::CallOnAnotherCustomer { call, .. } => Refusal::CallOnAnotherCustomer {
            call: call.to_string(),
        },
        other => {
            tracing::warn!(error = %other, "a store refusal");
            Refusal::StoreRefused
        }
    }
    .body()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize) -> Vec<callsync_store::CustomerRow> {
        (0..n)
            .map(|i| callsync_store::CustomerRow {
                id: CustomerId::new(format!("cus-{i}")).unwrap(),
                company: "A社".to_owned(),
                contact: "山田".to_owned(),
                owner: "rep@acme.example".to_owned(),
                status: "new".to_owned(),
            })
            .collect()
    }

    fn refused_code(result: &RpcResult) -> Option<&str> {
        match result {
            RpcResult::Refused(body) => Some(body.code.as_str()),
            _ => None,
        }
    }

    #[test]
    fn an_unpaged_customer_list_answers_up_to_its_cap_and_refuses_past_it() {
        match unpaged_customers(rows(3), 3) {
            RpcResult::Customers(listed) => assert_eq!(listed.len(), 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            refused_code(&unpaged_customers(rows(4), 3)),
            Some("reply-too-large")
        );
    }

    #[test]
    fn an_unpaged_customer_list_past_one_frame_is_refused() {
        let mut big = rows(2);
        big[0].company = "株".repeat(wire::MAX_FRAME_BYTES / 3 + 1);
        assert_eq!(
            refused_code(&unpaged_customers(big, MAX_UNPAGED_CUSTOMERS)),
            Some("reply-too-large")
        );
    }
}
