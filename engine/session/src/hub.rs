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
//! # Where each concern lives
//!
//! This file holds the session's state, its entry points and its wake-ups; the
//! work is in one module per concern: `batching` (a batch's effects until its
//! commit), `join` (connections, presence, catch-up), `document_sync` (loading,
//! sync states, receiving and admitting a device's changes, fan-out), `requests`
//! (`rpc`), `expiry` (the start limit), `config` (the tenant's configuration and
//! plugin re-checks), `recordings` (upload status and recording questions) and
//! `cache` (documents in memory).
//!
//! # One entry point
//!
//! Everything reaches the hub as a [`HubEvent`] through
//! [`HubSession::handle_event`], and everything it wants done comes back as one
//! [`HubOutput`]. The hub works in batches; for each batch the driver:
//!
//! 1. opens a write transaction, as a [`HubStore`] (one that begins when it
//!    first writes suits: reads and Automerge's work then hold no lock);
//! 2. hands it each input as [`HubEvent::Input`], in arrival order, with the time
//!    it reads once for the batch and how much each connection's outgoing queue
//!    can still take, in frames and bytes (the hub generates a sync only into
//!    room; one that cannot go waits and is generated later, once). The output
//!    of an input only ever asks for plugin re-checks ([`Verification`]), to run
//!    at once off the hub, or to end the batch early (`end_batch`: a storage
//!    failure lost it);
//! 3. ends the batch with [`HubEvent::EndOfBatch`]: the hub does its own work
//!    (waiting syncs that now fit, catch-up slices, due expiries, sync states
//!    saved) and commits the transaction through the store
//!    ([`HubStore::commit`]); the output is what the committed batch releases,
//!    to send in order, or, if the batch was lost, the connections to drop
//!    (the driver then drops the transaction, which rolls it back).
//!
//! The durability rule lives here, not in the driver: no message reflecting a
//! change leaves before the transaction holding that change is committed, so a
//! device never hears of a change (its own included) that a crash could take
//! back.
//!
//! # Plugin re-checks are effects
//!
//! A device's changes that save a result are admitted only if each decision
//! holds when re-run with the rule set it names, in WebAssembly: milliseconds of
//! work, which must not run inside the SQLite write turn every tenant shares.
//! The hub therefore holds such a message (the document with it applied, out
//! of the cache, and the device's sync state), asks for a [`Verification`] and
//! goes on with other work. Nothing of a held message is saved or forwarded;
//! the device's later messages for that document wait behind it. The verdict
//! comes back as [`HubInput::Verified`] in a later batch: the held document is
//! saved and fanned out as if it had never left (or, if the document was read
//! from storage meanwhile, the message is applied again to what is current,
//! its results already checked), or the message is refused (see the
//! `verification` module).
//!
//! [`HubSession::next_wake`] is a pure getter: when the driver should run a batch
//! with no input (catch-up to continue, an expiry due), or `None` to wait for
//! input only.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use automerge::ActorId;
use automerge::sync;
use callsync_core::tenant_config::{PreparedInstall, TenantConfigDoc};
use callsync_core::wire::{self, Cursor, ErrorBody, Message, Refusal};
use callsync_core::{CustomerId, DeviceId, ResultCatalog, TenantId, Timestamp, UserId};

use crate::rules::ResultRules;
use crate::storage::{HubStore, LoadedDoc, StorageError};
use crate::{Authenticated, ConnId};

mod batching;
mod cache;
mod config;
mod document_sync;
mod expiry;
mod join;
mod recordings;
mod requests;
mod verification;

use batching::{Batch, Effects};
use cache::DocCache;
use document_sync::{Allowance, PendingSync, SyncTarget, asks_for_everything};
use verification::{Held, RuleSource};

pub use batching::{HubOutput, Room};
pub use requests::unpaged_customers;
pub use verification::{MAX_HELD_MESSAGES, MAX_WAITING_BEHIND_HELD, Verdict, Verification};

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
    /// Device messages held for their plugin re-check at once; past it a
    /// device saving a result is told `busy` ([`MAX_HELD_MESSAGES`] normally).
    pub max_held: usize,
}

/// What happens to a hub: the one input of [`HubSession::handle_event`].
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // Moved in once per event and taken apart at once.
pub enum HubEvent {
    /// One input of the batch, in arrival order.
    Input(HubInput),
    /// The batch's inputs are all in: the hub does its own work, commits the
    /// batch through the store and releases what it holds.
    EndOfBatch,
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
    /// The verdict of a [`Verification`] the hub asked for.
    Verified {
        /// The verification's ticket.
        ticket: u64,
        /// Whether the held message's decisions hold.
        verdict: Verdict,
    },
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
    /// The batch's effects so far.
    effects: Effects,
    /// What a plugin re-check reads, shared with the verifications in flight
    /// (made again when the configuration changes).
    rule_source: Option<Arc<RuleSource>>,
    /// Device messages waiting for their verdict, by ticket.
    held: HashMap<u64, Held<D>>,
    /// The ticket held for each connection and document.
    holding: HashMap<(ConnId, CustomerId), u64>,
    /// The last ticket given out.
    last_ticket: u64,
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
            effects: Effects::default(),
            rule_source: None,
            held: HashMap::new(),
            holding: HashMap::new(),
            last_ticket: 0,
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

    /// Handles one event of a batch at `now`, with the room each connection's
    /// outgoing queue has as `room` reports it, and says what the driver is to
    /// do (call order: see the module).
    pub fn handle_event<S: HubStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        store: &mut S,
        room: &dyn Fn(ConnId) -> Room,
        event: HubEvent,
    ) -> HubOutput {
        self.now = now;
        let mut batch = Batch::new(std::mem::take(&mut self.effects), room);
        match event {
            HubEvent::Input(input) => {
                if let Err(e) = self.input(store, input, &mut batch)
                    && batch.failure.is_none()
                {
                    batch.failure = Some(e);
                }
                let output = HubOutput {
                    verifications: std::mem::take(&mut batch.verifications),
                    end_batch: batch.failure.is_some(),
                    ..HubOutput::default()
                };
                self.effects = batch.effects;
                output
            }
            HubEvent::EndOfBatch => {
                if batch.failure.is_none()
                    && let Err(e) = self.finish(store, &mut batch).and_then(|()| store.commit())
                {
                    batch.failure = Some(e);
                }
                let mut effects = batch.effects;
                match effects.failure.take() {
                    None => self.committed(effects),
                    Some(failure) => self.abandoned(effects, failure),
                }
            }
        }
    }

    fn input<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        input: HubInput,
        batch: &mut Batch<'_>,
    ) -> Result<(), StorageError> {
        let now = self.now;
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
                        self.sync(store, batch, conn, document_id, data, &[])
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
                // What it sent that waits for a verdict was never acknowledged:
                // the device sends it again when it reconnects.
                self.forget_held_of(conn);
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
                batch.recording_tickets.push(ticket);
                self.recording(store, batch, conn, ticket, ask)
            }
            HubInput::Verified { ticket, verdict } => self.verified(store, batch, ticket, verdict),
        }
    }

    /// Ends the batch's work: waiting syncs that now fit, the next catch-up
    /// slice, due expiries, and the sync states the batch changed.
    fn finish<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        batch: &mut Batch<'_>,
    ) -> Result<(), StorageError> {
        self.send_pending(store, batch)?;
        self.advance_catch_up(store, batch)?;
        self.expire_due(store, batch)?;
        self.save_sync_states(store)?;
        self.next_expiry = store
            .oldest_awaiting_start(&self.tenant)?
            .map(|at| at.plus_millis(self.settings.start_limit_ms));
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
