//! A seeded, simulated network running the real protocol, and fixture helpers.
//!
//! Owns: [`SimNetwork`] — a server and desks and phones linked server-to-device (a
//! star, as in production), each peer the real session of `callsync-session` (the
//! server's [`HubSession`] with its per-connection [`ServerConnection`] rules, each
//! device's [`ClientSession`]) over in-memory storage with real transactions
//! ([`mem`]). Messages travel over simulated ordered links; a fixed seed picks
//! which link delivers next, so any interleaving can be replayed. A virtual clock
//! (with per-device skew) stamps every event and drives the hub's wake-ups (start
//! limits expire with no real sleep); links can be cut and healed; any peer can
//! crash (its memory is dropped, its storage kept) and restart, the server even in
//! the middle of a batch. Every change goes through admission, rejection, the
//! catch-up cursor and reconnects, as on the wire.
//! Does not own: the rules, derivation or the protocol (the core and the sessions;
//! this only drives them).
//!
//! Use: build with [`SimNetwork::seeded`], add peers, act through the device
//! methods (`desk_requests_call`, `phone_starts`, …), call
//! [`SimNetwork::run_until_quiescent`], then compare [`SimNetwork::call_state`]
//! across peers.
#![warn(missing_docs, unreachable_pub)]

pub mod mem;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use callsync_core::tenant_config::{PreparedInstall, Ruleset, TenantConfig, TenantConfigDoc};
use callsync_core::wire::{Message, RpcCall, RpcResult};
use callsync_core::{
    ActorId, CallEvent, CallId, CallView, CoreError, Customer, CustomerDoc, CustomerId, DeviceId,
    DeviceKind, EventId, EventKind, NewCustomer, PhoneEntry, PhoneNumber, ResultCatalog,
    ResultOption, ResultTypeId, Role, RuleContext, SavedResultFields, Stamp, TenantId, Timestamp,
    UserId,
};
use callsync_session::client::ClientEvent;
use callsync_session::connection::{ServerConnection, Step};
use callsync_session::device::actions::{ActionError, ResultForm, SaveOutcome};
use callsync_session::device::{
    DeviceFailure, DeviceInput, DeviceSession, DeviceSettings, Identity, Phase as LinkPhase,
    ServerClock, StopReason, Unsent,
};
use callsync_session::hub::{HubEvent, HubInput, HubSession, HubSettings, MAX_HELD_MESSAGES, Room};
use callsync_session::rules::{PluginAllowance, ResultRules, Verified};
use callsync_session::{Authenticated, ConnId};

use crate::mem::{DeviceDisk, MemDoc, ServerDisk};

/// A peer of the simulated network.
pub type PeerId = usize;

/// The customer every simulation starts with.
pub const CUSTOMER: &str = "cus-0001";
/// Its main number.
pub const NUMBER: &str = "03-1234-5678";
/// Its mobile number.
pub const MOBILE: &str = "090-1111-2222";
/// The virtual clock's start: 2026-11-24 10:00 JST, a Tuesday.
pub const START: Timestamp = Timestamp::from_millis(1_795_482_000_000);

/// SplitMix64: a tiny, well-known seeded generator; enough to pick interleavings.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// The customer every simulation starts with.
pub fn sample_customer() -> NewCustomer {
    let phone = |label: &str, n: &str| PhoneEntry {
        label: label.to_owned(),
        number: PhoneNumber::parse(n).unwrap_or_else(|e| panic!("fixture number: {e}")),
    };
    NewCustomer {
        tenant: id(TenantId::new("tenant-a")),
        id: id(CustomerId::new(CUSTOMER)),
        company: "株式会社さくら物産".to_owned(),
        contact: "佐藤 健一".to_owned(),
        owner: id(UserId::new("rep@a.example")),
        phones: vec![phone("代表", NUMBER), phone("携帯", MOBILE)],
    }
}

/// A customer document exactly as schema 1 (the build before schema 2) created
/// it: the same root keys, the flat `events` map, no `calls` map, `schema` 1.
pub fn schema_one_customer(new: &NewCustomer, at: Timestamp, actor: ActorId) -> CustomerDoc {
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ObjType, ROOT, ScalarValue};
    let build = || -> Result<AutoCommit, automerge::AutomergeError> {
        let mut doc = AutoCommit::new().with_actor(actor);
        doc.put(ROOT, "schema", ScalarValue::Uint(1))?;
        doc.put(ROOT, "tenant", new.tenant.as_str())?;
        doc.put(ROOT, "customer", new.id.as_str())?;
        doc.put(ROOT, "created_at", ScalarValue::Timestamp(at.as_millis()))?;
        let profile = doc.put_object(ROOT, "profile", ObjType::Map)?;
        doc.put(&profile, "company", new.company.trim())?;
        doc.put(&profile, "contact", new.contact.trim())?;
        doc.put(&profile, "owner", new.owner.as_str())?;
        let phones = doc.put_object(ROOT, "phones", ObjType::Map)?;
        for phone in &new.phones {
            let entry = doc.put_object(&phones, phone.number.digits(), ObjType::Map)?;
            doc.put(&entry, "label", phone.label.trim())?;
            doc.put(&entry, "number", phone.number.as_written())?;
        }
        doc.put_object(ROOT, "events", ObjType::Map)?;
        doc.commit_with(
            automerge::transaction::CommitOptions::default().with_time(at.as_millis() / 1000),
        );
        Ok(doc)
    };
    let doc = build().unwrap_or_else(|e| panic!("schema 1 fixture: {e}"));
    CustomerDoc::from_automerge(doc).unwrap_or_else(|e| panic!("schema 1 fixture: {e}"))
}

fn id<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("fixture id: {e}"))
}

/// The tenant of every simulation.
pub const TENANT: &str = "tenant-a";
/// The server's Automerge actor in every simulation.
const SERVER_ACTOR: &[u8] = b"server";

/// The simulated server's result rules: the standard result types, no plugin to
/// re-run (the simulation's results carry no decision record), and a cost per
/// re-checked result a test may set, charged to the tenant's allowance of plugin
/// time as the server's rules do.
#[derive(Default)]
struct SimRules {
    cost_ms: std::sync::atomic::AtomicU64,
    /// Every re-checked decision fails (a device lying about its plugin).
    refuse: std::sync::atomic::AtomicBool,
    allowance: std::sync::Mutex<Option<PluginAllowance>>,
}

impl SimRules {
    fn allowance(&self) -> std::sync::MutexGuard<'_, Option<PluginAllowance>> {
        self.allowance
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ResultRules for SimRules {
    fn has_time(&self, _tenant: &TenantId, now: Timestamp) -> bool {
        self.allowance()
            .get_or_insert_with(|| PluginAllowance::new(now))
            .has_time(now)
    }

    fn charge(&self, _tenant: &TenantId, spent: std::time::Duration) {
        if let Some(allowance) = self.allowance().as_mut() {
            allowance.charge(spent);
        }
    }

    fn verify(
        &self,
        _config: &TenantConfig,
        _doc: &TenantConfigDoc,
        _fields: &SavedResultFields,
        _saved_at: Timestamp,
    ) -> Verified {
        let refuse = self.refuse.load(std::sync::atomic::Ordering::Relaxed);
        Verified {
            outcome: if refuse {
                Err(callsync_session::rules::RuleFailure {
                    code: "plugin-mismatch",
                    detail: "the simulation refuses every decision".to_owned(),
                })
            } else {
                Ok(())
            },
            spent: std::time::Duration::from_millis(
                self.cost_ms.load(std::sync::atomic::Ordering::Relaxed),
            ),
        }
    }

    fn standard_install(
        &self,
        _tenant: &TenantId,
        _now: Timestamp,
    ) -> Result<PreparedInstall, String> {
        let ruleset = Ruleset {
            plugin: callsync_core::plugin::PluginRef {
                id: "standard".to_owned(),
                version: "1.0.0".to_owned(),
                hash: callsync_core::plugin::ContentHash::from_bytes([7; 32]),
            },
            settings: Vec::new(),
            holidays: Vec::new(),
            time_zone: "Asia/Tokyo".to_owned(),
            result_types: ResultCatalog::standard().types().to_vec(),
        };
        Ok(PreparedInstall {
            id: callsync_core::plugin::ContentHash::from_bytes([9; 32]),
            ruleset,
            component: vec![0],
        })
    }
}

/// A device of the simulation.
struct DevicePeer {
    device: DeviceId,
    kind: DeviceKind,
    user: UserId,
    actor: ActorId,
    disk: DeviceDisk,
    role: Role,
    clock_skew_ms: i64,
    /// The device session (its memory: lost in a crash, rebuilt from the disk).
    session: DeviceSession<MemDoc>,
    /// The device's randomness.
    rng: callsync_session::device::SplitMix64,
    /// Everything the session told its user, in order.
    events: Vec<ClientEvent>,
    /// The link to the server.
    link: Link,
}

/// A device's connection to the server.
#[derive(Default)]
struct Link {
    /// The network lets them talk.
    up: bool,
    /// A connection is open.
    open: Option<Connection>,
}

struct Connection {
    conn: ConnId,
    server: ServerConnection,
    /// The hub knows this connection.
    in_hub: bool,
    to_server: VecDeque<Message>,
    to_device: VecDeque<Message>,
    /// The server sent its closing message: the connection ends once it arrives.
    closing: bool,
}

/// One message delivered, for tests that count what a reconnect costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The device at the other end from the server.
    pub device: PeerId,
    /// Towards the server (else towards the device).
    pub to_server: bool,
    /// The message's kind (`sync`, `peer`, `join`, …).
    pub kind: &'static str,
    /// The document it is about, if any.
    pub document: Option<CustomerId>,
    /// For `peer`: the documents the server listed as changed since the cursor.
    pub listed: Vec<CustomerId>,
}

/// The simulated network: a server running the hub session and devices running
/// client sessions.
pub struct SimNetwork {
    rng: SplitMix64,
    now: Timestamp,
    server_disk: ServerDisk,
    hub: HubSession<MemDoc>,
    /// The hub's result rules (kept across a server crash, like the plugin host).
    rules: Arc<SimRules>,
    /// The server crashes during its next batch, before committing it.
    crash_in_next_batch: bool,
    /// Verdicts of plugin re-checks, waiting to reach the hub.
    verdicts: VecDeque<HubInput>,
    /// The verdicts wait until a test lets them go.
    verdicts_held: bool,
    devices: Vec<DevicePeer>,
    catalog: ResultCatalog,
    start_limit_ms: i64,
    /// Messages the hub holds for their verdicts at once.
    max_held: usize,
    /// The numbers the devices' sessions run by.
    device_settings: DeviceSettings,
    /// Session tokens the server knows, and whose they are.
    tokens: BTreeMap<String, PeerId>,
    next_token: u64,
    /// `decide-result` is answered `busy`.
    decide_busy: bool,
    /// Connections to the server fail at once (it is down, the link is up).
    unreachable: bool,
    /// The server reads nothing and answers nothing.
    silent: bool,
    next_call: u64,
    next_conn: ConnId,
    server_events: u64,
    delivered: u64,
    log: Vec<Delivered>,
    /// Event keys each device saw acknowledged by the server.
    acknowledged: BTreeSet<String>,
    /// Event keys of [`CUSTOMER`] that were ever committed on the server.
    committed: BTreeSet<String>,
    /// What each peer keeps parsed between reads (merged from its storage), so
    /// reads exercise the core's incremental derivation.
    views: RefCell<BTreeMap<(PeerId, CustomerId), CustomerDoc>>,
}

fn event_keys(doc: &CustomerDoc) -> BTreeSet<String> {
    doc.events()
        .0
        .into_iter()
        .map(|e| format!("{}/{}", e.call, e.id))
        .collect()
}

fn listed_in(message: &Message) -> Vec<CustomerId> {
    match message {
        Message::Peer { changed, .. } => changed.clone(),
        _ => Vec::new(),
    }
}

fn document_of(message: &Message) -> Option<CustomerId> {
    match message {
        Message::Sync { document_id, .. }
        | Message::Request { document_id, .. }
        | Message::DocUnavailable { document_id }
        | Message::Rejected { document_id, .. } => Some(document_id.clone()),
        _ => None,
    }
}

impl SimNetwork {
    /// A network with one server holding [`sample_customer`], seeded for delivery order.
    pub fn seeded(seed: u64) -> Self {
        let mut doc = CustomerDoc::create(&sample_customer(), START, ActorId::from(SERVER_ACTOR))
            .unwrap_or_else(|e| panic!("sample customer: {e}"));
        let mut server_disk = ServerDisk::default();
        server_disk
            .insert(&mut doc)
            .unwrap_or_else(|e| panic!("sample customer: {e}"));
        let start_limit_ms = callsync_core::time::DEFAULT_START_LIMIT_MS;
        let rules = Arc::new(SimRules::default());
        Self {
            rng: SplitMix64::new(seed),
            now: START,
            hub: Self::new_hub(start_limit_ms, MAX_HELD_MESSAGES, rules.clone()),
            rules,
            server_disk,
            crash_in_next_batch: false,
            verdicts: VecDeque::new(),
            verdicts_held: false,
            max_held: MAX_HELD_MESSAGES,
            devices: Vec::new(),
            catalog: ResultCatalog::standard(),
            start_limit_ms,
            device_settings: DeviceSettings {
                // Reconnect at once unless a test asks for timing: the virtual
                // clock moves only when a test moves it.
                backoff_min_ms: 0,
                backoff_max_ms: 0,
                start_limit_ms,
                ..DeviceSettings::default()
            },
            tokens: BTreeMap::new(),
            next_token: 0,
            decide_busy: false,
            unreachable: false,
            silent: false,
            next_call: 0,
            next_conn: 1,
            server_events: 0,
            delivered: 0,
            log: Vec::new(),
            acknowledged: BTreeSet::new(),
            committed: BTreeSet::new(),
            views: RefCell::new(BTreeMap::new()),
        }
    }

    fn new_hub(start_limit_ms: i64, max_held: usize, rules: Arc<SimRules>) -> HubSession<MemDoc> {
        HubSession::new(
            id(TenantId::new(TENANT)),
            HubSettings {
                start_limit_ms,
                max_customers: 100_000,
                cache_docs: 64,
                server_device: id(DeviceId::new("server")),
                server_user: id(UserId::new("system")),
                server_actor: ActorId::from(SERVER_ACTOR),
                epoch: "sim".to_owned(),
                max_held,
            },
            rules,
        )
    }

    /// Makes each result the server re-checks cost `ms` of the tenant's plugin
    /// time (250 ms a second, 2 s in a burst), so a test can run it out.
    pub fn set_plugin_cost_ms(&mut self, ms: u64) {
        self.rules
            .cost_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Makes every decision the server re-checks fail from now on (`false`:
    /// hold again).
    pub fn set_decisions_refused(&mut self, refused: bool) {
        self.rules
            .refuse
            .store(refused, std::sync::atomic::Ordering::Relaxed);
    }

    /// Holds the server's plugin re-check answers back (`true`) or lets them
    /// reach the hub again (`false`): while held, a message saving a result
    /// waits for its verdict however long the network runs.
    pub fn hold_verdicts(&mut self, held: bool) {
        self.verdicts_held = held;
    }

    /// Makes the server hold at most `n` messages for their verdicts at once
    /// (the server restarts with it).
    pub fn set_max_held(&mut self, n: usize) {
        self.max_held = n;
        self.crash(0);
    }

    /// Hands `message` to the server as if `peer` had sent it on its open
    /// connection (a device that does not follow the protocol).
    pub fn inject_to_server(&mut self, peer: PeerId, message: Message) {
        if let Some(open) = self.devices[peer - 1].link.open.as_mut() {
            open.to_server.push_back(message);
        }
    }

    /// Verdicts of the server's plugin re-checks not yet handed to the hub.
    pub fn verdicts_waiting(&self) -> usize {
        self.verdicts.len()
    }

    /// The server.
    pub fn server(&self) -> PeerId {
        0
    }

    /// Adds a desk (browser) signed in as `user`, linked to the server and already
    /// holding the customer.
    pub fn desk(&mut self, user: &str) -> PeerId {
        self.add_peer(DeviceKind::Desk, user)
    }

    /// Adds a phone of `user`, linked to the server and already holding the customer.
    pub fn phone(&mut self, user: &str) -> PeerId {
        self.add_peer(DeviceKind::Phone, user)
    }

    fn add_peer(&mut self, kind: DeviceKind, user: &str) -> PeerId {
        let peer = self.devices.len() + 1;
        let device = id(DeviceId::new(format!("{}-{peer}", kind.as_str())));
        let actor = ActorId::from(device.as_str().as_bytes());
        let user = id(UserId::new(user));
        self.server_disk
            .register(device.clone(), kind, user.clone(), actor.clone());
        let mut disk = DeviceDisk::default();
        let token = self.issue_token(peer);
        let identity = Identity {
            tenant: id(TenantId::new(TENANT)),
            user: user.clone(),
            role: Role::User,
            device: device.clone(),
            kind,
            actor: actor.to_hex_string(),
            token: Some(token),
            expires_at: self.now.plus_millis(365 * 24 * 3_600_000),
            revoke: Vec::new(),
            stopped: None,
        };
        // Logged in online a moment ago: the login's answer gave the clock.
        let clock = ServerClock::learn(self.now, self.now, self.now);
        let mut tx = disk.begin();
        for customer in self.customers() {
            self.server_disk.subscribe(device.clone(), customer.clone());
            if let Some(mut doc) = self.server_disk.document(&customer) {
                callsync_session::client::ClientStore::insert(&mut tx, &mut doc)
                    .unwrap_or_else(|e| panic!("seed device: {e}"));
            }
        }
        let session =
            DeviceSession::logged_in(self.device_settings.clone(), &mut tx, identity, clock)
                .unwrap_or_else(|e| panic!("log in: {e}"));
        tx.commit().unwrap_or_else(|e| panic!("seed device: {e}"));
        self.devices.push(DevicePeer {
            device,
            kind,
            user,
            actor,
            disk,
            role: Role::User,
            clock_skew_ms: 0,
            session,
            rng: callsync_session::device::SplitMix64::new(peer as u64 ^ self.rng.next_u64()),
            events: Vec::new(),
            link: Link {
                up: true,
                open: None,
            },
        });
        self.drive(peer, |s, now, _, _| {
            s.start(now);
            Ok::<(), DeviceFailure>(())
        })
        .unwrap_or_else(|e| panic!("start: {e}"));
        peer
    }

    /// A new session token for `peer`, known to the server.
    fn issue_token(&mut self, peer: PeerId) -> String {
        self.next_token += 1;
        let token = format!("token-{peer}-{}", self.next_token);
        self.tokens.insert(token.clone(), peer);
        token
    }

    /// Every customer the server holds.
    pub fn customers(&self) -> Vec<CustomerId> {
        self.server_disk.customer_ids()
    }

    /// The server creates `n` more customers (like [`sample_customer`]) and
    /// subscribes every device to them; devices receive them when they next sync.
    pub fn add_customers(&mut self, n: usize) -> Vec<CustomerId> {
        let mut added = Vec::new();
        for i in 0..n {
            let mut new = sample_customer();
            new.id = id(CustomerId::new(format!(
                "cus-extra-{:04}",
                self.customers().len() + i
            )));
            let mut doc = CustomerDoc::create(&new, self.now, ActorId::from(SERVER_ACTOR))
                .unwrap_or_else(|e| panic!("customer: {e}"));
            self.server_disk
                .insert(&mut doc)
                .unwrap_or_else(|e| panic!("customer: {e}"));
            for d in &self.devices {
                self.server_disk.subscribe(d.device.clone(), new.id.clone());
            }
            added.push(new.id);
        }
        added
    }

    /// Gives a device's member another role (every member starts as a `user`);
    /// the server sees it from the device's next connection.
    pub fn set_role(&mut self, peer: PeerId, role: Role) {
        self.devices[peer - 1].role = role;
        self.drop_link(peer, "the server restarted the session");
    }

    /// The device id of a peer.
    pub fn device_id(&self, peer: PeerId) -> &DeviceId {
        &self.devices[peer - 1].device
    }

    /// Moves the virtual clock forward.
    pub fn advance(&mut self, ms: i64) {
        self.now = self.now.plus_millis(ms);
    }

    /// The virtual time (the server's clock).
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// Sets how far a device's clock runs ahead (positive) or behind (negative).
    pub fn set_clock_skew(&mut self, peer: PeerId, ms: i64) {
        self.devices[peer - 1].clock_skew_ms = ms;
    }

    /// Sets the start limit the rules and the server use (default 1 minute). The
    /// server restarts with it.
    pub fn set_start_limit(&mut self, ms: i64) {
        self.start_limit_ms = ms;
        self.device_settings.start_limit_ms = ms;
        for d in &mut self.devices {
            d.session.settings_mut().start_limit_ms = ms;
        }
        self.crash(0);
    }

    /// Cuts the link between a device and the server: the connection drops and
    /// what is in flight is lost.
    pub fn partition(&mut self, a: PeerId, b: PeerId) {
        let device = a.max(b);
        if device == 0 {
            return;
        }
        self.devices[device - 1].link.up = false;
        self.drop_link(device, "the network is gone");
    }

    /// Restores a cut link; the device hears the network is back and reconnects
    /// (with its cursor).
    pub fn heal(&mut self, a: PeerId, b: PeerId) {
        let device = a.max(b);
        if device == 0 {
            return;
        }
        self.devices[device - 1].link.up = true;
        self.input(device, DeviceInput::NetworkUp);
    }

    /// A peer crashes and restarts: its memory (sessions, caches, what was in
    /// flight) is gone, its storage stays. Devices reconnect when the network next
    /// runs.
    pub fn crash(&mut self, peer: PeerId) {
        if peer == 0 {
            self.hub = Self::new_hub(self.start_limit_ms, self.max_held, self.rules.clone());
            self.verdicts.clear();
            for peer in 1..=self.devices.len() {
                if self.devices[peer - 1].link.open.take().is_some() {
                    self.lost(peer, "the server went away");
                }
            }
        } else {
            // The device's memory is gone: the hub hears the connection close and
            // the session is rebuilt from what its disk holds.
            if let Some(open) = self.devices[peer - 1].link.open.take()
                && open.in_hub
            {
                self.hub_batch(vec![HubInput::Closed { conn: open.conn }]);
            }
            let settings = self.device_settings.clone();
            let d = &mut self.devices[peer - 1];
            let mut tx = d.disk.begin();
            d.session = DeviceSession::restore(settings, &mut tx)
                .unwrap_or_else(|e| panic!("restart: {e}"))
                .unwrap_or_else(|| panic!("restart: nobody logged in"));
            drop(tx);
            self.drive(peer, |s, now, _, _| {
                s.start(now);
                Ok::<(), DeviceFailure>(())
            })
            .unwrap_or_else(|e| panic!("start: {e}"));
        }
    }

    /// Sets the devices' reconnect backoff (the simulation reconnects at once
    /// by default), for tests of reconnect timing in virtual time.
    pub fn set_backoff(&mut self, min_ms: i64, max_ms: i64) {
        self.device_settings.backoff_min_ms = min_ms;
        self.device_settings.backoff_max_ms = max_ms;
        for d in &mut self.devices {
            d.session.settings_mut().backoff_min_ms = min_ms;
            d.session.settings_mut().backoff_max_ms = max_ms;
        }
    }

    /// Makes every new connection to the server fail at once (the server is
    /// down; the devices' networks are up).
    pub fn set_server_unreachable(&mut self, unreachable: bool) {
        self.unreachable = unreachable;
    }

    /// Makes the server read nothing and answer nothing (messages to it vanish).
    pub fn set_server_silent(&mut self, silent: bool) {
        self.silent = silent;
    }

    /// Makes the simulated server answer every `decide-result` with `busy`.
    pub fn set_decide_busy(&mut self, busy: bool) {
        self.decide_busy = busy;
    }

    /// The server crashes in the middle of its next batch, before the commit:
    /// nothing of that batch is stored or sent.
    pub fn crash_server_in_next_batch(&mut self) {
        self.crash_in_next_batch = true;
    }

    /// Ends a device's connection: the hub hears it close, the client session goes.
    fn disconnect(&mut self, peer: PeerId) {
        let Some(open) = self.devices[peer - 1].link.open.take() else {
            return;
        };
        if open.in_hub {
            self.hub_batch(vec![HubInput::Closed { conn: open.conn }]);
        }
    }

    /// The connection ends under the device: the hub hears it close and the
    /// device's session is told.
    fn drop_link(&mut self, peer: PeerId, reason: &str) {
        if self.devices[peer - 1].link.open.is_some() {
            self.disconnect(peer);
            self.lost(peer, reason);
        }
    }

    /// Tells a device's session its connection is gone.
    fn lost(&mut self, peer: PeerId, reason: &str) {
        self.input(
            peer,
            DeviceInput::Disconnected {
                reason: reason.to_owned(),
            },
        );
    }

    /// The device's own clock: the virtual time plus its skew.
    fn device_now(&self, peer: PeerId) -> Timestamp {
        self.now.plus_millis(self.devices[peer - 1].clock_skew_ms)
    }

    /// Runs one call on a device's session in one transaction, as a host does:
    /// commit, then carry out the output (close, send, connect, events). A call
    /// that fails, or a commit that fails, releases nothing and drops the
    /// connection.
    fn drive<T, E>(
        &mut self,
        peer: PeerId,
        call: impl FnOnce(
            &mut DeviceSession<MemDoc>,
            Timestamp,
            &mut callsync_session::device::SplitMix64,
            &mut mem::DeviceTx<'_>,
        ) -> Result<T, E>,
    ) -> Result<T, E> {
        let now = self.device_now(peer);
        let d = &mut self.devices[peer - 1];
        let mut tx = d.disk.begin();
        let result = call(&mut d.session, now, &mut d.rng, &mut tx);
        let committed = match &result {
            Ok(_) => tx.commit().is_ok(),
            Err(_) => {
                drop(tx);
                true
            }
        };
        let out = d.session.take_output();
        self.release(peer, committed, out);
        result
    }

    /// Opens a connection for a device whose link is up: a new client session
    /// sends `join` with its saved cursor.
    /// Carries out a committed call's output (or, if the commit failed, drops
    /// it and the connection).
    fn release(
        &mut self,
        peer: PeerId,
        committed: bool,
        out: callsync_session::device::DeviceOutput,
    ) {
        if !committed {
            // Nothing the call did is on disk: nothing of it leaves the device.
            self.devices[peer - 1]
                .events
                .push(ClientEvent::Disconnected {
                    reason: "storage failed".to_owned(),
                    retry_at: None,
                });
            self.drop_link(peer, "storage failed");
            return;
        }
        for event in &out.events {
            if let ClientEvent::Acknowledged { customer } = event
                && let Some(doc) = self.devices[peer - 1]
                    .disk
                    .document(customer, self.devices[peer - 1].actor.clone())
            {
                self.acknowledged.extend(event_keys(&doc));
            }
        }
        self.devices[peer - 1].events.extend(out.events);
        if out.close {
            self.disconnect(peer);
        }
        if let Some(open) = self.devices[peer - 1].link.open.as_mut() {
            open.to_server.extend(out.send);
        }
        if out.connect {
            self.disconnect(peer);
            if self.devices[peer - 1].link.up && !self.unreachable {
                self.open_link(peer);
                self.input(peer, DeviceInput::Connected);
            } else {
                self.input(
                    peer,
                    DeviceInput::Disconnected {
                        reason: "no network".to_owned(),
                    },
                );
            }
        }
    }

    /// Hands `peer`'s session one input, as its host would.
    fn input(&mut self, peer: PeerId, input: DeviceInput) {
        let now = self.device_now(peer);
        let d = &mut self.devices[peer - 1];
        let mut tx = d.disk.begin();
        let committed = match d.session.handle(now, &mut d.rng, &mut tx, input) {
            Ok(()) => tx.commit().is_ok(),
            Err(_) => {
                drop(tx);
                true
            }
        };
        let out = d.session.take_output();
        self.release(peer, committed, out);
    }

    fn open_link(&mut self, peer: PeerId) {
        let now = self.now;
        let conn = self.next_conn;
        self.next_conn += 1;
        self.devices[peer - 1].link.open = Some(Connection {
            conn,
            server: ServerConnection::new(now, 10_000),
            in_hub: false,
            to_server: VecDeque::new(),
            to_device: VecDeque::new(),
            closing: false,
        });
    }

    /// Runs one hub batch over `inputs` (then the hub's own work: catch-up,
    /// expiries), commits it and puts what it sends on the links. Plugin
    /// re-checks it asks for are run at once; their verdicts wait in
    /// `verdicts` until the seed picks them, like any message.
    fn hub_batch(&mut self, inputs: Vec<HubInput>) {
        let now = self.now;
        let room = |_: ConnId| Room::UNLIMITED;
        let mut tx = self.server_disk.begin();
        for input in inputs {
            let output = self
                .hub
                .handle_event(now, &mut tx, &room, HubEvent::Input(input));
            self.verdicts
                .extend(output.verifications.iter().map(|v| HubInput::Verified {
                    ticket: v.ticket,
                    verdict: v.run(),
                }));
            if output.end_batch {
                break;
            }
        }
        let crash = std::mem::take(&mut self.crash_in_next_batch);
        if crash {
            tx.crash_at_commit();
        }
        let released = self
            .hub
            .handle_event(now, &mut tx, &room, HubEvent::EndOfBatch);
        drop(tx);
        if crash {
            self.crash(0);
            return;
        }
        if released.failed.is_none() {
            // What the server now holds of the scenarios' customer (the others are
            // there for cost tests; loading them all after every batch would be
            // quadratic).
            if let Some(doc) = self.server_disk.document(&id(CustomerId::new(CUSTOMER))) {
                self.committed.extend(event_keys(&doc));
            }
        }
        self.verdicts
            .extend(released.verifications.iter().map(|v| HubInput::Verified {
                ticket: v.ticket,
                verdict: v.run(),
            }));
        for (conn, message) in released.sends {
            if let Some(peer) = self.peer_of(conn)
                && let Some(open) = self.devices[peer - 1].link.open.as_mut()
            {
                open.to_device.push_back(message);
            }
        }
        for (conn, syncs) in released.unsolicited {
            if let Some(peer) = self.peer_of(conn)
                && let Some(open) = self.devices[peer - 1].link.open.as_mut()
            {
                open.server.server_started(syncs);
            }
        }
        for (conn, body) in released.closes {
            if let Some(peer) = self.peer_of(conn)
                && let Some(open) = self.devices[peer - 1].link.open.as_mut()
            {
                open.to_device.push_back(Message::Error(body));
                open.closing = true;
            }
        }
    }

    fn peer_of(&self, conn: ConnId) -> Option<PeerId> {
        self.devices
            .iter()
            .position(|d| d.link.open.as_ref().is_some_and(|o| o.conn == conn))
            .map(|i| i + 1)
    }

    /// Runs the network until nothing is left to send: devices whose link is up
    /// connect, the hub's due wake-ups run (catch-up slices, expiries at the
    /// virtual time), and one message at a time is delivered from a link picked by
    /// the seed. Returns how many messages were delivered.
    pub fn run_until_quiescent(&mut self) -> u64 {
        let before = self.delivered;
        for _round in 0..200_000 {
            if !self.step() && self.hub.next_wake().is_none_or(|at| at > self.now) {
                return self.delivered - before;
            }
        }
        panic!("the simulated network did not settle in 200,000 steps");
    }

    /// Delivers at most `n` messages (connecting devices and running the hub's
    /// due wake-ups as [`Self::run_until_quiescent`] does), so a test can cut or
    /// crash in the middle of an exchange.
    pub fn run_steps(&mut self, n: usize) {
        for _ in 0..n {
            if !self.step() {
                return;
            }
        }
    }

    /// Connects devices whose link is up, runs a due wake-up of the hub, and
    /// delivers one message from a link picked by the seed; false when no message
    /// was waiting.
    fn step(&mut self) -> bool {
        let mut worked = false;
        for peer in 1..=self.devices.len() {
            // A device cut off waits for the network: its timers run once the
            // link is back (a heal reads as the network coming back).
            if !self.devices[peer - 1].link.up {
                continue;
            }
            let due = self.devices[peer - 1]
                .session
                .poll_timeout()
                .is_some_and(|at| at <= self.device_now(peer));
            if due {
                worked = true;
                let _ = self.drive(peer, |s, now, rng, tx| s.handle_timeout(now, rng, tx));
            }
        }
        if self.hub.next_wake().is_some_and(|at| at <= self.now) {
            self.hub_batch(Vec::new());
        }
        let mut busy: Vec<(PeerId, bool)> = Vec::new();
        for (i, d) in self.devices.iter().enumerate() {
            if let Some(open) = &d.link.open {
                if !open.to_device.is_empty() {
                    busy.push((i + 1, false));
                }
                if !open.to_server.is_empty() {
                    busy.push((i + 1, true));
                }
            }
        }
        if !self.verdicts.is_empty() && !self.verdicts_held {
            // The server's plugin re-check answers (peer 0: the server itself).
            busy.push((0, true));
        }
        if busy.is_empty() {
            return worked;
        }
        let (peer, to_server) = busy[self.rng.below(busy.len())];
        if peer == 0 {
            let verdicts = self.verdicts.drain(..).collect();
            self.hub_batch(verdicts);
        } else if to_server {
            self.deliver_to_server(peer);
        } else {
            self.deliver_to_device(peer);
        }
        true
    }

    fn authenticated(&self, peer: PeerId) -> Authenticated {
        let d = &self.devices[peer - 1];
        Authenticated {
            tenant: id(TenantId::new(TENANT)),
            user: d.user.clone(),
            role: d.role,
            device: d.device.clone(),
            kind: d.kind,
            expires_at: self.now.plus_millis(365 * 24 * 3_600_000),
        }
    }

    fn deliver_to_server(&mut self, peer: PeerId) {
        let now = self.now;
        let member = self.authenticated(peer);
        let Some(open) = self.devices[peer - 1].link.open.as_mut() else {
            return;
        };
        let Some(message) = open.to_server.pop_front() else {
            return;
        };
        if self.silent {
            return;
        }
        self.delivered += 1;
        self.log.push(Delivered {
            device: peer,
            to_server: true,
            kind: message.kind(),
            document: document_of(&message),
            listed: listed_in(&message),
        });
        let conn = open.conn;
        let mut step = open.server.receive(now, message);
        if let Step::Recheck { .. } = step {
            step = open.server.rechecked(now, Ok(member.clone()));
        }
        match step {
            Step::Authenticate { token, cursor, .. } => {
                let outcome = if self.tokens.get(&token) == Some(&peer) {
                    Ok(member.clone())
                } else {
                    Err(callsync_core::wire::Refusal::InvalidSession.body())
                };
                let Some(open) = self.devices[peer - 1].link.open.as_mut() else {
                    return;
                };
                if let Err(body) = open.server.joined(now, outcome) {
                    open.to_device.push_back(Message::Error(body));
                    open.closing = true;
                    return;
                }
                open.in_hub = true;
                self.hub_batch(vec![HubInput::Open {
                    conn,
                    member,
                    cursor,
                }]);
            }
            Step::Logout { token } => {
                self.tokens.remove(&token);
                if let Some(open) = self.devices[peer - 1].link.open.as_mut() {
                    open.to_device.push_back(Message::LoggedOut);
                    open.closing = true;
                }
            }
            Step::Decide { id, call } => {
                let result = self.decide(&call);
                if let Some(open) = self.devices[peer - 1].link.open.as_mut() {
                    open.to_device.push_back(Message::Reply { id, result });
                }
            }
            Step::Hub(message) => self.hub_batch(vec![HubInput::Received { conn, message }]),
            Step::Reply(message) => {
                if let Some(open) = self.devices[peer - 1].link.open.as_mut() {
                    open.to_device.push_back(message);
                }
            }
            Step::Refuse(body) => {
                if let Some(open) = self.devices[peer - 1].link.open.as_mut() {
                    open.to_device.push_back(Message::Error(body));
                    open.closing = true;
                }
            }
            Step::Leave => self.drop_link(peer, "left"),
            Step::Continue => {}
            other => panic!("the simulation has no use for {other:?}"),
        }
    }

    /// The simulated server's `decide-result`: the checks every server makes,
    /// then the pick as made, with the type's default status, under a decision
    /// record of the simulation's rule set (its rules verify everything). A test
    /// may make it answer `busy` instead.
    fn decide(&self, call: &RpcCall) -> RpcResult {
        use callsync_core::wire::{DecidedResult, Refusal};
        if let Err(refusal) = callsync_session::connection::check_decide_request(self.now, call) {
            return RpcResult::Refused(refusal.body());
        }
        if self.decide_busy {
            return RpcResult::Refused(Refusal::Busy.body());
        }
        let RpcCall::DecideResult {
            pick,
            ended_at,
            attempt,
            ..
        } = call
        else {
            return RpcResult::Refused(Refusal::ServerTrouble.body());
        };
        let option = match (pick.option, pick.at) {
            (callsync_core::OptionKind::None, _) => ResultOption::None,
            (callsync_core::OptionKind::Recall, Some(at)) => ResultOption::Recall { at },
            (callsync_core::OptionKind::Restriction, Some(until)) => {
                ResultOption::Restriction { until }
            }
            (_, None) => {
                return RpcResult::Refused(
                    Refusal::ResultNotDecided {
                        reason: "time-required".to_owned(),
                        en: "Pick a time.".to_owned(),
                        ja: "日時を選んでください。".to_owned(),
                    }
                    .body(),
                );
            }
        };
        let customer_status = pick.customer_status.clone().or_else(|| {
            self.catalog
                .get(&pick.result_type)
                .and_then(|t| t.default_status.clone())
        });
        RpcResult::Decided(DecidedResult {
            option,
            customer_status,
            decision: callsync_core::plugin::DecisionRecord {
                ruleset: callsync_core::plugin::ContentHash::from_bytes([9; 32]),
                plugin: callsync_core::plugin::PluginRef {
                    id: "standard".to_owned(),
                    version: "1.0.0".to_owned(),
                    hash: callsync_core::plugin::ContentHash::from_bytes([7; 32]),
                },
                picked_option: pick.option,
                picked_at: pick.at,
                picked_status: pick.customer_status.clone(),
                call_ended_at: *ended_at,
                attempt: *attempt,
                reason: "the simulation's rules keep the pick".to_owned(),
                needs_review: None,
            },
        })
    }

    fn deliver_to_device(&mut self, peer: PeerId) {
        let d = &mut self.devices[peer - 1];
        let Some(open) = d.link.open.as_mut() else {
            return;
        };
        let Some(message) = open.to_device.pop_front() else {
            return;
        };
        self.delivered += 1;
        self.log.push(Delivered {
            device: peer,
            to_server: false,
            kind: message.kind(),
            document: document_of(&message),
            listed: listed_in(&message),
        });
        let closing = open.closing && open.to_device.is_empty();
        let conn = open.conn;
        let _ = self.drive(peer, |s, now, rng, tx| {
            s.handle(now, rng, tx, DeviceInput::Received(message))
        });
        // The server closes after its last word: the same connection, if the
        // session has not dropped it already.
        if closing
            && self.devices[peer - 1]
                .link
                .open
                .as_ref()
                .is_some_and(|o| o.conn == conn)
        {
            self.drop_link(peer, "the server closed the connection");
        }
    }

    fn server_stamp(&mut self) -> (EventId, Stamp) {
        self.server_events += 1;
        let event = id(EventId::new(format!("server-e{}", self.server_events)));
        let stamp = Stamp {
            at: self.now,
            device: id(DeviceId::new("server")),
            device_kind: DeviceKind::Server,
            user: id(UserId::new("system")),
            device_at: None,
        };
        (event, stamp)
    }

    /// Records an event on [`CUSTOMER`] as `peer` would, through the core's rules.
    pub fn record(
        &mut self,
        peer: PeerId,
        call: &CallId,
        kind: EventKind,
    ) -> Result<CallView, CoreError> {
        self.record_in(peer, &id(CustomerId::new(CUSTOMER)), call, kind)
    }

    /// Records an event on `customer` as `peer` would, through the core's rules.
    pub fn record_in(
        &mut self,
        peer: PeerId,
        customer: &CustomerId,
        call: &CallId,
        kind: EventKind,
    ) -> Result<CallView, CoreError> {
        if peer == 0 {
            let (event_id, stamp) = self.server_stamp();
            let event = CallEvent {
                id: event_id,
                call: call.clone(),
                stamp,
                kind,
            };
            let catalog = self.catalog.clone();
            let start_limit_ms = self.start_limit_ms;
            return self.with_doc_in(peer, customer, |doc| {
                let ctx = RuleContext {
                    catalog: &catalog,
                    start_limit_ms,
                    other_open_calls: &[],
                };
                doc.record(event, &ctx)
            });
        }
        // A device acts through its session: stamped on the server's clock as
        // the session knows it, checked, saved with the outbox, sent if online.
        self.act_in(peer, customer, call, kind)
            .map_err(|e| match e {
                ActionError::Refused(e) => e,
                other => panic!("the device could not act: {other}"),
            })
    }

    /// Records an event on `customer` through device `peer`'s session, with
    /// whatever the session says if it refuses.
    pub fn act_in(
        &mut self,
        peer: PeerId,
        customer: &CustomerId,
        call: &CallId,
        kind: EventKind,
    ) -> Result<CallView, ActionError> {
        let customer = customer.clone();
        self.drive(peer, |s, now, rng, tx| {
            s.call_event(now, rng, tx, Some(&customer), call, kind)
        })
    }

    /// Runs `f` on `peer`'s stored copy of [`CUSTOMER`] and stores what it changed,
    /// as a local command would (a device's change goes to its outbox and is
    /// offered to the server at once if connected; the server's is pushed to the
    /// subscribers). For tests that play a misbehaving replica, too.
    pub fn with_doc<T>(&mut self, peer: PeerId, f: impl FnOnce(&mut CustomerDoc) -> T) -> T {
        self.with_doc_in(peer, &id(CustomerId::new(CUSTOMER)), f)
    }

    /// [`Self::with_doc`] on `customer`.
    pub fn with_doc_in<T>(
        &mut self,
        peer: PeerId,
        customer: &CustomerId,
        f: impl FnOnce(&mut CustomerDoc) -> T,
    ) -> T {
        if peer == 0 {
            let mut doc = self
                .server_disk
                .document(customer)
                .unwrap_or_else(|| panic!("the server has no {customer}"));
            let mut doc = CustomerDoc::load(&doc.save(), ActorId::from(SERVER_ACTOR))
                .unwrap_or_else(|e| panic!("load: {e}"));
            let before = doc.heads();
            let result = f(&mut doc);
            if doc.heads() != before {
                self.server_disk
                    .save(&mut doc)
                    .unwrap_or_else(|e| panic!("server save: {e}"));
                self.hub_batch(vec![HubInput::Changed {
                    customer: customer.clone(),
                }]);
            }
            return result;
        }
        let d = &mut self.devices[peer - 1];
        let mut doc = d
            .disk
            .document(customer, d.actor.clone())
            .unwrap_or_else(|| panic!("{} does not hold {customer}", d.device));
        let before = doc.heads();
        let result = f(&mut doc);
        if doc.heads() != before {
            d.disk
                .save_local(&mut doc)
                .unwrap_or_else(|e| panic!("device save: {e}"));
            // Written by another process: the running session hears of it.
            let _ = self.drive(peer, |s, now, rng, tx| {
                s.handle(now, rng, tx, DeviceInput::LocalChanged)
            });
        }
        result
    }

    /// The desk asks `phone` to dial `number` (recording on). Panics if refused:
    /// scenarios that expect a refusal use [`SimNetwork::record`].
    pub fn desk_requests_call(&mut self, desk: PeerId, number: &str, phone: PeerId) -> CallId {
        self.next_call += 1;
        let call = id(CallId::new(format!("call-{}", self.next_call)));
        let kind = EventKind::Requested {
            destination: PhoneNumber::parse(number).unwrap_or_else(|e| panic!("{e}")),
            origin: self.devices[phone - 1].device.clone(),
            recording: true,
        };
        self.record(desk, &call, kind)
            .unwrap_or_else(|e| panic!("request refused: {e}"));
        call
    }

    /// The desk presses Cancel call.
    pub fn desk_cancels(&mut self, desk: PeerId, call: &CallId) -> Result<CallView, CoreError> {
        self.record(desk, call, EventKind::Cancelled)
    }

    /// The phone presses Start call.
    pub fn phone_starts(&mut self, phone: PeerId, call: &CallId) -> Result<CallView, CoreError> {
        self.record(phone, call, EventKind::Started)
    }

    /// The phone ends the call after `duration_secs`.
    pub fn phone_ends(
        &mut self,
        phone: PeerId,
        call: &CallId,
        duration_secs: u32,
    ) -> Result<CallView, CoreError> {
        self.record(phone, call, EventKind::PhoneEnded { duration_secs })
    }

    /// The desk presses the red end button.
    pub fn desk_ends(&mut self, desk: PeerId, call: &CallId) -> Result<CallView, CoreError> {
        self.record(desk, call, EventKind::BrowserEnded)
    }

    /// A call the desk requests for the phone, the phone starts, and both end,
    /// each step synced: awaiting its result on every replica.
    pub fn call_awaiting_result(&mut self, desk: PeerId, phone: PeerId) -> CallId {
        let call = self.desk_requests_call(desk, NUMBER, phone);
        self.run_until_quiescent();
        self.phone_starts(phone, &call)
            .unwrap_or_else(|e| panic!("start: {e}"));
        self.advance(10_000);
        self.phone_ends(phone, &call, 10)
            .unwrap_or_else(|e| panic!("phone end: {e}"));
        self.run_until_quiescent();
        self.desk_ends(desk, &call)
            .unwrap_or_else(|e| panic!("desk end: {e}"));
        self.run_until_quiescent();
        call
    }

    /// Runs the hub's expiry at the virtual time now (as its wake-up would) and
    /// returns the calls it expired. Their pushes go out with the next run.
    pub fn server_expires_due(&mut self) -> Vec<CallId> {
        let customer = id(CustomerId::new(CUSTOMER));
        let phases = |net: &Self| -> BTreeMap<CallId, callsync_core::Phase> {
            net.server_disk
                .document(&customer)
                .and_then(|d| d.customer().ok())
                .map(|c| c.calls.iter().map(|v| (v.call.clone(), v.phase)).collect())
                .unwrap_or_default()
        };
        let before = phases(self);
        self.hub_batch(Vec::new());
        phases(self)
            .into_iter()
            .filter(|(call, phase)| {
                *phase == callsync_core::Phase::Expired
                    && before.get(call) != Some(&callsync_core::Phase::Expired)
            })
            .map(|(call, _)| call)
            .collect()
    }

    /// Saves a result of type `result_type` with `option` from `peer`.
    pub fn save_result(
        &mut self,
        peer: PeerId,
        call: &CallId,
        result_type: &str,
        option: ResultOption,
    ) -> Result<CallView, CoreError> {
        let result_type = ResultTypeId::new(result_type)?;
        // The form proposes the type's default status, as the UI does.
        let customer_status = self
            .catalog
            .get(&result_type)
            .and_then(|t| t.default_status.clone());
        let fields = SavedResultFields {
            result_type,
            option,
            customer_status,
            memo: String::new(),
            decision: None,
            kept_as_picked: None,
        };
        self.record(peer, call, EventKind::ResultSaved(fields))
    }

    /// `peer`'s stored copy of `customer`, loaded afresh.
    fn stored(&self, peer: PeerId, customer: &CustomerId) -> Option<CustomerDoc> {
        if peer == 0 {
            self.server_disk.document(customer)
        } else {
            let d = &self.devices[peer - 1];
            d.disk.document(customer, d.actor.clone())
        }
    }

    /// What `peer` holds of `customer`, read through a copy kept between reads and
    /// merged with what is stored (so the core's incremental derivation is what
    /// answers; a copy that no longer matches storage, e.g. after a rejected change
    /// was forgotten, is replaced).
    fn view(&self, peer: PeerId, customer: &CustomerId) -> Option<CustomerDoc> {
        let mut stored = self.stored(peer, customer)?;
        let mut views = self.views.borrow_mut();
        let key = (peer, customer.clone());
        let view = match views.remove(&key) {
            Some(mut view) => {
                if view.merge(&mut stored).is_ok() && view.heads() == stored.heads() {
                    view
                } else {
                    stored
                }
            }
            None => stored,
        };
        views.insert(key, view.clone());
        Some(view)
    }

    /// The call's state on `peer` (what it has stored).
    pub fn call_state(&self, peer: PeerId, call: &CallId) -> Option<CallView> {
        self.view(peer, &id(CustomerId::new(CUSTOMER)))?.call(call)
    }

    /// The customer on `peer` (what it has stored).
    pub fn customer(&self, peer: PeerId) -> Customer {
        self.view(peer, &id(CustomerId::new(CUSTOMER)))
            .unwrap_or_else(|| panic!("peer {peer} does not hold the customer"))
            .customer()
            .unwrap_or_else(|e| panic!("customer: {e}"))
    }

    /// The customer on `peer` derived from scratch (a fresh load of its stored
    /// bytes), to check the kept derivation against.
    pub fn fresh_customer(&mut self, peer: PeerId) -> Customer {
        self.stored(peer, &id(CustomerId::new(CUSTOMER)))
            .unwrap_or_else(|| panic!("peer {peer} does not hold the customer"))
            .customer()
            .unwrap_or_else(|e| panic!("customer: {e}"))
    }

    /// The heads of `peer`'s stored copy of [`CUSTOMER`] (equal heads: identical
    /// documents).
    pub fn heads(&mut self, peer: PeerId) -> Vec<automerge::ChangeHash> {
        self.heads_of(peer, &id(CustomerId::new(CUSTOMER)))
    }

    /// The heads of `peer`'s stored copy of `customer` (empty if it holds none).
    pub fn heads_of(&mut self, peer: PeerId, customer: &CustomerId) -> Vec<automerge::ChangeHash> {
        let mut heads = self
            .stored(peer, customer)
            .map(|mut d| d.heads())
            .unwrap_or_default();
        heads.sort();
        heads
    }

    /// All peers.
    pub fn peers(&self) -> std::ops::Range<PeerId> {
        0..self.devices.len() + 1
    }

    /// Every message delivered so far, in order.
    pub fn delivered(&self) -> &[Delivered] {
        &self.log
    }

    /// Event keys (`call/event`) the server acknowledged to a device.
    pub fn acknowledged(&self) -> &BTreeSet<String> {
        &self.acknowledged
    }

    /// Event keys of [`CUSTOMER`] that were ever committed on the server.
    pub fn ever_committed(&self) -> &BTreeSet<String> {
        &self.committed
    }

    /// Event keys of `peer`'s stored copy of [`CUSTOMER`].
    pub fn event_keys(&self, peer: PeerId) -> BTreeSet<String> {
        self.stored(peer, &id(CustomerId::new(CUSTOMER)))
            .map(|d| event_keys(&d))
            .unwrap_or_default()
    }

    /// Everything `peer`'s session told its user so far, in order.
    pub fn events(&self, peer: PeerId) -> &[ClientEvent] {
        &self.devices[peer - 1].events
    }

    /// Takes (and forgets) what `peer`'s session told its user so far.
    pub fn take_events(&mut self, peer: PeerId) -> Vec<ClientEvent> {
        std::mem::take(&mut self.devices[peer - 1].events)
    }

    /// Where `peer`'s link stands, as its session says.
    pub fn phase(&self, peer: PeerId) -> LinkPhase {
        self.devices[peer - 1].session.phase()
    }

    /// Why `peer`'s session stopped, if it did.
    pub fn stop_reason(&self, peer: PeerId) -> Option<StopReason> {
        self.devices[peer - 1].session.stop_reason()
    }

    /// `peer`'s session (to read its identity, clock, retry time).
    pub fn session(&self, peer: PeerId) -> &DeviceSession<MemDoc> {
        &self.devices[peer - 1].session
    }

    /// `peer`'s screens ask the server something; the answer is a `reply` event.
    pub fn ask(&mut self, peer: PeerId, call: RpcCall) -> u64 {
        self.drive(peer, |s, now, _, _| s.ask(now, call))
            .unwrap_or_else(|e| panic!("ask: {e}"))
    }

    /// The rep of `peer` saves the result form for `call` through the device
    /// session's result flow (the server's rules decide when online).
    pub fn save_result_form(
        &mut self,
        peer: PeerId,
        call: &CallId,
        form: ResultForm,
    ) -> Result<SaveOutcome, ActionError> {
        self.drive(peer, |s, now, rng, tx| {
            s.save_result(now, rng, tx, None, call, form, None)
        })
    }

    /// `peer`'s screen starts the customer list over, with a search.
    pub fn list_customers(&mut self, peer: PeerId, query: Option<&str>) -> u64 {
        let query = query.map(str::to_owned);
        self.drive(peer, |s, now, _, _| s.list_customers(now, query))
            .unwrap_or_else(|e| panic!("list: {e}"))
    }

    /// `peer`'s screen asks the next page of the list.
    pub fn more_customers(&mut self, peer: PeerId) -> Option<u64> {
        self.drive(peer, |s, now, _, _| s.more_customers(now))
            .unwrap_or_else(|e| panic!("more: {e}"))
    }

    /// The customer list `peer`'s screen shows.
    pub fn customer_listing(
        &self,
        peer: PeerId,
    ) -> &callsync_session::device::listing::CustomerListing {
        self.devices[peer - 1].session.customer_listing()
    }

    /// What a logout of `peer` would leave unsent.
    pub fn unsent(&mut self, peer: PeerId) -> Unsent {
        self.drive(peer, |s, _, _, tx| s.unsent(tx))
            .unwrap_or_else(|e| panic!("unsent: {e}"))
    }

    /// The user of `peer` logs out.
    pub fn logout(&mut self, peer: PeerId) {
        self.drive(peer, |s, now, rng, tx| s.logout(now, rng, tx))
            .unwrap_or_else(|e| panic!("logout: {e}"));
    }

    /// The same user logs in again on `peer` (same device id and actor, a new
    /// token), and the device goes online.
    pub fn login_again(&mut self, peer: PeerId) {
        let token = self.issue_token(peer);
        let settings = self.device_settings.clone();
        let expires_at = self.now.plus_millis(365 * 24 * 3_600_000);
        let role = self.devices[peer - 1].role;
        let now = self.device_now(peer);
        let server_now = self.now;
        let d = &mut self.devices[peer - 1];
        let mut identity = d.session.identity().clone();
        identity.token = Some(token);
        identity.expires_at = expires_at;
        identity.role = role;
        identity.stopped = None;
        let clock = ServerClock::learn(now, server_now, now);
        let mut tx = d.disk.begin();
        d.session = DeviceSession::logged_in(settings, &mut tx, identity, clock)
            .unwrap_or_else(|e| panic!("log in: {e}"));
        tx.commit().unwrap_or_else(|e| panic!("log in: {e}"));
        self.drive(peer, |s, now, _, _| {
            s.start(now);
            Ok::<(), DeviceFailure>(())
        })
        .unwrap_or_else(|e| panic!("start: {e}"));
    }

    /// The server ends every session of `peer`'s user (a password reset, a
    /// revoked contract): their tokens stop working and their connections close
    /// with `reason`.
    pub fn end_sessions(&mut self, peer: PeerId, reason: callsync_core::wire::Refusal) {
        let user = self.devices[peer - 1].user.clone();
        let peers: Vec<PeerId> = (1..=self.devices.len())
            .filter(|p| self.devices[p - 1].user == user)
            .collect();
        self.tokens.retain(|_, p| !peers.contains(p));
        self.hub_batch(vec![HubInput::EndSessions {
            user,
            reason: reason.body(),
        }]);
    }

    /// Makes `peer`'s disk refuse every write from now on (or accept them again).
    pub fn set_disk_failing(&mut self, peer: PeerId, failing: bool) {
        self.devices[peer - 1].disk.set_failing(failing);
    }

    /// Documents in `peer`'s outbox (a device's changes the server has not
    /// confirmed).
    pub fn outbox(&self, peer: PeerId) -> Vec<CustomerId> {
        self.devices[peer - 1]
            .disk
            .outbox()
            .iter()
            .cloned()
            .collect()
    }
}

/// A mono 16-bit PCM WAV of `secs` seconds of a `hertz` tone at `rate`
/// samples a second, built in one go (a recording's stand-in for tests and
/// benches: a long file written sample by sample takes a debug build long).
pub fn tone_wav(secs: u32, rate: u32, hertz: f64) -> Vec<u8> {
    let second: Vec<u8> = (0..rate)
        .flat_map(|i| {
            let t = f64::from(i) / f64::from(rate);
            (((t * hertz * std::f64::consts::TAU).sin() * 8_000.0) as i16).to_le_bytes()
        })
        .collect();
    let data = second.len() as u32 * secs;
    let mut bytes = Vec::with_capacity(44 + data as usize);
    bytes.extend_from_slice(b"RIFF");
    bytes.extend_from_slice(&(36 + data).to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    bytes.extend_from_slice(&16u32.to_le_bytes());
    bytes.extend_from_slice(&1u16.to_le_bytes()); // PCM
    bytes.extend_from_slice(&1u16.to_le_bytes()); // mono
    bytes.extend_from_slice(&rate.to_le_bytes());
    bytes.extend_from_slice(&(rate * 2).to_le_bytes());
    bytes.extend_from_slice(&2u16.to_le_bytes());
    bytes.extend_from_slice(&16u16.to_le_bytes());
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&data.to_le_bytes());
    for _ in 0..secs {
        bytes.extend_from_slice(&second);
    }
    bytes
}
