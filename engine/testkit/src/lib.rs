//! A seeded, simulated network of customer-document replicas, and fixture helpers.
//!
//! Owns: [`SimNetwork`] — a server, desks and phones, each holding a replica of one
//! customer document, linked server-to-device (a star, as in production), syncing
//! with the real Automerge sync protocol over simulated ordered links. A fixed seed
//! picks which link delivers next, so any interleaving can be replayed; a virtual
//! clock (with per-device skew) stamps every event; links can be cut and healed.
//! Does not own: the rules or derivation (the core does both; this only drives it).
//!
//! Use: build with [`SimNetwork::seeded`], add peers, act through the device
//! methods (`desk_requests_call`, `phone_starts`, …), call
//! [`SimNetwork::run_until_quiescent`], then compare [`SimNetwork::call_state`]
//! across peers.
#![warn(missing_docs, unreachable_pub)]

use std::collections::VecDeque;

use automerge::sync::{self, SyncDoc};
use callsync_core::{
    ActorId, CallEvent, CallId, CallView, CoreError, Customer, CustomerDoc, CustomerId, DeviceId,
    DeviceKind, EventId, EventKind, NewCustomer, PhoneEntry, PhoneNumber, ResultCatalog,
    ResultOption, ResultTypeId, RuleContext, SavedResultFields, Stamp, TenantId, Timestamp, UserId,
};

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

struct Peer {
    device: DeviceId,
    kind: DeviceKind,
    user: UserId,
    doc: CustomerDoc,
    clock_skew_ms: i64,
    next_event: u64,
}

struct Link {
    server: PeerId,
    device: PeerId,
    up: bool,
    /// Sync state kept by the server about the device, and by the device about the server.
    server_state: sync::State,
    device_state: sync::State,
    /// Encoded sync messages in flight, per direction (ordered, like a QUIC stream).
    to_device: VecDeque<Vec<u8>>,
    to_server: VecDeque<Vec<u8>>,
}

/// A seeded simulation of one customer's replicas.
pub struct SimNetwork {
    rng: SplitMix64,
    now: Timestamp,
    peers: Vec<Peer>,
    links: Vec<Link>,
    catalog: ResultCatalog,
    start_limit_ms: i64,
    next_call: u64,
    delivered: u64,
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

fn id<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("fixture id: {e}"))
}

impl SimNetwork {
    /// A network with one server holding [`sample_customer`], seeded for delivery order.
    pub fn seeded(seed: u64) -> Self {
        let doc = CustomerDoc::create(
            &sample_customer(),
            START,
            ActorId::from(b"server".as_slice()),
        )
        .unwrap_or_else(|e| panic!("sample customer: {e}"));
        let server = Peer {
            device: id(DeviceId::new("server")),
            kind: DeviceKind::Server,
            user: id(UserId::new("system")),
            doc,
            clock_skew_ms: 0,
            next_event: 0,
        };
        Self {
            rng: SplitMix64::new(seed),
            now: START,
            peers: vec![server],
            links: Vec::new(),
            catalog: ResultCatalog::standard(),
            start_limit_ms: callsync_core::time::DEFAULT_START_LIMIT_MS,
            next_call: 0,
            delivered: 0,
        }
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
        let peer = self.peers.len();
        let device = id(DeviceId::new(format!("{}-{peer}", kind.as_str())));
        let mut doc = self.peers[0].doc.clone();
        doc.automerge_mut()
            .set_actor(ActorId::from(device.as_str().as_bytes()));
        self.peers.push(Peer {
            device,
            kind,
            user: id(UserId::new(user)),
            doc,
            clock_skew_ms: 0,
            next_event: 0,
        });
        self.links.push(Link {
            server: 0,
            device: peer,
            up: true,
            server_state: sync::State::new(),
            device_state: sync::State::new(),
            to_device: VecDeque::new(),
            to_server: VecDeque::new(),
        });
        peer
    }

    /// The device id of a peer.
    pub fn device_id(&self, peer: PeerId) -> &DeviceId {
        &self.peers[peer].device
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
        self.peers[peer].clock_skew_ms = ms;
    }

    /// Sets the start limit the rules use (default 1 minute).
    pub fn set_start_limit(&mut self, ms: i64) {
        self.start_limit_ms = ms;
    }

    /// Cuts the link between a device and the server; what is in flight is lost.
    pub fn partition(&mut self, a: PeerId, b: PeerId) {
        if let Some(link) = self.link_between(a, b) {
            link.up = false;
            link.to_device.clear();
            link.to_server.clear();
        }
    }

    /// Restores a cut link. Both sides start a new sync session, keeping only
    /// what they know they share (as after a reconnect).
    pub fn heal(&mut self, a: PeerId, b: PeerId) {
        if let Some(link) = self.link_between(a, b) {
            link.up = true;
            link.server_state = reset(&link.server_state);
            link.device_state = reset(&link.device_state);
        }
    }

    fn link_between(&mut self, a: PeerId, b: PeerId) -> Option<&mut Link> {
        self.links
            .iter_mut()
            .find(|l| (l.server == a && l.device == b) || (l.server == b && l.device == a))
    }

    /// Syncs over every live link until nothing is left to send, delivering one
    /// message at a time from a link picked by the seed. Returns how many messages
    /// were delivered.
    pub fn run_until_quiescent(&mut self) -> u64 {
        let before = self.delivered;
        for _round in 0..100_000 {
            self.generate_all();
            let busy: Vec<(usize, bool)> = self
                .links
                .iter()
                .enumerate()
                .filter(|(_, l)| l.up)
                .flat_map(|(i, l)| {
                    let mut v = Vec::new();
                    if !l.to_device.is_empty() {
                        v.push((i, true));
                    }
                    if !l.to_server.is_empty() {
                        v.push((i, false));
                    }
                    v
                })
                .collect();
            if busy.is_empty() {
                return self.delivered - before;
            }
            let (link, to_device) = busy[self.rng.below(busy.len())];
            self.deliver(link, to_device);
        }
        panic!("the simulated network did not settle in 100,000 steps");
    }

    fn generate_all(&mut self) {
        for i in 0..self.links.len() {
            if !self.links[i].up {
                continue;
            }
            let (server, device) = (self.links[i].server, self.links[i].device);
            loop {
                let link = &mut self.links[i];
                let msg = self.peers[server]
                    .doc
                    .automerge_mut()
                    .sync()
                    .generate_sync_message(&mut link.server_state);
                match msg {
                    Some(m) => link.to_device.push_back(m.encode()),
                    None => break,
                }
            }
            loop {
                let link = &mut self.links[i];
                let msg = self.peers[device]
                    .doc
                    .automerge_mut()
                    .sync()
                    .generate_sync_message(&mut link.device_state);
                match msg {
                    Some(m) => link.to_server.push_back(m.encode()),
                    None => break,
                }
            }
        }
    }

    fn deliver(&mut self, link: usize, to_device: bool) {
        let l = &mut self.links[link];
        let (bytes, peer, state) = if to_device {
            (l.to_device.pop_front(), l.device, &mut l.device_state)
        } else {
            (l.to_server.pop_front(), l.server, &mut l.server_state)
        };
        let Some(bytes) = bytes else { return };
        let msg = sync::Message::decode(&bytes).unwrap_or_else(|e| panic!("sync message: {e}"));
        self.peers[peer]
            .doc
            .automerge_mut()
            .sync()
            .receive_sync_message(state, msg)
            .unwrap_or_else(|e| panic!("receive sync message: {e}"));
        self.delivered += 1;
    }

    fn stamp(&mut self, peer: PeerId) -> (EventId, Stamp) {
        let p = &mut self.peers[peer];
        p.next_event += 1;
        let event = id(EventId::new(format!("{}-e{}", p.device, p.next_event)));
        let stamp = Stamp {
            at: self.now.plus_millis(p.clock_skew_ms),
            device: p.device.clone(),
            device_kind: p.kind,
            user: p.user.clone(),
        };
        (event, stamp)
    }

    /// Records an event as `peer` would, through the core's rules.
    pub fn record(
        &mut self,
        peer: PeerId,
        call: &CallId,
        kind: EventKind,
    ) -> Result<CallView, CoreError> {
        let (event_id, stamp) = self.stamp(peer);
        let event = CallEvent {
            id: event_id,
            call: call.clone(),
            stamp,
            kind,
        };
        let ctx = RuleContext {
            catalog: &self.catalog,
            start_limit_ms: self.start_limit_ms,
            other_open_calls: &[],
        };
        self.peers[peer].doc.record(event, &ctx)
    }

    /// The desk asks `phone` to dial `number` (recording on). Panics if refused:
    /// scenarios that expect a refusal use [`SimNetwork::record`].
    pub fn desk_requests_call(&mut self, desk: PeerId, number: &str, phone: PeerId) -> CallId {
        self.next_call += 1;
        let call = id(CallId::new(format!("call-{}", self.next_call)));
        let kind = EventKind::Requested {
            destination: PhoneNumber::parse(number).unwrap_or_else(|e| panic!("{e}")),
            origin: self.peers[phone].device.clone(),
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

    /// The server records `expired` on every request past its start limit, as the
    /// server's timer will. Returns the calls it expired.
    pub fn server_expires_due(&mut self) -> Vec<CallId> {
        let Ok(customer) = self.peers[0].doc.customer() else {
            return Vec::new();
        };
        let due: Vec<CallId> = customer
            .calls
            .iter()
            .filter(|c| c.is_past_start_limit(self.now, self.start_limit_ms))
            .map(|c| c.call.clone())
            .collect();
        due.into_iter()
            .filter(|call| self.record(0, call, EventKind::Expired).is_ok())
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
        };
        self.record(peer, call, EventKind::ResultSaved(fields))
    }

    /// The call's state on `peer`.
    pub fn call_state(&self, peer: PeerId, call: &CallId) -> Option<CallView> {
        self.peers[peer].doc.call(call)
    }

    /// The customer on `peer`.
    pub fn customer(&self, peer: PeerId) -> Customer {
        self.peers[peer]
            .doc
            .customer()
            .unwrap_or_else(|e| panic!("customer: {e}"))
    }

    /// The customer on `peer` derived from scratch (a fresh load of its saved
    /// bytes), to check the replica's kept derivation against.
    pub fn fresh_customer(&mut self, peer: PeerId) -> Customer {
        let bytes = self.peers[peer].doc.save();
        let doc = CustomerDoc::load(&bytes, ActorId::from(b"fresh".as_slice()))
            .unwrap_or_else(|e| panic!("load: {e}"));
        doc.customer().unwrap_or_else(|e| panic!("customer: {e}"))
    }

    /// The heads of `peer`'s replica (equal heads: identical documents).
    pub fn heads(&mut self, peer: PeerId) -> Vec<automerge::ChangeHash> {
        let mut heads = self.peers[peer].doc.heads();
        heads.sort();
        heads
    }

    /// A peer's replica, for tests that play a misbehaving device.
    pub fn doc_mut(&mut self, peer: PeerId) -> &mut CustomerDoc {
        &mut self.peers[peer].doc
    }

    /// All peers.
    pub fn peers(&self) -> std::ops::Range<PeerId> {
        0..self.peers.len()
    }
}

fn reset(state: &sync::State) -> sync::State {
    sync::State::decode(&state.encode()).unwrap_or_else(|_| sync::State::new())
}
