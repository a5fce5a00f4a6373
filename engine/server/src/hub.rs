//! The hub driver: runs one [`HubSession`] per tenant, each on its own thread over
//! its own SQLite connection, and carries their effects to the connections.
//!
//! Owns: the tenants' hub threads (started for every tenant at start-up, so
//! expiries run with nobody connected, and for a tenant created later on its first
//! connection), batching each hub's inputs into one write transaction, the clock
//! read once per batch, committing before any of the batch's messages leaves (the
//! session's call order), and each connection's way out ([`Outbox`]): a writer
//! queue, and a cut-off for a writer that is stuck.
//! Does not own: any protocol decision (admission, fan-out, catch-up, expiry,
//! presence: `callsync_session::hub`).
//!
//! Tenants no longer share a queue: a tenant flooding the server with changes
//! fills its own hub's queue and batches, and another tenant's hub runs on; the
//! two meet only at SQLite's write lock, held for one batch at a time.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use callsync_core::TenantId;
use callsync_core::tenant_config::TenantConfigDoc;
use callsync_core::wire::{self, Cursor, ErrorBody, Refusal};
use callsync_session::hub::{
    HubEvent, HubInput, HubOutput, HubSession, HubSettings, RecordingAsk, RecordingVerdict, Room,
    Verdict, Verification,
};
use callsync_session::rules::ResultRules;
use callsync_session::{Authenticated, ConnId};
use callsync_store::{Store, StoredDoc};
use tokio::sync::mpsc;

use crate::clock;

/// What the driver sends a connection's writer.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// An encoded frame.
    Frame(Arc<Vec<u8>>),
    /// Send this error, then close.
    Close(ErrorBody),
}

/// Bytes of encoded frames one connection's writer may have queued: room for the
/// largest sync the hub generates (the configuration's, 6 MiB) and replies
/// beside it. The hub generates a document's sync only when the queue has room
/// for the largest one could be; a reply that would take the queue past this
/// cuts the connection off as too slow.
pub(crate) const MAX_QUEUED_BYTES_PER_CONN: usize = 16 << 20;
/// Bytes all connections' writers may have queued together. Past it the hubs
/// generate no more syncs for anyone (they wait, and go as the queues drain);
/// replies still go.
pub(crate) const MAX_QUEUED_BYTES: usize = 256 << 20;

/// What is queued for one connection's writer, in bytes, and for all of them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Gauge {
    conn: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
}

impl Gauge {
    /// A gauge for a new connection, counting into the same total.
    pub(crate) fn for_connection(&self) -> Self {
        Self {
            conn: Arc::new(AtomicUsize::new(0)),
            total: self.total.clone(),
        }
    }

    /// `bytes` were queued.
    pub(crate) fn add(&self, bytes: usize) {
        self.conn.fetch_add(bytes, Ordering::Relaxed);
        self.total.fetch_add(bytes, Ordering::Relaxed);
    }

    /// `bytes` were written out.
    pub(crate) fn sub(&self, bytes: usize) {
        self.conn.fetch_sub(bytes, Ordering::Relaxed);
        self.total.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Bytes queued for this connection.
    pub(crate) fn queued(&self) -> usize {
        self.conn.load(Ordering::Relaxed)
    }

    /// Bytes queued for every connection.
    pub(crate) fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Whether `bytes` more would take this connection past its limit.
    pub(crate) fn would_overflow(&self, bytes: usize) -> bool {
        self.queued().saturating_add(bytes) > MAX_QUEUED_BYTES_PER_CONN
    }
}

/// A connection's way out, as its hub's driver holds it.
#[derive(Debug)]
pub(crate) struct Outbox {
    /// Frames and the closing message, in order, for the connection's writer.
    pub(crate) queue: mpsc::Sender<Outgoing>,
    /// Cuts the connection off at once, with this error as the close reason: for
    /// when the writer is stuck (the device does not read) and the queue has no
    /// room even for the closing message.
    pub(crate) cut_off: tokio::sync::watch::Sender<Option<ErrorBody>>,
    /// Document syncs the hub started with this device on its own, not yet told to
    /// the connection's rate limit (see `ServerConnection::server_started`).
    pub(crate) started: Arc<std::sync::atomic::AtomicU64>,
    /// Bytes queued for the writer (it subtracts what it has written).
    pub(crate) gauge: Gauge,
}

impl Outbox {
    /// The room the hub may still fill: frames in the queue, and bytes up to the
    /// connection's limit (none while all queues together are over theirs).
    fn room(&self) -> Room {
        let bytes = if self.gauge.total() >= MAX_QUEUED_BYTES {
            0
        } else {
            MAX_QUEUED_BYTES_PER_CONN.saturating_sub(self.gauge.queued())
        };
        Room {
            frames: self.queue.capacity(),
            bytes,
        }
    }

    /// Sends `body` and closes after what is queued; cuts the connection off if
    /// the queue is full.
    fn close(&self, body: ErrorBody) {
        if let Err(e) = self.queue.try_send(Outgoing::Close(body))
            && let Outgoing::Close(body) = e.into_inner()
        {
            self.cut_off.send_replace(Some(body));
        }
    }

    /// Cuts the connection off as too slow, unless a reason was set already.
    fn cut_off_too_slow(&self) {
        // A closing reason set earlier in this flush (a refusal) stands.
        self.cut_off.send_if_modified(|reason| {
            let unset = reason.is_none();
            if unset {
                *reason = Some(Refusal::TooSlow.body());
            }
            unset
        });
    }
}

/// Tenants' configurations kept for decisions made off the hub, with a count of
/// changes so that a copy read while its hub published a change is not kept.
#[derive(Default)]
pub(crate) struct ConfigCache(Mutex<(u64, HashMap<TenantId, Arc<TenantConfigDoc>>)>);

impl ConfigCache {
    fn map(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<TenantId, Arc<TenantConfigDoc>>)> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The kept copy, or the change count to read one under.
    fn get(&self, tenant: &TenantId) -> Result<Arc<TenantConfigDoc>, u64> {
        let map = self.map();
        map.1.get(tenant).cloned().ok_or(map.0)
    }

    /// Keeps `doc`, read when the change count was `read_at`, unless a change
    /// came since.
    fn keep(&self, tenant: &TenantId, doc: TenantConfigDoc, read_at: u64) -> Arc<TenantConfigDoc> {
        let doc = Arc::new(doc);
        let mut map = self.map();
        if map.0 == read_at {
            map.1.insert(tenant.clone(), doc.clone());
        }
        doc
    }

    fn forget(&self, tenant: &TenantId) {
        let mut map = self.map();
        map.0 += 1;
        map.1.remove(tenant);
    }
}

/// What a hub thread is told.
#[derive(Debug)]
pub(crate) enum DriverInput {
    /// A connection joined: its way out, then the session's `open`.
    Open {
        conn: ConnId,
        member: Authenticated,
        cursor: Option<Cursor>,
        out: Outbox,
    },
    /// Anything else for the session.
    Session(HubInput),
    /// A question about a recording from a stream of connection `conn`: the
    /// driver numbers it and answers on `reply` once its batch commits (a
    /// failed batch drops `reply`).
    Recording {
        conn: ConnId,
        ask: RecordingAsk,
        reply: tokio::sync::oneshot::Sender<Result<RecordingVerdict, ErrorBody>>,
    },
    /// Finish the current batch and stop.
    Shutdown,
    /// Panics on the hub's thread: how a test stands in for a bug no
    /// containment caught.
    #[cfg(test)]
    Crash,
}

/// Inputs waiting for one tenant's hub at most; past this, that tenant's
/// connection tasks wait (and stop reading their streams) until it catches up.
pub(crate) const INPUT_QUEUE: usize = 4_096;
/// Most inputs handled in one transaction …
const MAX_BATCH: usize = 512;
/// … and the most time a batch takes new inputs for: SQLite has one writer, so a
/// batch holds every other tenant's hub for as long as it runs.
const BATCH_BUDGET: Duration = Duration::from_millis(20);

/// Turns at SQLite's one write lock, first come first served. SQLite's own busy
/// wait polls with growing sleeps, so a hub that starts its next transaction the
/// moment it commits could hold the lock for as long as it has work; with turns,
/// another tenant's hub waits at most for the batch ahead of it.
#[derive(Default)]
pub(crate) struct WriteTurns {
    state: Mutex<(u64, u64)>,
    next: std::sync::Condvar,
}

/// A held turn; the next waiter's starts when it drops.
pub(crate) struct Turn(Arc<WriteTurns>);

impl WriteTurns {
    /// Waits for this thread's turn.
    pub(crate) fn take(self: &Arc<Self>) -> Turn {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ticket = state.0;
        state.0 += 1;
        while state.1 != ticket {
            state = self
                .next
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        Turn(self.clone())
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut state = self
            .0
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.1 += 1;
        self.0.next.notify_all();
    }
}

/// Fixed settings of every hub.
#[derive(Clone)]
pub(crate) struct HubsConfig {
    pub(crate) db_path: PathBuf,
    pub(crate) settings: HubSettings,
    pub(crate) rules: Arc<dyn ResultRules>,
}

/// Every tenant's hub.
pub(crate) struct Hubs {
    config: HubsConfig,
    turns: Arc<WriteTurns>,
    /// What all connections' writers have queued.
    gauge: Gauge,
    /// Each tenant's configuration as last read for a decision made off the hub
    /// (dropped when its hub publishes a change).
    configs: Arc<ConfigCache>,
    running: Mutex<HashMap<TenantId, RunningHub>>,
    /// Set at shutdown: no hub starts after it.
    stopping: std::sync::atomic::AtomicBool,
}

struct RunningHub {
    inputs: mpsc::Sender<DriverInput>,
    thread: std::thread::JoinHandle<()>,
}

impl Hubs {
    /// Starts a hub for every tenant in the store.
    pub(crate) fn start(config: HubsConfig, tenants: Vec<TenantId>) -> std::io::Result<Arc<Self>> {
        let hubs = Arc::new(Self {
            config,
            turns: Arc::new(WriteTurns::default()),
            gauge: Gauge::default(),
            configs: Arc::default(),
            running: Mutex::new(HashMap::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
        });
        for tenant in tenants {
            hubs.sender(&tenant)?;
        }
        Ok(hubs)
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, RunningHub>> {
        // The map is consistent at every step; a poisoned lock is still usable.
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The queue of the tenant's hub if it is running.
    fn live_queue(&self, tenant: &TenantId) -> Option<mpsc::Sender<DriverInput>> {
        self.running()
            .get(tenant)
            .filter(|hub| !hub.inputs.is_closed())
            .map(|hub| hub.inputs.clone())
    }

    /// The tenant's hub's queue, starting the hub if it is not running (or
    /// starting it again if its thread ended).
    pub(crate) fn sender(&self, tenant: &TenantId) -> std::io::Result<mpsc::Sender<DriverInput>> {
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::other("the server is shutting down"));
        }
        if let Some(inputs) = self.live_queue(tenant) {
            return Ok(inputs);
        }
        // Opening a SQLite connection is I/O: done before taking the lock other
        // tenants' first connections wait on. If another connection started the hub
        // meanwhile, this store is dropped unused.
        let store = Store::open(&self.config.db_path).map_err(std::io::Error::other)?;
        // The WAL checkpoint runs on the compactor's connection, off every hub.
        store
            .leave_checkpoints_to_others()
            .map_err(std::io::Error::other)?;
        let mut running = self.running();
        if let Some(hub) = running.get(tenant)
            && !hub.inputs.is_closed()
        {
            return Ok(hub.inputs.clone());
        }
        // Thread start-up happens under the lock, so two first connections of a
        // tenant cannot start two hubs.
        let (inputs, receiver) = mpsc::channel(INPUT_QUEUE);
        let verifier = Verifier::start(tenant, inputs.downgrade())?;
        let session = HubSession::new(
            tenant.clone(),
            self.config.settings.clone(),
            self.config.rules.clone(),
        );
        let driver = Driver {
            store,
            configs: self.configs.clone(),
            session,
            outboxes: RefCell::new(HashMap::new()),
            turns: self.turns.clone(),
            recording_answers: HashMap::new(),
            next_ticket: 0,
            verifier,
        };
        let thread = std::thread::Builder::new()
            .name(format!("hub-{tenant}"))
            .spawn(move || driver.run(receiver))?;
        tracing::debug!(tenant = %tenant, "hub started");
        running.insert(
            tenant.clone(),
            RunningHub {
                inputs: inputs.clone(),
                thread,
            },
        );
        Ok(inputs)
    }

    /// The tenant's configuration for a decision made off the hub: as kept, else
    /// read on a blocking thread over a connection of its own (no lock others
    /// wait on). `None` when the tenant has none yet.
    pub(crate) async fn tenant_config(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<Arc<TenantConfigDoc>>, String> {
        let read_at = match self.configs.get(tenant) {
            Ok(doc) => return Ok(Some(doc)),
            Err(read_at) => read_at,
        };
        let db = self.config.db_path.clone();
        let key = tenant.clone();
        let loaded =
            tokio::task::spawn_blocking(move || -> Result<Option<TenantConfigDoc>, String> {
                let store = Store::open(&db).map_err(|e| e.to_string())?;
                let bytes = callsync_store::ConfigQueries::tenant_config(&store, &key)
                    .map_err(|e| e.to_string())?;
                bytes
                    .map(|b| TenantConfigDoc::load(&b, automerge::ActorId::random()))
                    .transpose()
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())??;
        Ok(loaded.map(|doc| self.configs.keep(tenant, doc, read_at)))
    }

    /// Asks the tenant's hub about a recording, for a stream of connection
    /// `conn`, and waits for the answer (given once its batch commits).
    pub(crate) async fn recording(
        &self,
        tenant: &TenantId,
        conn: ConnId,
        ask: RecordingAsk,
    ) -> Result<RecordingVerdict, ErrorBody> {
        let hub = self
            .sender(tenant)
            .map_err(|_| Refusal::ShuttingDown.body())?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        hub.send(DriverInput::Recording { conn, ask, reply })
            .await
            .map_err(|_| Refusal::ShuttingDown.body())?;
        // A batch that failed dropped the answer: nothing was written.
        answer
            .await
            .unwrap_or_else(|_| Err(Refusal::SaveFailed.body()))
    }

    /// A byte gauge for a new connection's queue.
    pub(crate) fn gauge(&self) -> Gauge {
        self.gauge.for_connection()
    }

    /// The turns at SQLite's write lock, for other writers of the server (the
    /// compactor) to queue with the hubs instead of meeting them in SQLite's busy
    /// wait.
    pub(crate) fn turns(&self) -> Arc<WriteTurns> {
        self.turns.clone()
    }

    /// Asks every hub to finish its batch and stop, and waits for them.
    pub(crate) fn shutdown(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let running: Vec<RunningHub> = self.running().drain().map(|(_, hub)| hub).collect();
        for hub in &running {
            // The queue may be full; the thread still sees Shutdown after it.
            let _ = hub.inputs.blocking_send(DriverInput::Shutdown);
        }
        for hub in running {
            let _ = hub.thread.join();
        }
    }
}

/// One tenant's hub thread.
struct Driver {
    store: Store,
    configs: Arc<ConfigCache>,
    session: HubSession<StoredDoc>,
    /// Each connection's way out. In a cell: the batch reads each queue's room
    /// while inputs add connections.
    outboxes: RefCell<HashMap<ConnId, Outbox>>,
    turns: Arc<WriteTurns>,
    /// Where each recording question's answer goes, by ticket.
    recording_answers: HashMap<u64, RecordingReply>,
    next_ticket: u64,
    /// Runs the session's plugin re-checks off this thread.
    verifier: Verifier,
}

/// Runs one hub's plugin re-checks ([`Verification`]s) on a thread of its own,
/// one at a time, off the hub and off SQLite's write turn, and hands each
/// verdict back to the hub as an input. One thread per tenant: a tenant's slow
/// plugin delays only its own results (its plugin time is budgeted as well).
struct Verifier {
    work: std::sync::mpsc::Sender<Verification>,
}

impl Verifier {
    /// Starts the thread; it ends when the hub's driver drops the verifier, or
    /// when the hub is gone.
    fn start(tenant: &TenantId, hub: mpsc::WeakSender<DriverInput>) -> std::io::Result<Self> {
        let (work, jobs) = std::sync::mpsc::channel::<Verification>();
        std::thread::Builder::new()
            .name(format!("verify-{tenant}"))
            .spawn(move || {
                for job in jobs {
                    let ticket = job.ticket;
                    // A plugin host bug is this message's problem alone: the
                    // device is asked to send it again later.
                    let verdict =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run()))
                            .unwrap_or_else(|_| {
                                tracing::error!(ticket, "a plugin re-check panicked");
                                Verdict::Busy
                            });
                    let Some(hub) = hub.upgrade() else {
                        break;
                    };
                    let verified = DriverInput::Session(HubInput::Verified { ticket, verdict });
                    if hub.blocking_send(verified).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self { work })
    }

    /// Queues the re-checks.
    fn run(&self, verifications: Vec<Verification>) {
        for job in verifications {
            if self.work.send(job).is_err() {
                // Only if the thread died: the held message then waits until its
                // connection closes, and the device sends it again.
                tracing::error!("the plugin re-check thread is gone");
            }
        }
    }
}

type RecordingReply = tokio::sync::oneshot::Sender<Result<RecordingVerdict, ErrorBody>>;

impl Driver {
    /// Runs until [`DriverInput::Shutdown`] or every sender is gone.
    fn run(mut self, mut inputs: mpsc::Receiver<DriverInput>) {
        // Only to wait on the bounded queue with a timeout; the hub itself does no
        // async work.
        let waiter = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "a hub could not start its timer");
                return;
            }
        };
        loop {
            let first = match self.session.next_wake() {
                None => waiter.block_on(inputs.recv()).map(Some),
                Some(at) => {
                    let wait = (at.as_millis() - clock::now().as_millis()).max(0) as u64;
                    // The timer is made inside `block_on`: it needs the runtime's clock.
                    match waiter.block_on(async {
                        tokio::time::timeout(Duration::from_millis(wait), inputs.recv()).await
                    }) {
                        Ok(Some(input)) => Some(Some(input)),
                        Ok(None) => None,
                        Err(_elapsed) => Some(None),
                    }
                }
            };
            let first = match first {
                None => break,
                Some(input) => input,
            };
            if self.process(first, &mut inputs) {
                break;
            }
        }
        tracing::info!(tenant = %self.session.tenant(), "hub stopped");
    }

    /// Runs one batch: `first` (if the batch was not started by a wake-up), then
    /// whatever else is waiting, up to [`MAX_BATCH`] inputs or [`BATCH_BUDGET`].
    /// True when the hub should stop.
    fn process(
        &mut self,
        first: Option<DriverInput>,
        inputs: &mut mpsc::Receiver<DriverInput>,
    ) -> bool {
        let outboxes = &self.outboxes;
        let room = |conn: ConnId| {
            outboxes
                .borrow()
                .get(&conn)
                .map_or(Room::NONE, Outbox::room)
        };
        let mut stop = false;
        let turns = self.turns.clone();
        let now = clock::now();
        let started = std::time::Instant::now();
        // The turn at SQLite's write lock (shared by every tenant's hub) is taken
        // only when the batch first writes: a batch that only reads (lists,
        // dashboards, recalls, syncs with nothing new) or waits on Automerge
        // holds up no other tenant. The session commits at the batch's end.
        let mut tx = self
            .store
            .write_when_needed(move || Box::new(turns.take()) as Box<dyn callsync_store::Held>);
        let mut next = first;
        let mut taken = 0;
        loop {
            let input = match next.take() {
                Some(input) => input,
                None if taken < MAX_BATCH && started.elapsed() < BATCH_BUDGET => {
                    match inputs.try_recv() {
                        Ok(input) => input,
                        Err(_) => break,
                    }
                }
                None => break,
            };
            taken += 1;
            let input = match input {
                DriverInput::Open {
                    conn,
                    member,
                    cursor,
                    out,
                } => {
                    outboxes.borrow_mut().insert(conn, out);
                    HubInput::Open {
                        conn,
                        member,
                        cursor,
                    }
                }
                DriverInput::Session(input) => input,
                DriverInput::Recording { conn, ask, reply } => {
                    self.next_ticket += 1;
                    self.recording_answers.insert(self.next_ticket, reply);
                    HubInput::Recording {
                        conn,
                        ticket: self.next_ticket,
                        ask,
                    }
                }
                DriverInput::Shutdown => {
                    stop = true;
                    break;
                }
                #[cfg(test)]
                DriverInput::Crash => panic!("a hub crash, as a test asked"),
            };
            let closed = match &input {
                HubInput::Closed { conn } => Some(*conn),
                _ => None,
            };
            let output = self
                .session
                .handle_event(now, &mut tx, &room, HubEvent::Input(input));
            // Started now, while the batch goes on: nothing of a held message
            // leaves before its verdict.
            self.verifier.run(output.verifications);
            if let Some(conn) = closed {
                outboxes.borrow_mut().remove(&conn);
            }
            if output.end_batch {
                break;
            }
        }
        let output = self
            .session
            .handle_event(now, &mut tx, &room, HubEvent::EndOfBatch);
        // Rolls back what a failed batch wrote; lets go of the write turn.
        drop(tx);
        self.release(output);
        stop
    }

    /// Carries out what the end of a batch released: recording answers, the
    /// configuration copy to forget, re-checks to start, then the messages and
    /// closes.
    fn release(&mut self, mut output: HubOutput) {
        for (ticket, answer) in std::mem::take(&mut output.recordings) {
            if let Some(reply) = self.recording_answers.remove(&ticket) {
                let _ = reply.send(answer);
            }
        }
        if output.config_changed {
            self.configs.forget(self.session.tenant());
        }
        self.verifier.run(std::mem::take(&mut output.verifications));
        self.flush(output);
    }

    /// Hands a committed batch's messages to the connection writers.
    fn flush(&mut self, released: HubOutput) {
        let mut outboxes = self.outboxes.borrow_mut();
        let mut slow = Vec::new();
        for (conn, message) in released.sends {
            let Some(out) = outboxes.get(&conn) else {
                continue;
            };
            let frame = match wire::encode_frame(&message) {
                Ok(frame) => frame,
                Err(e) => {
                    tracing::error!(error = %e, kind = message.kind(), "could not encode a message");
                    continue;
                }
            };
            let len = frame.len();
            // A device whose queue holds its limit in bytes is not reading: it is
            // cut off below rather than queued more (the hub paces its syncs to
            // the room, so this is a device asking for replies it never reads).
            if out.gauge.would_overflow(len) {
                slow.push(conn);
                continue;
            }
            out.gauge.add(len);
            if out
                .queue
                .try_send(Outgoing::Frame(Arc::new(frame)))
                .is_err()
            {
                out.gauge.sub(len);
                slow.push(conn);
            }
        }
        for (conn, body) in released.closes {
            if let Some(out) = outboxes.get(&conn) {
                out.close(body);
            }
        }
        for (conn, syncs) in released.unsolicited {
            if let Some(out) = outboxes.get(&conn) {
                out.started
                    .fetch_add(syncs, std::sync::atomic::Ordering::Relaxed);
            }
        }
        for conn in slow {
            // A device that cannot keep up is dropped; it catches up on reconnect.
            // Its writer is stuck behind a full queue, so the connection is cut off
            // rather than sent a closing message it would never get to. The session
            // hears `closed` when the connection's reader ends.
            if let Some(out) = outboxes.remove(&conn) {
                tracing::warn!(conn, "dropping a connection that does not keep up");
                out.cut_off_too_slow();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callsync_core::{DeviceId, DeviceKind, Role, Timestamp, UserId};
    use callsync_session::Authenticated;

    fn member(tenant: &TenantId) -> Authenticated {
        Authenticated {
            tenant: tenant.clone(),
            user: UserId::new("owner@acme.example").unwrap(),
            role: Role::Owner,
            device: DeviceId::new("desk-1").unwrap(),
            kind: DeviceKind::Desk,
            expires_at: Timestamp::from_millis(i64::MAX / 2),
        }
    }

    /// Opens a connection on `hub` and waits for its first frame (`peer`).
    fn join(hub: &mpsc::Sender<DriverInput>, tenant: &TenantId, gauge: &Gauge) -> Option<Outgoing> {
        let (queue, mut out) = mpsc::channel(16);
        let (cut_off, _) = tokio::sync::watch::channel(None);
        hub.blocking_send(DriverInput::Open {
            conn: 1,
            member: member(tenant),
            cursor: None,
            out: Outbox {
                queue,
                cut_off,
                started: Arc::default(),
                gauge: gauge.for_connection(),
            },
        })
        .ok()?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(item) = out.try_recv() {
                return Some(item);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    fn hubs_for(tenant: &TenantId, db: PathBuf) -> Arc<Hubs> {
        drop(Store::open(&db).unwrap());
        let plugins = Arc::new(
            callsync_plugin_host::PluginHost::new(callsync_plugin_host::Limits::default(), None)
                .unwrap(),
        );
        Hubs::start(
            HubsConfig {
                db_path: db,
                settings: HubSettings {
                    start_limit_ms: 60_000,
                    max_customers: 10,
                    cache_docs: 16,
                    server_device: DeviceId::new("server").unwrap(),
                    server_user: UserId::new("system").unwrap(),
                    server_actor: automerge::ActorId::random(),
                    epoch: "e".to_owned(),
                    max_held: callsync_session::hub::MAX_HELD_MESSAGES,
                },
                rules: Arc::new(crate::rules::HostRules {
                    plugins,
                    shares: Arc::default(),
                }),
            },
            vec![tenant.clone()],
        )
        .unwrap()
    }

    #[test]
    fn a_tenants_hub_takes_at_most_its_queue_of_inputs_and_then_pushes_back() {
        let dir = tempfile::tempdir().unwrap();
        let tenant = TenantId::new("acme").unwrap();
        let hubs = hubs_for(&tenant, dir.path().join("callsync.sqlite"));
        let hub = hubs.sender(&tenant).unwrap();
        // Hold the write turn: the hub's first batch (a join, which writes the
        // tenant's first configuration) waits for it, so nothing more is taken.
        let turn = hubs.turns.take();
        let (queue, _out) = mpsc::channel(16);
        let (cut_off, _) = tokio::sync::watch::channel(None);
        hub.blocking_send(DriverInput::Open {
            conn: 1,
            member: member(&tenant),
            cursor: None,
            out: Outbox {
                queue,
                cut_off,
                started: Arc::default(),
                gauge: hubs.gauge(),
            },
        })
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while hub.capacity() < INPUT_QUEUE && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut taken = 0;
        while hub
            .try_send(DriverInput::Session(HubInput::Closed { conn: 99 }))
            .is_ok()
        {
            taken += 1;
            assert!(taken <= INPUT_QUEUE, "the queue took more than its bound");
        }
        assert_eq!(taken, INPUT_QUEUE);
        // The turn released, the hub drains its queue and takes inputs again.
        drop(turn);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while hub.capacity() < INPUT_QUEUE && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(hub.capacity(), INPUT_QUEUE);
        hubs.shutdown();
    }

    #[test]
    fn a_hub_whose_thread_died_is_started_again_by_the_tenants_next_connection() {
        let dir = tempfile::tempdir().unwrap();
        let tenant = TenantId::new("acme").unwrap();
        let hubs = hubs_for(&tenant, dir.path().join("callsync.sqlite"));
        let first = hubs.sender(&tenant).unwrap();
        assert!(matches!(
            join(&first, &tenant, &hubs.gauge),
            Some(Outgoing::Frame(_))
        ));
        first.blocking_send(DriverInput::Crash).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !first.is_closed() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(first.is_closed(), "the crashed hub's queue is closed");
        // The next connection of the tenant starts a new hub, which answers.
        let second = hubs.sender(&tenant).unwrap();
        assert!(!second.is_closed());
        assert!(matches!(
            join(&second, &tenant, &hubs.gauge),
            Some(Outgoing::Frame(_))
        ));
        hubs.shutdown();
    }
}
