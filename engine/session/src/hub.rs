//! The hub session: one tenant's server side of the sync protocol, sans-IO.
//!
//! Owns: the tenant's documents in memory (an LRU cache over storage), every open
//! connection's per-document Automerge sync state, admission of incoming changes
//! (with actor binding and the re-check of every result decision through
//! [`ResultRules`]), save and fan-out to subscribed devices that are online,
//! subscriptions, the catch-up of a joining device (a slice per batch, paced by
//! the room in its outgoing queue), the start-limit expiry as a wake-up, presence,
//! ending a member's sessions, and the tenant's configuration document.
//! Does not own: sockets, the clock, the database or threads. Its driver
//! (`callsync-server`'s hub thread today) does those.
//!
//! # Call order
//!
//! The hub works in batches. For each batch the driver:
//!
//! 1. opens a write transaction, as a [`HubStore`] (one that begins when it
//!    first writes suits: reads and Automerge's work then hold no lock), and a
//!    [`Batch::with_room`] saying how much each connection's outgoing queue can
//!    still take, in frames and bytes (the hub generates a sync only into room;
//!    one that cannot go waits and is generated later, once);
//! 2. calls [`HubSession::handle`] for each input, in arrival order, with the
//!    time it reads once for the batch;
//! 3. calls [`HubSession::finish`] once (waiting syncs that now fit, catch-up
//!    slices, due expiries, sync states saved);
//! 4. commits the transaction, then hands the batch to
//!    [`HubSession::committed`] and sends what it returns, in order. If any step
//!    failed (a [`StorageError`] from 2 or 3, or the commit), it hands the batch
//!    to [`HubSession::abandoned`] instead and closes the connections it names.
//!
//! The durability rule follows: no message reflecting a change leaves before the
//! transaction holding that change is committed, so a device never hears of a
//! change (its own included) that a crash could take back.
//!
//! [`HubSession::next_wake`] is a pure getter: when the driver should run a batch
//! with no input (catch-up to continue, an expiry due), or `None` to wait for
//! input only.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use automerge::ActorId;
use automerge::sync::{self, SyncDoc};
use callsync_core::admission::{Directory, Sender, admit};
use callsync_core::screen::{ScreenLimits, screen_message};
use callsync_core::tenant_config::{PreparedInstall, TenantConfigDoc};
use callsync_core::wire::{
    self, Cursor, CustomerSummary, DeviceSummary, ErrorBody, Message, Refusal, RpcCall, RpcResult,
};
use callsync_core::{
    CallEvent, CustomerDoc, CustomerId, DeviceId, DeviceKind, EventId, EventKind, Phase,
    ResultCatalog, Role, RuleContext, Stamp, TenantId, Timestamp, UserId,
};

use crate::rules::ResultRules;
use crate::storage::{HubStore, LoadedDoc, StorageError};
use crate::{Authenticated, ConnId};

mod cache;
mod config;
mod recordings;

use cache::DocCache;

pub use config::install_needs_admin;
pub use recordings::{RecordingAsk, RecordingVerdict, UPLOAD_STATUS_GAP_MS};

/// Fixed settings of a hub.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// How long a phone has to press *Start call*.
    pub start_limit_ms: i64,
    /// Most customers the tenant may hold.
    pub max_customers: u64,
    /// Documents kept in memory.
    pub cache_docs: usize,
    /// The server's device id (stamps of expiries, `peer`'s sender).
    pub server_device: DeviceId,
    /// The user the server writes as.
    pub server_user: UserId,
    /// The server's Automerge actor.
    pub server_actor: ActorId,
    /// The store's epoch: a cursor from another epoch is ignored.
    pub epoch: String,
}

/// What the hub is told.
#[derive(Debug)]
pub enum HubInput {
    /// A connection was authenticated (the driver routes it to its tenant's hub).
    Open {
        /// The connection.
        conn: ConnId,
        /// Who it is.
        member: Authenticated,
        /// Where the device's catch-up stands, if it has synced before.
        cursor: Option<Cursor>,
    },
    /// A message for the hub arrived on an open connection.
    Received {
        /// The connection.
        conn: ConnId,
        /// The message.
        message: Message,
    },
    /// The connection is gone.
    Closed {
        /// The connection.
        conn: ConnId,
    },
    /// A member's sessions were ended (contract revoked, password reset): their
    /// connections close now, with this reason.
    EndSessions {
        /// The member.
        user: UserId,
        /// What they are told.
        reason: ErrorBody,
    },
    /// A document was changed in storage by someone other than this hub (the
    /// server's own write elsewhere; another node in the scale-out): the cached
    /// copy is dropped and subscribers are sent what they lack.
    Changed {
        /// The customer.
        customer: CustomerId,
    },
    /// A plugin install that passed every check (off the hub: compiling takes
    /// tens of milliseconds): publish it and answer `rpc` `id`.
    Publish {
        /// The connection that asked.
        conn: ConnId,
        /// The request's id.
        id: u64,
        /// The checked install.
        prepared: Box<PreparedInstall>,
    },
    /// A question about a call's recording, from a stream of connection
    /// `conn` (its member is the connection's): answered in
    /// [`Released::recordings`] under `ticket`.
    Recording {
        /// The connection whose stream asks.
        conn: ConnId,
        /// The driver's number for the answer.
        ticket: u64,
        /// What is asked.
        ask: RecordingAsk,
    },
}

/// How much more a connection's outgoing queue can take, as its driver sees it
/// when asked (frames, and bytes of encoded frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// Frames.
    pub frames: usize,
    /// Bytes.
    pub bytes: usize,
}

impl Room {
    /// No limit (a simulation, a bench).
    pub const UNLIMITED: Room = Room {
        frames: usize::MAX,
        bytes: usize::MAX,
    };
    /// No room at all (a connection the driver does not know).
    pub const NONE: Room = Room {
        frames: 0,
        bytes: 0,
    };
}

fn unlimited(_: ConnId) -> Room {
    Room::UNLIMITED
}

/// The effects of a batch, held until the driver knows whether it committed,
/// and the room each connection's queue had for them.
pub struct Batch<'r> {
    sends: Vec<(ConnId, Message)>,
    closes: Vec<(ConnId, ErrorBody)>,
    /// Connections that sent something this batch (told if it fails).
    senders: HashSet<ConnId>,
    /// Syncs the server started on its own per connection (catch-up, fan-out).
    unsolicited: HashMap<ConnId, u64>,
    /// What this batch has queued per connection so far.
    spent: HashMap<ConnId, Room>,
    /// A plugin install changed the tenant's configuration.
    config_changed: bool,
    /// Answers about recordings, by ticket.
    recordings: Vec<(u64, Result<RecordingVerdict, ErrorBody>)>,
    /// The room in each connection's queue, as the driver reports it.
    room: &'r dyn Fn(ConnId) -> Room,
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("sends", &self.sends.len())
            .field("closes", &self.closes)
            .finish_non_exhaustive()
    }
}

impl Default for Batch<'static> {
    /// A batch whose connections have unlimited room.
    fn default() -> Self {
        Self::with_room(&unlimited)
    }
}

impl<'r> Batch<'r> {
    /// A batch for connections whose queues have the room `room` reports.
    pub fn with_room(room: &'r dyn Fn(ConnId) -> Room) -> Self {
        Self {
            sends: Vec::new(),
            closes: Vec::new(),
            senders: HashSet::new(),
            unsolicited: HashMap::new(),
            spent: HashMap::new(),
            config_changed: false,
            recordings: Vec::new(),
            room,
        }
    }

    fn send(&mut self, conn: ConnId, message: Message) {
        let spent = self.spent.entry(conn).or_insert(Room::NONE);
        spent.frames += 1;
        spent.bytes += wire::encoded_len(&message);
        self.sends.push((conn, message));
    }

    /// Whether `conn`'s queue can still take a frame of `bytes`, after what this
    /// batch has queued for it.
    fn has_room_for(&self, conn: ConnId, bytes: usize) -> bool {
        let room = (self.room)(conn);
        let spent = self.spent.get(&conn).copied().unwrap_or(Room::NONE);
        room.frames.saturating_sub(spent.frames) >= 1
            && room.bytes.saturating_sub(spent.bytes) >= bytes
    }

    fn close(&mut self, conn: ConnId, reason: ErrorBody) {
        self.closes.push((conn, reason));
    }

    /// Whether the batch has nothing to send.
    pub fn is_empty(&self) -> bool {
        self.sends.is_empty() && self.closes.is_empty()
    }
}

/// What a committed batch sends: the messages in order, then the connections to
/// close after what is queued for them.
#[derive(Debug, Default)]
pub struct Released {
    /// Messages, per connection, in order.
    pub sends: Vec<(ConnId, Message)>,
    /// Connections to close, with the reason they are sent.
    pub closes: Vec<(ConnId, ErrorBody)>,
    /// How many document syncs the server started on its own, per connection (a
    /// joining device's catch-up, pushes of others' changes): the device's answers
    /// to them are owed, not counted against its message rate (see
    /// [`crate::connection::ServerConnection::server_started`]).
    pub unsolicited: Vec<(ConnId, u64)>,
    /// The tenant's configuration changed (a plugin was installed): copies kept
    /// elsewhere (the server's for browsers' decisions) are stale.
    pub config_changed: bool,
    /// Answers about recordings, by the ticket they were asked under.
    pub recordings: Vec<(u64, Result<RecordingVerdict, ErrorBody>)>,
}

/// Largest uncompressed size (all its changes' bytes) a device's changes may take
/// a customer document to: half a frame, so any sync of it, whole or in changes,
/// fits one message, and a cached document stays small. A 1,000-call customer is
/// about 1 MB uncompressed.
pub const MAX_DOCUMENT_BYTES: u64 = (wire::MAX_FRAME_BYTES / 2) as u64;

/// The largest sync message of a customer document the hub decodes: the most
/// changes an admissible message can carry (the document's cap) with its summary.
pub const MAX_SYNC_MESSAGE_BYTES: usize = MAX_DOCUMENT_BYTES as usize + (1 << 20);

/// Most customers an unpaged `customer-list` (an older client's) answers.
pub const MAX_UNPAGED_CUSTOMERS: u32 = 10_000;

/// Documents a batch starts syncing for joining devices, over all of them.
pub const CATCH_UP_PER_BATCH: usize = 256;
/// Free room a joining device's outgoing queue needs for its next catch-up slice.
pub const OUT_ROOM_FOR_CATCH_UP: usize = 64;
/// Bytes a connection's queue must have free before the hub generates a sync
/// message of a customer document for it: the largest one can be (the whole
/// document, at most [`MAX_DOCUMENT_BYTES`] of changes, with its summary and
/// framing). A sync that cannot go yet waits, once per document however often
/// it was asked for, and is generated when the device has read enough: so what
/// the hub queues for a device that does not read stays under the driver's
/// per-connection limit, and costs no work.
pub const SYNC_ROOM_BYTES: usize = MAX_DOCUMENT_BYTES as usize + (256 << 10);
/// Full re-sends (a sync message asking for everything: no heads, or the reset
/// flag) the hub answers per device and document in a burst …
pub const FULL_RESENDS_BURST: f64 = 2.0;
/// … and then one per this many milliseconds. An honest device asks for a
/// document in full once when it lacks it (twice when its request races the
/// server's catch-up); past the allowance the answer waits rather than being
/// generated again for every tiny message.
pub const FULL_RESEND_EVERY_MS: i64 = 15_000;
/// How soon the hub looks again at syncs waiting for room in a queue.
const PENDING_RETRY_MS: i64 = 25;
/// How soon to try again when every joining device's queue was full.
const CATCH_UP_RETRY_MS: i64 = 10;
/// How soon to retry an expiry that found its document unreadable.
const BLOCKED_EXPIRY_RETRY_MS: i64 = 1_000;

/// Whether an answer encodes into one frame.
fn fits_one_frame(result: &RpcResult) -> bool {
    wire::encode_frame(&Message::Reply {
        id: 0,
        result: result.clone(),
    })
    .is_ok()
}

/// The answer to an unpaged `customer-list` given up to `max + 1` rows: all of
/// them, or `reply-too-large` past `max` rows or one frame.
pub fn unpaged_customers(rows: Vec<CustomerSummary>, max: u32) -> RpcResult {
    let too_many = rows.len() > max as usize;
    let result = RpcResult::Customers(rows);
    if too_many || !fits_one_frame(&result) {
        return RpcResult::Refused(Refusal::ReplyTooLarge { max }.body());
    }
    result
}

/// What the hub syncs with a device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum SyncTarget {
    /// The tenant's configuration document.
    Config,
    /// A customer document.
    Customer(CustomerId),
}

/// A sync message owed to a device, waiting for room or for its allowance.
#[derive(Debug, Clone, Copy, Default)]
struct PendingSync {
    /// Start over if the state thinks the device is up to date.
    must: bool,
    /// The server started it (its answers are owed, not rate-counted).
    unsolicited: bool,
}

/// A device's allowance of full re-sends of one document.
#[derive(Debug, Clone, Copy)]
struct Allowance {
    tokens: f64,
    at: Timestamp,
}

impl Allowance {
    fn full(now: Timestamp) -> Self {
        Self {
            tokens: FULL_RESENDS_BURST,
            at: now,
        }
    }

    fn refill(&mut self, now: Timestamp) {
        let elapsed = (now.as_millis() - self.at.as_millis()).max(0) as f64;
        self.tokens = (self.tokens + elapsed / FULL_RESEND_EVERY_MS as f64).min(FULL_RESENDS_BURST);
        self.at = self.at.max(now);
    }

    /// Takes one re-send if there is one; else when the next one comes.
    fn take(&mut self, now: Timestamp) -> Result<(), Timestamp> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - self.tokens) * FULL_RESEND_EVERY_MS as f64).ceil() as i64;
            Err(now.plus_millis(wait.max(1)))
        }
    }
}

/// Whether a sync message asks the hub for everything it has: no heads (the
/// device lost or never had the document) or the reset flag. Automerge then
/// forgets what it sent and regenerates the whole change set.
fn asks_for_everything(message: &sync::Message) -> bool {
    message.heads.is_empty()
        || message
            .flags
            .is_some_and(|flags| flags.contains(sync::MessageFlags::SYNC_RESET))
}

struct Conn {
    member: Authenticated,
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
    /// Syncs owed to the device that wait for room in its queue or for its
    /// allowance of full re-sends (see [`SYNC_ROOM_BYTES`]).
    pending: BTreeMap<SyncTarget, PendingSync>,
    /// Targets the device asked for in full since the hub last answered them.
    resets: HashSet<SyncTarget>,
}

/// One tenant's hub. `D` is the storage's loaded document.
pub struct HubSession<D> {
    tenant: TenantId,
    settings: HubSettings,
    rules: Arc<dyn ResultRules>,
    /// The time of the batch being handled.
    now: Timestamp,
    docs: DocCache<D>,
    /// The configuration document, loaded when first needed.
    config_doc: Option<TenantConfigDoc>,
    /// The result types for admission (see `config::catalog`).
    catalog: Option<Arc<ResultCatalog>>,
    conns: HashMap<ConnId, Conn>,
    /// Connections with sync states changed since the last batch.
    dirty_conns: HashSet<ConnId>,
    /// The open connections of each device (fan-out looks devices up here rather
    /// than scanning every connection).
    by_device: HashMap<DeviceId, Vec<ConnId>>,
    /// Connections with documents left to catch up on.
    catching_up: BTreeSet<ConnId>,
    /// Documents whose stored bytes did not load (logged once; not tried again
    /// while this session lives, so a broken document costs nothing per batch).
    unreadable: HashSet<CustomerId>,
    /// An expiry pass skipped an unreadable document that is due.
    expiry_blocked: bool,
    /// The last catch-up pass found no joining device with room to send to.
    catch_up_stalled: bool,
    /// When the oldest call awaiting *Start call* expires, as of the last batch.
    next_expiry: Option<Timestamp>,
    /// Connections with syncs waiting (see `Conn::pending`).
    pending_conns: BTreeSet<ConnId>,
    /// When the hub should look at waiting syncs again, as of the last batch.
    pending_wake: Option<Timestamp>,
    /// Each device's allowance of full re-sends per document (only while in use:
    /// allowances that have refilled are dropped).
    resends: HashMap<(DeviceId, SyncTarget), Allowance>,
    /// What each connected phone said last of the recordings it holds.
    phone_uploads: HashMap<DeviceId, recordings::PhoneUploads>,
}

/// Admission's questions, answered by storage (a failed read answers no).
struct StoreDirectory<'a, S>(std::cell::RefCell<&'a mut S>);

impl<S: HubStore> Directory for StoreDirectory<'_, S> {
    fn actor_is_bound_to(&self, actor: &ActorId, device: &DeviceId) -> bool {
        matches!(
            self.0.borrow_mut().actor_is_bound_to(actor, device),
            Ok(true)
        )
    }

    fn is_phone_of(&self, device: &DeviceId, user: &UserId) -> bool {
        matches!(self.0.borrow_mut().is_phone_of(device, user), Ok(true))
    }
}

impl<D: LoadedDoc> HubSession<D> {
    /// A hub for `tenant`, with nothing loaded and nobody connected.
    pub fn new(tenant: TenantId, settings: HubSettings, rules: Arc<dyn ResultRules>) -> Self {
        let docs = DocCache::new(settings.cache_docs);
        Self {
            tenant,
            settings,
            rules,
            now: Timestamp::from_millis(0),
            docs,
            config_doc: None,
            catalog: None,
            conns: HashMap::new(),
            dirty_conns: HashSet::new(),
            by_device: HashMap::new(),
            catching_up: BTreeSet::new(),
            unreadable: HashSet::new(),
            expiry_blocked: false,
            catch_up_stalled: false,
            next_expiry: None,
            pending_conns: BTreeSet::new(),
            pending_wake: None,
            resends: HashMap::new(),
            phone_uploads: HashMap::new(),
        }
    }

    /// The tenant this hub serves.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// How many connections are open.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// When the driver should run a batch with no input, or `None` to wait for
    /// input only. A pure getter.
    pub fn next_wake(&self) -> Option<Timestamp> {
        if !self.catching_up.is_empty() {
            // Continue at once, or shortly if every joining device's queue is full.
            return Some(if self.catch_up_stalled {
                self.now.plus_millis(CATCH_UP_RETRY_MS)
            } else {
                self.now
            });
        }
        let later = [
            self.expiry_blocked
                .then(|| self.now.plus_millis(BLOCKED_EXPIRY_RETRY_MS)),
            self.next_expiry,
            self.pending_wake,
        ];
        later.into_iter().flatten().min()
    }

    /// Handles one input of the batch (call order: see the module).
    pub fn handle<S: HubStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        store: &mut S,
        input: HubInput,
        batch: &mut Batch<'_>,
    ) -> Result<(), StorageError> {
        self.now = now;
        match input {
            HubInput::Open {
                conn,
                member,
                cursor,
            } => {
                // If the batch fails, the new connection is told so and reconnects
                // rather than waiting for a `peer` that never comes.
                batch.senders.insert(conn);
                if member.tenant != self.tenant {
                    batch.close(conn, Refusal::WrongTenant.body());
                    return Ok(());
                }
                self.open(now, store, batch, conn, member, cursor)
            }
            HubInput::Received { conn, message } => {
                if !self.conns.contains_key(&conn) {
                    return Ok(());
                }
                batch.senders.insert(conn);
                match message {
                    Message::Sync { document_id, data }
                    | Message::Request { document_id, data } => {
                        self.sync(store, batch, conn, document_id, &data)
                    }
                    Message::ConfigSync { data } => self.config_sync(store, batch, conn, &data),
                    Message::Rpc { id, call } => {
                        let result = self.rpc(store, batch, conn, call)?;
                        batch.send(conn, Message::Reply { id, result });
                        Ok(())
                    }
                    other => {
                        batch.close(
                            conn,
                            Refusal::UnexpectedMessage {
                                kind: other.kind().to_owned(),
                            }
                            .body(),
                        );
                        Ok(())
                    }
                }
            }
            HubInput::Closed { conn } => {
                self.save_conn_states(store, conn)?;
                if let Some(c) = self.remove_conn(conn) {
                    let still_online = self.by_device.contains_key(&c.member.device);
                    if !still_online {
                        self.presence(batch, &c.member, false);
                        self.phone_went_away(batch, &c.member.device);
                    }
                }
                Ok(())
            }
            HubInput::EndSessions { user, reason } => {
                for (id, c) in &self.conns {
                    if c.member.user == user {
                        batch.close(*id, reason.clone());
                    }
                }
                Ok(())
            }
            HubInput::Changed { customer } => {
                self.docs.remove(&customer);
                self.unreadable.remove(&customer);
                if self.load(store, &customer)? {
                    self.fan_out(store, batch, &customer, None)?;
                }
                Ok(())
            }
            HubInput::Publish { conn, id, prepared } => {
                if self.conns.contains_key(&conn) {
                    batch.senders.insert(conn);
                    let result = self.publish_plugin(store, batch, conn, &prepared)?;
                    batch.send(conn, Message::Reply { id, result });
                }
                Ok(())
            }
            HubInput::Recording { conn, ticket, ask } => {
                self.recording(store, batch, conn, ticket, ask)
            }
        }
    }

    /// Ends the batch's work: the next catch-up slice (to connections with at least
    /// the room `room` reports in their outgoing queue), due expiries, and the
    /// sync states the batch changed (call order: see the module).
    pub fn finish<S: HubStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        store: &mut S,
        batch: &mut Batch<'_>,
    ) -> Result<(), StorageError> {
        self.now = now;
        self.send_pending(store, batch)?;
        self.advance_catch_up(store, batch)?;
        self.expire_due(store, batch)?;
        self.save_sync_states(store)?;
        self.next_expiry = store
            .oldest_awaiting_start(&self.tenant)?
            .map(|at| at.plus_millis(self.settings.start_limit_ms));
        Ok(())
    }

    /// The batch committed: what to send, in order.
    pub fn committed(&mut self, batch: Batch<'_>) -> Released {
        let mut unsolicited: Vec<(ConnId, u64)> = batch.unsolicited.into_iter().collect();
        unsolicited.sort_unstable();
        Released {
            sends: batch.sends,
            closes: batch.closes,
            unsolicited,
            config_changed: batch.config_changed,
            recordings: batch.recordings,
        }
    }

    /// The batch failed (a storage failure, or the commit): nothing of it was
    /// acknowledged. Everything in memory that may reflect it is forgotten, and the
    /// connections that sent something are dropped (returned with the reason to
    /// close them with) to sync again from what storage holds.
    pub fn abandoned(&mut self, batch: Batch<'_>) -> Vec<(ConnId, ErrorBody)> {
        self.docs.clear();
        self.config_doc = None;
        self.catalog = None;
        let body = Refusal::SaveFailed.body();
        let mut closes = Vec::new();
        for conn in batch.senders {
            if let Some(c) = self.remove_conn(conn) {
                if !self.by_device.contains_key(&c.member.device) {
                    // Nobody can be told here (the batch is gone); devices
                    // that join later are not told a status that went with it.
                    self.phone_uploads.remove(&c.member.device);
                }
                closes.push((conn, body.clone()));
            }
        }
        closes
    }

    fn remove_conn(&mut self, conn: ConnId) -> Option<Conn> {
        let c = self.conns.remove(&conn)?;
        self.catching_up.remove(&conn);
        self.pending_conns.remove(&conn);
        self.dirty_conns.remove(&conn);
        if let Some(list) = self.by_device.get_mut(&c.member.device) {
            list.retain(|id| *id != conn);
            if list.is_empty() {
                self.by_device.remove(&c.member.device);
            }
        }
        Some(c)
    }

    #[allow(clippy::too_many_arguments)]
    fn open<S: HubStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        store: &mut S,
        batch: &mut Batch<'_>,
        conn: ConnId,
        member: Authenticated,
        cursor: Option<Cursor>,
    ) -> Result<(), StorageError> {
        let since = cursor
            .filter(|c| c.epoch == self.settings.epoch)
            .map(|c| c.seq);
        let changed = store.changed_for(&member.device, &member.tenant, since)?;
        let target = Cursor {
            epoch: self.settings.epoch.clone(),
            seq: store.last_change_seq()?,
        };
        let was_online = self.by_device.contains_key(&member.device);
        // Tell the newcomer which of the user's other devices are online.
        let mut others: Vec<(DeviceId, DeviceKind)> = self
            .conns
            .values()
            .filter(|c| c.member.user == member.user && c.member.device != member.device)
            .map(|c| (c.member.device.clone(), c.member.kind))
            .collect();
        others.sort();
        others.dedup();
        self.by_device
            .entry(member.device.clone())
            .or_default()
            .push(conn);
        self.conns.insert(
            conn,
            Conn {
                member: member.clone(),
                states: HashMap::new(),
                dirty: HashSet::new(),
                config_state: sync::State::new(),
                catch_up: VecDeque::new(),
                pending: BTreeMap::new(),
                resets: HashSet::new(),
            },
        );
        let config_heads = contained(self.config_heads(store))?.unwrap_or_else(|e| {
            tracing::error!(tenant = %self.tenant, error = %e, "the tenant configuration cannot be read");
            Vec::new()
        });
        batch.send(
            conn,
            Message::Peer {
                sender_id: self.settings.server_device.to_string(),
                selected_protocol_version: wire::PROTOCOL_VERSION.to_owned(),
                tenant: member.tenant.clone(),
                user: member.user.clone(),
                role: member.role,
                cursor: target,
                changed: changed.clone(),
                config_heads,
                server_time: Some(now),
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
            self.presence(batch, &member, true);
        }
        self.uploads_for_joined(batch, conn, &member.user);
        tracing::info!(device = %member.device, user = %member.user, "device joined");
        Ok(())
    }

    /// The connections of `user`'s devices other than `device`, in order.
    fn other_devices_of(&self, user: &UserId, device: &DeviceId) -> Vec<ConnId> {
        let mut targets: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| &c.member.user == user && &c.member.device != device)
            .map(|(id, _)| *id)
            .collect();
        targets.sort_unstable();
        targets
    }

    /// Tells the user's other connections that `member`'s device came or went.
    fn presence(&mut self, batch: &mut Batch<'_>, member: &Authenticated, online: bool) {
        for conn in self.other_devices_of(&member.user, &member.device) {
            batch.send(
                conn,
                Message::Presence {
                    device: member.device.clone(),
                    kind: member.kind,
                    online,
                },
            );
        }
    }

    /// Whether the member may see the document (it exists in the tenant, and the
    /// assignee restriction, where on, allows it).
    fn may_see<S: HubStore<Doc = D>>(
        &self,
        store: &mut S,
        member: &Authenticated,
        doc: &CustomerId,
    ) -> Result<bool, StorageError> {
        let Some(owner) = store.owner_of(&self.tenant, doc)? else {
            return Ok(false);
        };
        if member.role.is_limited_by_assignee_visibility()
            && store.assignee_visibility(&self.tenant)?
        {
            return Ok(owner == member.user.as_str());
        }
        Ok(true)
    }

    /// Brings a document into the cache. `Ok(false)` when it cannot be read (it is
    /// gone, or its stored bytes no longer load): that is this document's problem
    /// alone, logged and answered per message, never a failed batch for everyone.
    fn load<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        doc: &CustomerId,
    ) -> Result<bool, StorageError> {
        if self.docs.touch(doc) {
            return Ok(true);
        }
        if self.unreadable.contains(doc) {
            return Ok(false);
        }
        let stored = match store.load(&self.tenant, doc, self.settings.server_actor.clone()) {
            Ok(stored) => stored,
            Err(StorageError::UnknownCustomer) => return Ok(false),
            Err(e) if e.is_failure() => return Err(e),
            Err(e) => {
                tracing::error!(tenant = %self.tenant, doc = %doc, error = %e, "a stored document cannot be read; skipping it from now on");
                self.unreadable.insert(doc.clone());
                return Ok(false);
            }
        };
        self.docs.insert(doc.clone(), stored);
        Ok(true)
    }

    /// Makes sure the connection has a sync state for the document, from memory
    /// or as saved for its device.
    fn ensure_state<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        conn: ConnId,
        doc: &CustomerId,
    ) -> Result<(), StorageError> {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        if !c.states.contains_key(doc) {
            let saved = store.sync_state(&c.member.device, &self.tenant, doc)?;
            let mut state = saved
                .and_then(|bytes| sync::State::decode(&bytes).ok())
                .unwrap_or_default();
            callsync_core::catchup::resume(&mut state);
            c.states.insert(doc.clone(), state);
        }
        Ok(())
    }

    /// Sends the connection the hub's next sync message for `target`, if there is
    /// anything to say: now, if its queue has room for the largest message the
    /// target can make and, when the device asked for everything, its allowance
    /// of full re-sends is not spent; else later (see [`Self::send_pending`]),
    /// once however often it is asked for meanwhile.
    fn send_sync(
        &mut self,
        batch: &mut Batch<'_>,
        conn: ConnId,
        target: &SyncTarget,
        mut owed: PendingSync,
    ) {
        let now = self.now;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if let Some(waiting) = c.pending.remove(target) {
            owed.must |= waiting.must;
            owed.unsolicited |= waiting.unsolicited;
        }
        let room = match target {
            SyncTarget::Config => config::CONFIG_SYNC_ROOM_BYTES,
            SyncTarget::Customer(_) => SYNC_ROOM_BYTES,
        };
        let mut ready = batch.has_room_for(conn, room);
        if ready && c.resets.contains(target) {
            let allowance = self
                .resends
                .entry((c.member.device.clone(), target.clone()))
                .or_insert_with(|| Allowance::full(now));
            match allowance.take(now) {
                Ok(()) => {
                    c.resets.remove(target);
                }
                Err(next) => {
                    ready = false;
                    self.pending_wake = Some(self.pending_wake.map_or(next, |at| at.min(next)));
                }
            }
        }
        if !ready {
            c.pending.insert(target.clone(), owed);
            self.pending_conns.insert(conn);
            return;
        }
        let message = match target {
            SyncTarget::Customer(doc) => {
                let (Some(cached), Some(state)) = (self.docs.get_mut(doc), c.states.get_mut(doc))
                else {
                    return;
                };
                let stored = cached.doc_mut();
                let mut message = stored.generate_sync_message(state);
                if message.is_none() && owed.must {
                    // The state believes the device is up to date; start over so the
                    // device hears our heads and can finish catching up.
                    *state = sync::State::new();
                    message = stored.generate_sync_message(state);
                }
                if message.is_some() {
                    c.dirty.insert(doc.clone());
                    self.dirty_conns.insert(conn);
                }
                message.map(|m| Message::Sync {
                    document_id: doc.clone(),
                    data: m.encode(),
                })
            }
            SyncTarget::Config => {
                let Some(doc) = self.config_doc.as_mut() else {
                    return;
                };
                doc.automerge_mut()
                    .sync()
                    .generate_sync_message(&mut c.config_state)
                    .map(|m| Message::ConfigSync { data: m.encode() })
            }
        };
        if let Some(message) = message {
            if owed.unsolicited {
                *batch.unsolicited.entry(conn).or_default() += 1;
            }
            batch.send(conn, message);
        }
    }

    /// Sends the waiting syncs that can go now (call order: first in `finish`, so
    /// answers owed go before a catch-up's next slice), and notes when to look
    /// again at those that cannot.
    fn send_pending<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        batch: &mut Batch<'_>,
    ) -> Result<(), StorageError> {
        self.pending_wake = None;
        let conns: Vec<ConnId> = self.pending_conns.iter().copied().collect();
        for conn in conns {
            let waiting: Vec<(SyncTarget, PendingSync)> = self
                .conns
                .get(&conn)
                .map(|c| c.pending.iter().map(|(t, p)| (t.clone(), *p)).collect())
                .unwrap_or_default();
            for (target, _) in waiting {
                match &target {
                    SyncTarget::Customer(doc) => {
                        if !self.load(store, doc)? {
                            if let Some(c) = self.conns.get_mut(&conn) {
                                c.pending.remove(&target);
                            }
                            batch.send(
                                conn,
                                Message::DocUnavailable {
                                    document_id: doc.clone(),
                                },
                            );
                            continue;
                        }
                        self.ensure_state(store, conn, doc)?;
                    }
                    SyncTarget::Config => {
                        if contained(self.config(store).map(|_| ()))?.is_err() {
                            continue;
                        }
                    }
                }
                // Taken out and put back by `send_sync` if it still cannot go.
                let owed = self
                    .conns
                    .get_mut(&conn)
                    .and_then(|c| c.pending.remove(&target))
                    .unwrap_or_default();
                self.send_sync(batch, conn, &target, owed);
            }
            if self.conns.get(&conn).is_none_or(|c| c.pending.is_empty()) {
                self.pending_conns.remove(&conn);
            }
        }
        if !self.pending_conns.is_empty() {
            // Some wait for room (the device is reading slowly): look again soon.
            // Those waiting for an allowance set `pending_wake` to its time.
            let soon = self.now.plus_millis(PENDING_RETRY_MS);
            let waits_for_room = self.pending_conns.iter().any(|conn| {
                self.conns
                    .get(conn)
                    .is_some_and(|c| c.pending.keys().any(|target| !c.resets.contains(target)))
            });
            if waits_for_room {
                self.pending_wake = Some(self.pending_wake.map_or(soon, |at| at.min(soon)));
            }
        }
        // Allowances that have refilled are forgotten, so the map holds only
        // devices asking for full re-sends now.
        if self.resends.len() > 1_024 {
            let now = self.now;
            self.resends.retain(|_, a| {
                a.refill(now);
                a.tokens < FULL_RESENDS_BURST
            });
        }
        Ok(())
    }

    /// Starts syncing a document with a device (`unsolicited`: the server
    /// started it on its own, a catch-up).
    fn start_sync<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        batch: &mut Batch<'_>,
        conn: ConnId,
        doc: &CustomerId,
        unsolicited: bool,
    ) -> Result<(), StorageError> {
        if !self.load(store, doc)? {
            batch.send(
                conn,
                Message::DocUnavailable {
                    document_id: doc.clone(),
                },
            );
            return Ok(());
        }
        self.ensure_state(store, conn, doc)?;
        self.send_sync(
            batch,
            conn,
            &SyncTarget::Customer(doc.clone()),
            PendingSync {
                must: true,
                unsolicited,
            },
        );
        Ok(())
    }

    fn sync<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        batch: &mut Batch<'_>,
        conn: ConnId,
        doc: CustomerId,
        data: &[u8],
    ) -> Result<(), StorageError> {
        let Some(member) = self.conns.get(&conn).map(|c| c.member.clone()) else {
            return Ok(());
        };
        if !self.may_see(store, &member, &doc)? {
            batch.send(conn, Message::DocUnavailable { document_id: doc });
            return Ok(());
        }
        // Screened before decoding: nothing larger than MAX_SYNC_MESSAGE_BYTES
        // could be admitted (its changes alone would pass the document's cap), so
        // Automerge is not asked to parse it.
        let decoded = if data.len() > MAX_SYNC_MESSAGE_BYTES {
            Err(format!(
                "a sync message of {} bytes; at most {MAX_SYNC_MESSAGE_BYTES} are read",
                data.len()
            ))
        } else {
            sync::Message::decode(data).map_err(|e| e.to_string())
        };
        let message = match decoded {
            Ok(m) => m,
            Err(detail) => {
                let error = Refusal::MalformedSync { detail }.body();
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
            tracing::warn!(device = %member.device, doc = %doc, code = e.code(), error = %e, "refused a sync message before applying it");
            batch.send(
                conn,
                Message::Rejected {
                    document_id: doc,
                    error: Refusal::Screen(e).body(),
                },
            );
            return Ok(());
        }
        let catalog = match contained(self.catalog(store))? {
            Ok(catalog) => catalog,
            Err(e) => {
                // The whole tenant's problem, not this document's: the device is
                // disconnected (it reconnects with backoff and keeps its changes)
                // rather than told the document is unavailable, which would move
                // its catch-up cursor past it.
                batch.close(conn, unreadable_config(&e));
                return Ok(());
            }
        };
        if !self.load(store, &doc)? {
            batch.send(conn, Message::DocUnavailable { document_id: doc });
            return Ok(());
        }
        self.ensure_state(store, conn, &doc)?;
        let (Some(c), Some(cached)) = (self.conns.get_mut(&conn), self.docs.get_mut(&doc)) else {
            return Ok(());
        };
        if asks_for_everything(&message) {
            // Answered within the device's allowance of full re-sends.
            c.resets.insert(SyncTarget::Customer(doc.clone()));
        }
        let Some(state) = c.states.get_mut(&doc) else {
            return Ok(());
        };
        c.dirty.insert(doc.clone());
        self.dirty_conns.insert(conn);
        let stored = cached.doc_mut();
        let before = stored.heads();
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
            stored.receive_sync_message(state, message).map(|_| ())
        }));
        let Ok(received) = received else {
            tracing::warn!(device = %member.device, doc = %doc, "Automerge panicked applying a device's sync message; refused it and reloaded the document");
            let error = Refusal::SyncNotApplied {
                detail: "Automerge refused the changes' sequence numbers or actors".to_owned(),
            };
            self.reject(batch, conn, &doc, error.body());
            return Ok(());
        };
        if received.is_ok() && stored.has_queued_changes() {
            // Changes whose dependencies the server lacks would wait in the cached
            // document, unadmitted, and collide with the next honest change under
            // the same actor and sequence number. Nothing of this message is kept.
            return self.drop_queued(store, batch, conn, &doc, &member);
        }
        let after = stored.heads();
        let admitted = match received {
            Err(e) => Err(Refusal::SyncNotApplied {
                detail: e.to_string(),
            }
            .body()),
            Ok(()) if after == before => Ok(None),
            Ok(()) => {
                let sender = Sender {
                    tenant: member.tenant.clone(),
                    user: member.user.clone(),
                    role: member.role,
                    device: member.device.clone(),
                    kind: member.kind,
                };
                let directory = StoreDirectory(std::cell::RefCell::new(&mut *store));
                admit(stored, &before, &sender, &directory, &catalog)
                    .map(Some)
                    .map_err(|e| Refusal::Admission(e).body())
            }
        };
        // Admitted changes: every result's decision is re-run with the rule set it
        // names, then the document is saved.
        let admitted = match admitted {
            Ok(Some(events)) => match contained(self.verify_results(store, &events))?
                .unwrap_or_else(|e| Err(config::Verdict::Refused(unreadable_config(&e))))
            {
                Err(config::Verdict::Busy) => {
                    // Not a refusal (that would make the device drop its result):
                    // the changes are forgotten and the device comes back later.
                    tracing::warn!(tenant = %self.tenant, device = %member.device, "plugin time used up; asking the device to retry");
                    self.docs.remove(&doc);
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.states.insert(doc.clone(), sync::State::new());
                    }
                    batch.close(conn, Refusal::Busy.body());
                    return Ok(());
                }
                Err(config::Verdict::Refused(error)) => Err(error),
                Ok(()) => match self
                    .docs
                    .get_mut(&doc)
                    .map(|c| store.save(c, Some(MAX_DOCUMENT_BYTES)))
                {
                    None | Some(Ok(())) => Ok(events),
                    Some(Err(e)) if e.is_failure() => return Err(e),
                    Some(Err(e)) => Err(storage_refusal(&e)),
                },
            },
            Ok(None) => Ok(Vec::new()),
            Err(error) => Err(error),
        };
        match admitted {
            Err(error) => {
                tracing::warn!(device = %member.device, doc = %doc, code = %error.code, "rejected changes");
                self.reject(batch, conn, &doc, error);
            }
            Ok(events) => {
                if !events.is_empty() {
                    store.subscribe(&member.device, &self.tenant, &doc)?;
                    for event in &events {
                        if let EventKind::Requested { origin, .. } = &event.kind {
                            store.subscribe(origin, &self.tenant, &doc)?;
                        }
                    }
                    self.fan_out(store, batch, &doc, Some(conn))?;
                }
                self.send_sync(
                    batch,
                    conn,
                    &SyncTarget::Customer(doc),
                    PendingSync::default(),
                );
            }
        }
        Ok(())
    }

    /// Starts syncing the next slice of joining devices' changed documents: at most
    /// [`CATCH_UP_PER_BATCH`] in all, shared between the devices waiting.
    fn advance_catch_up<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        batch: &mut Batch<'_>,
    ) -> Result<(), StorageError> {
        if self.catching_up.is_empty() {
            return Ok(());
        }
        let waiting: Vec<ConnId> = self.catching_up.iter().copied().collect();
        let share = (CATCH_UP_PER_BATCH / waiting.len()).max(1);
        let mut budget = CATCH_UP_PER_BATCH;
        self.catch_up_stalled = true;
        for conn in waiting {
            // A device whose outgoing queue has no room for its share (in
            // frames, and bytes for at least its next document) waits for the
            // next batch, instead of being dropped as too slow.
            if (batch.room)(conn).frames < share.min(OUT_ROOM_FOR_CATCH_UP)
                || !batch.has_room_for(conn, SYNC_ROOM_BYTES)
            {
                continue;
            }
            self.catch_up_stalled = false;
            batch.senders.insert(conn);
            for _ in 0..share {
                if budget == 0 {
                    return Ok(());
                }
                if !batch.has_room_for(conn, SYNC_ROOM_BYTES) {
                    break;
                }
                let Some(c) = self.conns.get_mut(&conn) else {
                    break;
                };
                let Some(doc) = c.catch_up.pop_front() else {
                    break;
                };
                let member = c.member.clone();
                budget -= 1;
                if self.may_see(store, &member, &doc)? {
                    self.start_sync(store, batch, conn, &doc, true)?;
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

    /// Refuses a device's sync message: forgets what it changed (the document
    /// reloads from what is saved), starts the device's sync of the document over
    /// and tells it why.
    fn reject(&mut self, batch: &mut Batch<'_>, conn: ConnId, doc: &CustomerId, error: ErrorBody) {
        self.docs.remove(doc);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.states.insert(doc.clone(), sync::State::new());
        }
        batch.send(
            conn,
            Message::Rejected {
                document_id: doc.clone(),
                error,
            },
        );
    }

    /// Forgets a sync message that left changes queued: the document is reloaded
    /// from storage, and the device gets a fresh sync message with the reset flag,
    /// so an honest device (whose message only raced a lost commit) resends
    /// everything the server lacks, dependencies first, while a forged orphan has
    /// nothing to attach to. Not a `rejected`: that would make an honest device
    /// drop its outbox.
    fn drop_queued<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        batch: &mut Batch<'_>,
        conn: ConnId,
        doc: &CustomerId,
        member: &Authenticated,
    ) -> Result<(), StorageError> {
        tracing::warn!(device = %member.device, doc = %doc, "a sync message left changes waiting for missing dependencies; dropped it");
        // What the dropped changes waited for: asked for explicitly, so an honest
        // device sends it even if a bloom-filter false positive hid it before.
        let missing = self
            .docs
            .get_mut(doc)
            .map(|c| c.doc_mut().automerge_mut().get_missing_deps(&[]))
            .unwrap_or_default();
        self.docs.remove(doc);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.states.insert(doc.clone(), sync::State::new());
            c.dirty.insert(doc.clone());
        }
        if !self.load(store, doc)? {
            batch.send(
                conn,
                Message::DocUnavailable {
                    document_id: doc.clone(),
                },
            );
            return Ok(());
        }
        let (Some(c), Some(cached)) = (self.conns.get_mut(&conn), self.docs.get_mut(doc)) else {
            return Ok(());
        };
        let Some(state) = c.states.get_mut(doc) else {
            return Ok(());
        };
        if let Some(mut message) = cached.doc_mut().generate_sync_message(state) {
            message
                .flags
                .get_or_insert_with(sync::MessageFlags::new)
                .set(sync::MessageFlags::SYNC_RESET);
            message.need = missing;
            batch.send(
                conn,
                Message::Sync {
                    document_id: doc.clone(),
                    data: message.encode(),
                },
            );
        }
        Ok(())
    }

    /// Sends every other online subscriber of the document what it lacks.
    fn fan_out<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        batch: &mut Batch<'_>,
        doc: &CustomerId,
        except: Option<ConnId>,
    ) -> Result<(), StorageError> {
        let mut targets: Vec<(ConnId, Authenticated)> = Vec::new();
        for device in store.subscribers(&self.tenant, doc)? {
            for id in self.by_device.get(&device).into_iter().flatten() {
                if let Some(c) = self.conns.get(id)
                    && Some(*id) != except
                {
                    targets.push((*id, c.member.clone()));
                }
            }
        }
        for (conn, member) in targets {
            // A subscription outlives the assignee restriction being turned on (or
            // the customer being given to someone else): visibility is checked on
            // every push, not only when subscribing.
            if !self.may_see(store, &member, doc)? {
                continue;
            }
            self.ensure_state(store, conn, doc)?;
            self.send_sync(
                batch,
                conn,
                &SyncTarget::Customer(doc.clone()),
                PendingSync {
                    must: false,
                    unsolicited: true,
                },
            );
        }
        Ok(())
    }

    fn rpc<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        batch: &mut Batch<'_>,
        conn: ConnId,
        call: RpcCall,
    ) -> Result<RpcResult, StorageError> {
        let Some(member) = self.conns.get(&conn).map(|c| c.member.clone()) else {
            return Ok(RpcResult::Done);
        };
        match call {
            RpcCall::RecallList => self.recalls(store, &member),
            RpcCall::UploadStatus { uploads } => Ok(self.upload_status(batch, conn, uploads)),
            RpcCall::CallStats { from, to } => {
                // The dashboard is for managers and above, whom the assignee
                // restriction (which limits the user role) never narrows.
                if !member.role.is_manager() {
                    return Ok(RpcResult::Refused(
                        Refusal::RoleRequired {
                            needed: Role::Manager,
                        }
                        .body(),
                    ));
                }
                let span = to.as_millis().saturating_sub(from.as_millis());
                if span <= 0 || span > wire::MAX_STATS_PERIOD_MS {
                    return Ok(RpcResult::Refused(
                        Refusal::BadRequest {
                            detail: format!(
                                "the period must be between 1 ms and {} days",
                                wire::MAX_STATS_PERIOD_MS / (24 * 3600 * 1000)
                            ),
                        }
                        .body(),
                    ));
                }
                let reached: Vec<_> = self
                    .catalog(store)?
                    .types()
                    .iter()
                    .filter(|t| t.reached_person)
                    .map(|t| t.id.clone())
                    .collect();
                Ok(RpcResult::CallStats(store.call_stats(
                    &self.tenant,
                    from,
                    to,
                    &reached,
                )?))
            }
            RpcCall::CustomerCreate { customer } => {
                if customer.tenant != self.tenant {
                    return Ok(RpcResult::Refused(Refusal::WrongTenant.body()));
                }
                let most = self.settings.max_customers;
                if store.customer_count(&self.tenant)? >= most {
                    return Ok(RpcResult::Refused(
                        Refusal::CustomerLimit { max: most }.body(),
                    ));
                }
                let mut doc = match CustomerDoc::create(
                    &customer,
                    self.now,
                    self.settings.server_actor.clone(),
                ) {
                    Ok(doc) => doc,
                    Err(e) => return Ok(RpcResult::Refused(Refusal::Core(e).body())),
                };
                match store.insert(&mut doc) {
                    Ok(_) => {}
                    Err(e) if e.is_failure() => return Err(e),
                    Err(e) => return Ok(RpcResult::Refused(storage_refusal(&e))),
                }
                store.subscribe(&member.device, &self.tenant, &customer.id)?;
                self.start_sync(store, batch, conn, &customer.id, false)?;
                Ok(RpcResult::Subscribed(vec![customer.id]))
            }
            RpcCall::CustomerList {
                after,
                limit,
                query,
            } => {
                let query = query.map(|q| q.trim().to_owned()).filter(|q| !q.is_empty());
                if query
                    .as_ref()
                    .is_some_and(|q| q.chars().count() > wire::MAX_CUSTOMER_QUERY_CHARS)
                {
                    return Ok(RpcResult::Refused(
                        Refusal::BadRequest {
                            detail: format!(
                                "a search of at most {} characters",
                                wire::MAX_CUSTOMER_QUERY_CHARS
                            ),
                        }
                        .body(),
                    ));
                }
                let restricted = member.role.is_limited_by_assignee_visibility()
                    && store.assignee_visibility(&self.tenant)?;
                let owner = restricted.then_some(member.user.as_str());
                // An older client asks for everything at once: read one row past
                // what it may get, so a tenant with many customers costs a bounded
                // query, not all of them, before the refusal.
                let page = limit.map_or(MAX_UNPAGED_CUSTOMERS + 1, |l| {
                    l.clamp(1, wire::MAX_CUSTOMER_PAGE)
                });
                let rows = store.customers_page(
                    &self.tenant,
                    after.as_ref(),
                    owner,
                    query.as_deref(),
                    page,
                )?;
                Ok(match limit {
                    Some(_) => RpcResult::Customers(rows),
                    None => unpaged_customers(rows, MAX_UNPAGED_CUSTOMERS),
                })
            }
            RpcCall::Subscribe { documents } => {
                if documents.len() > wire::MAX_SUBSCRIBE {
                    return Ok(RpcResult::Refused(Refusal::TooManyDocuments.body()));
                }
                let mut subscribed = Vec::new();
                for doc in documents {
                    if self.may_see(store, &member, &doc)? {
                        store.subscribe(&member.device, &self.tenant, &doc)?;
                        self.start_sync(store, batch, conn, &doc, false)?;
                        subscribed.push(doc);
                    } else {
                        batch.send(conn, Message::DocUnavailable { document_id: doc });
                    }
                }
                Ok(RpcResult::Subscribed(subscribed))
            }
            RpcCall::Devices => Ok(RpcResult::Devices(
                store
                    .devices_of(&member.user)?
                    .into_iter()
                    .map(|(id, kind)| DeviceSummary {
                        online: self.by_device.contains_key(&id),
                        id,
                        kind,
                    })
                    .collect(),
            )),
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
    fn expire_due<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        batch: &mut Batch<'_>,
    ) -> Result<(), StorageError> {
        if !self.expiry_blocked && self.next_expiry.is_some_and(|due| due > self.now) {
            return Ok(());
        }
        let now = self.now;
        let cutoff = now.plus_millis(-self.settings.start_limit_ms);
        self.expiry_blocked = false;
        for (customer, call) in store.awaiting_start_before(&self.tenant, cutoff)? {
            if !self.load(store, &customer)? {
                self.expiry_blocked = true;
                continue;
            }
            let Some(cached) = self.docs.get_mut(&customer) else {
                continue;
            };
            if cached.doc().call(&call).map(|v| v.phase) != Some(Phase::AwaitingStart) {
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
                    device: self.settings.server_device.clone(),
                    device_kind: DeviceKind::Server,
                    user: self.settings.server_user.clone(),
                    device_at: None,
                },
                kind: EventKind::Expired,
            };
            let catalog = ResultCatalog::new(Vec::new());
            let ctx = RuleContext {
                // Expiry reads no result types.
                catalog: &catalog,
                start_limit_ms: self.settings.start_limit_ms,
                other_open_calls: &[],
            };
            if let Err(e) = cached.doc_mut().record(event, &ctx) {
                tracing::warn!(call = %call, error = %e, "could not record expiry");
                self.docs.remove(&customer);
                continue;
            }
            match store.save(cached, None) {
                Ok(()) => {}
                Err(e) if e.is_failure() => return Err(e),
                Err(e) => {
                    tracing::warn!(call = %call, error = %e, "could not save expiry");
                    self.docs.remove(&customer);
                    continue;
                }
            }
            tracing::info!(call = %call, "call expired: start limit passed");
            self.fan_out(store, batch, &customer, None)?;
        }
        Ok(())
    }

    fn save_conn_states<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        conn: ConnId,
    ) -> Result<(), StorageError> {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        for doc in c.dirty.drain() {
            if let Some(state) = c.states.get(&doc) {
                store.set_sync_state(&c.member.device, &self.tenant, &doc, &state.encode())?;
            }
        }
        Ok(())
    }

    fn save_sync_states<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
    ) -> Result<(), StorageError> {
        let mut conns: Vec<ConnId> = self.dirty_conns.drain().collect();
        conns.sort_unstable();
        for conn in conns {
            self.save_conn_states(store, conn)?;
        }
        Ok(())
    }
}

/// Splits a storage failure (the batch fails: returned as the outer error) from
/// any other error (one document's or the tenant's problem: the inner error,
/// answered to the one device that asked).
fn contained<T>(result: Result<T, StorageError>) -> Result<Result<T, StorageError>, StorageError> {
    match result {
        Err(e) if e.is_failure() => Err(e),
        other => Ok(other),
    }
}

/// The refusal when the tenant's configuration cannot be read.
fn unreadable_config(e: &StorageError) -> ErrorBody {
    tracing::error!(error = %e, "the tenant configuration cannot be read");
    Refusal::ConfigUnreadable.body()
}

/// A storage refusal for the device.
fn storage_refusal(e: &StorageError) -> ErrorBody {
    match e {
        StorageError::Refused(refusal) => refusal.body(),
        other => {
            tracing::warn!(error = %other, "a storage refusal");
            Refusal::StoreRefused.body()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize) -> Vec<CustomerSummary> {
        (0..n)
            .map(|i| CustomerSummary {
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
