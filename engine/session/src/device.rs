//! The device session: everything a phone, a page or the CLI's desk decides about
//! talking to the server, sans-IO, one implementation for every device kind.
//!
//! Owns: the connection's phases (down, waiting to retry, opening, joining,
//! online, stopped with a reason), reconnecting with capped exponential backoff
//! and jitter (the randomness passed in), the handshake's deadline, the server's
//! clock ([`ServerClock`], learnt at every join), requests to the server with
//! their tickets, deadlines and re-sending after a reconnect, the meaning of
//! every refusal ([`classify`]), the rep's actions stamped on the server's clock
//! (see [`actions`]), the result flow (decide on the server when online; the pick
//! as made, and why, otherwise), the ledger of local events the server has not
//! confirmed, and logout. The sync protocol itself runs in the
//! [`ClientSession`] this session holds while joined.
//! Does not own: sockets, timers, the clock, random numbers, storage or screens:
//! the host (`callsync-replica` over QUIC and SQLite; the page over WebTransport
//! and IndexedDB) carries them.
//!
//! # Call order
//! A host runs one [`DeviceSession`] per logged-in user of a device:
//! 1. [`login::LoginExchange`] on a connection of its own, then
//!    [`DeviceSession::logged_in`] (or [`DeviceSession::restore`] at start-up);
//! 2. [`DeviceSession::start`] to go online;
//! 3. for every thing that happens, the matching call: [`DeviceSession::handle`]
//!    with a [`DeviceInput`] (connected, a message, disconnected, local changes,
//!    the network back), [`DeviceSession::handle_timeout`] when
//!    [`DeviceSession::poll_timeout`] comes, an action, [`DeviceSession::ask`] or
//!    [`DeviceSession::logout`];
//! 4. after each call, the host commits the storage writes it made, and only
//!    then takes [`DeviceSession::take_output`]: closes and opens connections as
//!    it says, sends its messages in order, shows its events. A call that fails
//!    ([`DeviceFailure`]) made writes the host must roll back; its output then
//!    holds only the close.
//!
//! `now` is always the device's own wall clock; the session turns it into the
//! server's with the offset it learnt.
//!
//! # Embedding it in a new host
//! This is the API a native host (an Android app through bindings) embeds, as
//! the two hosts here do: implement [`DeviceStore`] over the device's database
//! (a transaction per call, committed before the output is carried out), carry
//! the bytes of [`DeviceOutput::send`] on the connection the session asked for,
//! keep one timer for [`DeviceSession::poll_timeout`], pass the wall clock and a
//! source of randomness ([`Entropy`]) into every call, and draw the events. The
//! page's engine (`clients/web/engine/src/replica.rs`) is the smallest example;
//! `callsync-replica`'s `SyncClient` is the one over QUIC and SQLite.

pub mod actions;
pub mod clock;
pub mod listing;
pub mod login;
pub mod refusal;
pub mod uploads;

use automerge::ActorId;
use callsync_core::wire::{ErrorBody, Message, RpcCall};
use callsync_core::{CallId, CustomerId, DeviceId, DeviceKind, Role, TenantId, Timestamp, UserId};
use callsync_core::{OpenCall, ResultCatalog};
use serde::{Deserialize, Serialize};

use crate::client::{ClientEvent, ClientFailure, ClientOutput, ClientSession, ClientStore, Device};
use crate::storage::{LoadedDoc, StorageError};

pub use clock::ServerClock;
pub use refusal::{Disposition, StopReason, classify, classify_code};

/// Where the device keeps its identity (see [`Identity`]).
pub const IDENTITY_KEY: &str = "device.identity";
/// Where the device keeps its estimate of the server's clock.
pub const CLOCK_KEY: &str = "device.clock";
/// Where the device keeps the ledger of its events the server has not confirmed.
pub const UNSENT_KEY: &str = "device.unsent";

/// Who a device is logged in as, kept in its storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    /// The tenant.
    pub tenant: TenantId,
    /// The user.
    pub user: UserId,
    /// Their role, as the server last said.
    pub role: Role,
    /// This device.
    pub device: DeviceId,
    /// Desk or phone.
    pub kind: DeviceKind,
    /// The Automerge actor it writes under (hex).
    pub actor: String,
    /// The session token; none once logged out or stopped for a new login.
    pub token: Option<String>,
    /// When the token stops working.
    pub expires_at: Timestamp,
    /// Tokens to end on the server at the next chance (logouts made offline).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoke: Vec<String>,
    /// Why the session stopped, kept so a restart shows the same screen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<StopReason>,
}

impl Identity {
    /// The Automerge actor.
    pub fn actor_id(&self) -> Result<ActorId, DeviceFailure> {
        ActorId::try_from(self.actor.as_str())
            .map_err(|e| DeviceFailure::Storage(StorageError::Unreadable(format!("actor: {e}"))))
    }
}

/// A device's storage, as the device session asks it: the sync's
/// [`ClientStore`] and a few things more. One write transaction per session call
/// (see the call order).
pub trait DeviceStore: ClientStore {
    /// A small value saved under `key`.
    fn setting(&mut self, key: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// Saves (or with `None`, deletes) a small value.
    fn set_setting(&mut self, key: &str, value: Option<&[u8]>) -> Result<(), StorageError>;
    /// Saves a document changed here and puts it in the outbox.
    fn save_local(&mut self, doc: &mut Self::Doc) -> Result<(), StorageError>;
    /// The user's calls on customers other than `except` that may block a new
    /// request (not completed, cancelled or expired).
    fn open_calls(
        &mut self,
        tenant: &TenantId,
        user: &UserId,
        except: &CustomerId,
    ) -> Result<Vec<OpenCall>, StorageError>;
    /// The customer a call belongs to, if this device holds it.
    fn customer_of_call(
        &mut self,
        tenant: &TenantId,
        call: &CallId,
    ) -> Result<Option<CustomerId>, StorageError>;
}

/// Random numbers, from the host (a system source, or a seeded one in tests).
pub trait Entropy {
    /// The next 64 random bits.
    fn next_u64(&mut self) -> u64;

    /// A number in `[0, 1]`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / ((1u64 << 53) - 1) as f64
    }

    /// `n` random bytes as lowercase hex.
    fn hex(&mut self, n: usize) -> String {
        let mut out = String::with_capacity(2 * n);
        let mut left = n;
        while left > 0 {
            let bits = self.next_u64().to_le_bytes();
            for b in bits.iter().take(left.min(8)) {
                out.push_str(&format!("{b:02x}"));
            }
            left = left.saturating_sub(8);
        }
        out
    }
}

/// SplitMix64: a small, well-known generator, for tests and for hosts that seed
/// it once from a system source.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
}

impl Entropy for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The numbers a device session runs by.
#[derive(Debug, Clone)]
pub struct DeviceSettings {
    /// The first wait after a failed connection, in ms.
    pub backoff_min_ms: i64,
    /// The longest wait between attempts, in ms.
    pub backoff_max_ms: i64,
    /// How long a connection may take to open and join, in ms.
    pub handshake_timeout_ms: i64,
    /// How long a request waits for its answer, in ms.
    pub request_timeout_ms: i64,
    /// How long a logout waits for unsent work to reach the server, in ms.
    pub logout_grace_ms: i64,
    /// How long a phone has to start a requested call, in ms (the server's).
    pub start_limit_ms: i64,
}

impl Default for DeviceSettings {
    fn default() -> Self {
        Self {
            backoff_min_ms: 500,
            backoff_max_ms: 30_000,
            handshake_timeout_ms: 15_000,
            request_timeout_ms: 10_000,
            logout_grace_ms: 10_000,
            start_limit_ms: callsync_core::time::DEFAULT_START_LIMIT_MS,
        }
    }
}

/// Where the device's link to the server stands, for the screens.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS), ts(rename = "LinkPhase"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Not connected, and not trying (before [`DeviceSession::start`]).
    Idle,
    /// Opening a connection and joining.
    Connecting,
    /// Joined: changes flow both ways.
    Online,
    /// Not connected; trying again at a set time. Work is kept here meanwhile.
    Offline,
    /// Stopped for a reason only the user can move on (see [`StopReason`]).
    Stopped,
}

/// Something that happened to a device, reported by its host.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // Inputs are moved in once and taken apart.
pub enum DeviceInput {
    /// The connection the session asked for is open.
    Connected,
    /// A message from the server.
    Received(Message),
    /// The connection failed or closed.
    Disconnected {
        /// Why, for the log and the screens.
        reason: String,
    },
    /// Another process wrote local changes (the CLI's commands beside `phone run`).
    LocalChanged,
    /// The network is back (the host heard it): try now rather than at the
    /// backoff's end.
    NetworkUp,
}

/// What the host is to do after a call, once its storage writes are committed.
#[derive(Debug, Default)]
pub struct DeviceOutput {
    /// Close the current connection (after sending `send`).
    pub close: bool,
    /// Open a new connection (after any close), then report
    /// [`DeviceInput::Connected`] or [`DeviceInput::Disconnected`].
    pub connect: bool,
    /// Messages for the server, in order.
    pub send: Vec<Message>,
    /// What to tell the user.
    pub events: Vec<ClientEvent>,
}

impl DeviceOutput {
    /// What may still be carried out of a call whose storage writes were rolled
    /// back: the close and the reconnect, and the words saying so; nothing it
    /// would have sent, and no event claiming a write that is gone.
    pub fn after_rollback(&mut self) {
        self.send.clear();
        self.events.retain(|e| {
            matches!(
                e,
                ClientEvent::Disconnected { .. } | ClientEvent::Stopped { .. }
            )
        });
    }
}

/// Why a session call failed. Its storage writes must be rolled back; the
/// session has dropped the connection and will retry.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeviceFailure {
    /// Local storage failed or held something unreadable.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The server broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl From<ClientFailure> for DeviceFailure {
    fn from(e: ClientFailure) -> Self {
        match e {
            ClientFailure::Storage(e) => Self::Storage(e),
            ClientFailure::Protocol(detail) => Self::Protocol(detail),
            ClientFailure::Refused(body) => Self::Protocol(body.to_string()),
        }
    }
}

/// The connection, as the session sees it.
enum Link<D> {
    /// None, and none planned.
    Down,
    /// None; the next attempt at `until`.
    Waiting { until: Timestamp },
    /// Asked the host for one at `since`.
    Opening { since: Timestamp, purpose: Purpose },
    /// `join` sent at `sent`.
    Joining {
        since: Timestamp,
        sent: Timestamp,
        client: ClientSession<D>,
    },
    /// Joined.
    Joined { client: ClientSession<D> },
    /// `logout` sent for a token, on a connection of its own.
    Revoking { since: Timestamp },
}

/// What a connection is opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Join,
    Revoke,
}

/// A request of the screens (or of the result flow) to the server.
struct Ask {
    ticket: u64,
    call: RpcCall,
    /// Its id on the current connection, once sent.
    sent: Option<(u64, Timestamp)>,
    purpose: actions::AskPurpose,
}

/// One local event the server has not confirmed yet.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnsentEvent {
    /// The customer.
    pub customer: CustomerId,
    /// The call.
    pub call: CallId,
    /// The event's kind (`result-saved`, `requested`, …).
    pub kind: String,
}

/// What a logout would leave unsent.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Unsent {
    /// Call results saved here the server has not confirmed.
    pub results: usize,
    /// Every event saved here the server has not confirmed.
    pub events: usize,
}

/// A device's side of the protocol for one logged-in user. `D` is the storage's
/// document.
pub struct DeviceSession<D> {
    settings: DeviceSettings,
    identity: Identity,
    actor: ActorId,
    clock: Option<ServerClock>,
    link: Link<D>,
    stopped: Option<StopReason>,
    /// Failed attempts since the last join.
    attempt: u32,
    asks: Vec<Ask>,
    /// Results whose question was lost with a connection, saved as picked at the
    /// next call that has the store.
    stranded: Vec<Ask>,
    next_ticket: u64,
    /// A logout is waiting for the unsent work to reach the server, until then.
    logging_out: Option<Timestamp>,
    catalog: Option<ResultCatalog>,
    listing: listing::CustomerListing,
    /// What each of the user's phones said last of the recordings it holds
    /// (while this device is connected: the server says it again at a join).
    phone_uploads: std::collections::BTreeMap<DeviceId, Vec<callsync_core::UploadStatus>>,
    out: DeviceOutput,
}

impl<D: LoadedDoc> DeviceSession<D> {
    /// The session saved in `store`, if a user is logged in there (a session that
    /// was stopped for a new login comes back stopped).
    pub fn restore<S: DeviceStore<Doc = D>>(
        settings: DeviceSettings,
        store: &mut S,
    ) -> Result<Option<Self>, DeviceFailure> {
        let Some(bytes) = store.setting(IDENTITY_KEY)? else {
            return Ok(None);
        };
        let identity: Identity = serde_json::from_slice(&bytes)
            .map_err(|e| StorageError::Unreadable(format!("saved identity: {e}")))?;
        let clock = match store.setting(CLOCK_KEY)? {
            Some(bytes) => serde_json::from_slice(&bytes).ok(),
            None => None,
        };
        let mut session = Self::new(settings, identity, clock)?;
        session.stopped = session.identity.stopped;
        if session.identity.token.is_none() && session.stopped.is_none() {
            session.stopped = Some(StopReason::LoggedOut);
        }
        Ok(Some(session))
    }

    /// A session for a login that just succeeded; saves who and the clock.
    pub fn logged_in<S: DeviceStore<Doc = D>>(
        settings: DeviceSettings,
        store: &mut S,
        identity: Identity,
        clock: Option<ServerClock>,
    ) -> Result<Self, DeviceFailure> {
        let session = Self::new(settings, identity, clock)?;
        session.save_identity(store)?;
        if let Some(clock) = &session.clock {
            save_json(store, CLOCK_KEY, clock)?;
        }
        Ok(session)
    }

    fn new(
        settings: DeviceSettings,
        identity: Identity,
        clock: Option<ServerClock>,
    ) -> Result<Self, DeviceFailure> {
        let actor = identity.actor_id()?;
        Ok(Self {
            settings,
            identity,
            actor,
            clock,
            link: Link::Down,
            stopped: None,
            attempt: 0,
            asks: Vec::new(),
            stranded: Vec::new(),
            next_ticket: 1,
            logging_out: None,
            catalog: None,
            listing: listing::CustomerListing::default(),
            phone_uploads: std::collections::BTreeMap::new(),
            out: DeviceOutput::default(),
        })
    }

    /// The numbers the session runs by (a host may change them at any time).
    pub fn settings_mut(&mut self) -> &mut DeviceSettings {
        &mut self.settings
    }

    /// Who the device is logged in as.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The estimate of the server's clock, if the device has one.
    pub fn clock(&self) -> Option<&ServerClock> {
        self.clock.as_ref()
    }

    /// The server's time when the device's clock reads `now` (the device's own
    /// when it has never learnt an offset).
    pub fn server_time(&self, now: Timestamp) -> Timestamp {
        self.clock.map_or(now, |c| c.server_time(now))
    }

    /// Where the upload of `call`'s recording stands, as the phone holding it
    /// said last (`None`: no connected phone of this user holds it).
    pub fn upload_of(&self, call: &CallId) -> Option<callsync_core::UploadState> {
        self.phone_uploads
            .values()
            .flatten()
            .find(|s| &s.call == call)
            .map(|s| s.state)
    }

    /// Where the link stands.
    pub fn phase(&self) -> Phase {
        if self.stopped.is_some() {
            return Phase::Stopped;
        }
        match self.link {
            Link::Down => Phase::Idle,
            Link::Waiting { .. } => Phase::Offline,
            Link::Opening { .. } | Link::Joining { .. } | Link::Revoking { .. } => {
                Phase::Connecting
            }
            Link::Joined { .. } => Phase::Online,
        }
    }

    /// Why the session stopped, if it did.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stopped
    }

    /// When the next attempt to connect is due, while offline.
    pub fn retry_at(&self) -> Option<Timestamp> {
        match self.link {
            Link::Waiting { until } => Some(until),
            _ => None,
        }
    }

    /// Documents still to catch up on (0 when not joined).
    pub fn catching_up(&self) -> usize {
        match &self.link {
            Link::Joined { client } => client.catching_up(),
            _ => 0,
        }
    }

    /// Whether the device is joined, caught up, and the server holds all its work.
    pub fn is_settled<S: DeviceStore<Doc = D>>(
        &mut self,
        store: &mut S,
    ) -> Result<bool, DeviceFailure> {
        match &mut self.link {
            Link::Joined { client } => Ok(client.is_settled(store)?),
            _ => Ok(false),
        }
    }

    /// Says goodbye and lets the connection go without logging out (a one-shot
    /// command is done; an app goes to the background). The session is idle
    /// until [`Self::start`]; questions in flight are asked again then.
    pub fn leave(&mut self) {
        if let Link::Joined { client } = &self.link {
            self.out.send.push(client.leave());
        }
        if !matches!(self.link, Link::Down | Link::Waiting { .. }) {
            self.out.close = true;
        }
        self.link = Link::Down;
        self.strand_asks();
    }

    /// The connection went without the store at hand: reads in flight are sent
    /// again at the next join; a screen's write in flight is reported as lost
    /// (it may or may not have been done: never sent twice); a result waiting
    /// for the server's rules is saved as picked at the next call with the store.
    fn strand_asks(&mut self) {
        for mut ask in std::mem::take(&mut self.asks) {
            match (ask.sent, &ask.purpose) {
                (Some(_), actions::AskPurpose::Screen) if !actions::is_read(&ask.call) => {
                    let (message, message_ja) = actions::Failure::ConnectionLost.words();
                    self.out.events.push(ClientEvent::AskFailed {
                        ticket: ask.ticket,
                        code: "connection-lost".to_owned(),
                        message: message.to_owned(),
                        message_ja: message_ja.to_owned(),
                    });
                    self.listing_answered(ask.ticket, None);
                }
                (Some(_), actions::AskPurpose::Result(_)) => self.stranded.push(ask),
                _ => {
                    ask.sent = None;
                    self.asks.push(ask);
                }
            }
        }
    }

    /// Saves the results stranded by a lost connection as picked.
    fn finish_stranded<S: DeviceStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        rng: &mut dyn Entropy,
        store: &mut S,
    ) {
        for ask in std::mem::take(&mut self.stranded) {
            self.ask_failed(now, rng, store, ask, actions::Failure::ConnectionLost);
        }
    }

    /// The output gathered so far, in place (a host that rolled a call back
    /// trims it with [`DeviceOutput::after_rollback`]).
    pub fn take_output_ref(&mut self) -> &mut DeviceOutput {
        &mut self.out
    }

    /// What the host is to do now (after committing this call's writes).
    pub fn take_output(&mut self) -> DeviceOutput {
        std::mem::take(&mut self.out)
    }

    /// Goes online: asks the host for a connection (a stopped session stays
    /// stopped, unless it has a token to end on the server).
    pub fn start(&mut self, now: Timestamp) {
        if !matches!(self.link, Link::Down | Link::Waiting { .. }) {
            return;
        }
        if let Some(purpose) = self.next_purpose() {
            self.open(now, purpose);
        }
    }

    /// What a new connection would be for, if anything.
    fn next_purpose(&self) -> Option<Purpose> {
        if !self.identity.revoke.is_empty() {
            Some(Purpose::Revoke)
        } else if self.stopped.is_none() && self.identity.token.is_some() {
            Some(Purpose::Join)
        } else {
            None
        }
    }

    fn open(&mut self, now: Timestamp, purpose: Purpose) {
        self.link = Link::Opening {
            since: now,
            purpose,
        };
        self.out.connect = true;
    }

    /// The next time [`Self::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let handshake = self.settings.handshake_timeout_ms;
        let link = match &self.link {
            Link::Down | Link::Joined { .. } => None,
            Link::Waiting { until } => Some(*until),
            Link::Opening { since, .. }
            | Link::Joining { since, .. }
            | Link::Revoking { since } => Some(since.plus_millis(handshake)),
        };
        let asks = self.asks.iter().filter_map(|a| {
            a.sent
                .map(|(_, at)| at.plus_millis(self.settings.request_timeout_ms))
        });
        link.into_iter().chain(asks).chain(self.logging_out).min()
    }

    /// Runs what is due at `now`: a retry, a handshake past its time, requests
    /// past theirs, a logout's grace.
    pub fn handle_timeout<S: DeviceStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        rng: &mut dyn Entropy,
        store: &mut S,
    ) -> Result<(), DeviceFailure> {
        self.guarded(now, rng, |s, rng| s.timeout(now, rng, store))
    }

    fn timeout<S: DeviceStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        rng: &mut dyn Entropy,
        store: &mut S,
    ) -> Result<(), DeviceFailure> {
        self.finish_stranded(now, rng, store);
        let handshake = self.settings.handshake_timeout_ms;
        match &self.link {
            Link::Waiting { until } if *until <= now => {
                if let Some(purpose) = self.next_purpose() {
                    self.open(now, purpose);
                } else {
                    self.link = Link::Down;
                }
            }
            Link::Opening { since, .. }
            | Link::Joining { since, .. }
            | Link::Revoking { since }
                if since.plus_millis(handshake) <= now =>
            {
                self.out.close = true;
                self.lost(now, rng, store, "the server did not answer in time")?;
            }
            _ => {}
        }
        let timeout = self.settings.request_timeout_ms;
        let due: Vec<u64> = self
            .asks
            .iter()
            .filter(|a| a.sent.is_some_and(|(_, at)| at.plus_millis(timeout) <= now))
            .map(|a| a.ticket)
            .collect();
        for ticket in due {
            if let Some(at) = self.asks.iter().position(|a| a.ticket == ticket) {
                let ask = self.asks.remove(at);
                self.ask_failed(now, rng, store, ask, actions::Failure::NoAnswer);
            }
        }
        if self.logging_out.is_some_and(|until| until <= now) {
            self.finish_logout(now, rng, store)?;
        }
        Ok(())
    }

    /// Handles one input.
    pub fn handle<S: DeviceStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        rng: &mut dyn Entropy,
        store: &mut S,
        input: DeviceInput,
    ) -> Result<(), DeviceFailure> {
        self.guarded(now, rng, |s, rng| s.input(now, rng, store, input))
    }

    /// Runs `f`; if it fails, nothing it produced is released (its writes are
    /// rolled back by the host), and the connection is dropped to be tried again.
    fn guarded(
        &mut self,
        now: Timestamp,
        rng: &mut dyn Entropy,
        f: impl FnOnce(&mut Self, &mut dyn Entropy) -> Result<(), DeviceFailure>,
    ) -> Result<(), DeviceFailure> {
        // A failed call may have moved the link (to `Down`, while it took it
        // apart): what counts is whether a connection was up when it began.
        let was_connected = !matches!(self.link, Link::Down | Link::Waiting { .. });
        let sends = self.out.send.len();
        let events = self.out.events.len();
        match f(self, rng) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.out.send.truncate(sends);
                self.out.events.truncate(events);
                self.catalog = None;
                let connected = !matches!(self.link, Link::Down | Link::Waiting { .. });
                if was_connected || connected {
                    self.out.close = true;
                    self.out.events.push(ClientEvent::Disconnected {
                        reason: e.to_string(),
                        retry_at: None,
                    });
                    self.strand_asks();
                    let wait = self.backoff(rng);
                    self.link = Link::Waiting {
                        until: now.plus_millis(wait),
                    };
                }
                Err(e)
            }
        }
    }

    fn input<S: DeviceStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        rng: &mut dyn Entropy,
        store: &mut S,
        input: DeviceInput,
    ) -> Result<(), DeviceFailure> {
        self.finish_stranded(now, rng, store);
        match input {
            DeviceInput::Connected => self.connected(now, store),
            DeviceInput::Received(message) => self.received(now, rng, store, message),
            DeviceInput::Disconnected { reason } => match self.link {
                Link::Down | Link::Waiting { .. } => Ok(()),
                _ => self.lost(now, rng, store, &reason),
            },
            DeviceInput::LocalChanged => {
                if let Link::Joined { client } = &mut self.link {
                    let mut out = ClientOutput::default();
                    client.push_local(store, &mut out)?;
                    self.absorb(now, rng, store, out)?;
                }
                Ok(())
            }
            DeviceInput::NetworkUp => {
                if matches!(self.link, Link::Waiting { .. })
                    && let Some(purpose) = self.next_purpose()
                {
                    self.open(now, purpose);
                }
                Ok(())
            }
        }
    }

    fn connected<S: DeviceStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        store: &mut S,
    ) -> Result<(), DeviceFailure> {
        let Link::Opening { purpose, .. } = self.link else {
            // Not asked for (any more): the host closes it.
            self.out.close = true;
            return Ok(());
        };
        match purpose {
            Purpose::Join => {
                let Some(token) = self.identity.token.clone() else {
                    self.out.close = true;
                    self.link = Link::Down;
                    return Ok(());
                };
                let client = ClientSession::new(Device {
                    tenant: self.identity.tenant.clone(),
                    id: self.identity.device.clone(),
                    actor: self.actor.clone(),
                });
                let join = client.join(store, &token)?;
                self.out.send.push(join);
                self.link = Link::Joining {
                    since: now,
                    sent: now,
                    client,
                };
            }
            Purpose::Revoke => {
                let Some(token) = self.identity.revoke.first().cloned() else {
                    self.out.close = true;
                    self.link = Link::Down;
                    return Ok(());
                };
                self.out.send.push(Message::Logout { token });
                self.link = Link::Revoking { since: now };
            }
        }
        Ok(())
    }

    fn received<S: DeviceStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        rng: &mut dyn Entropy,
        store: &mut S,
        message: Message,
    ) -> Result<(), DeviceFailure> {
        match std::mem::replace(&mut self.link, Link::Down) {
            Link::Joining {
                sent,
                mut client,
                since,
            } => match message {
                Message::Peer {
                    server_time, role, ..
                } => {
                    if let Some(server) = server_time
                        && let Some(clock) = ServerClock::learn(sent, server, now)
                    {
                        self.clock = Some(clock);
                        save_json(store, CLOCK_KEY, &clock)?;
                        self.out.events.push(ClientEvent::ClockLearned {
                            offset_ms: clock.offset_ms,
                            uncertainty_ms: clock.uncertainty_ms,
                        });
                    }
                    if role != self.identity.role {
                        self.identity.role = role;
                        self.save_identity(store)?;
                        self.out.events.push(ClientEvent::RoleChanged { role });
                    }
                    let mut out = ClientOutput::default();
                    client.on_peer(store, message, &mut out)?;
                    self.link = Link::Joined { client };
                    self.attempt = 0;
                    self.absorb(now, rng, store, out)?;
                    self.send_queued(now)?;
                    Ok(())
                }
                Message::Error(body) => self.refused(now, rng, store, &body),
                other => {
                    self.link = Link::Joining {
                        since,
                        sent,
                        client,
                    };
                    Err(DeviceFailure::Protocol(format!(
                        "expected 'peer', got '{}'",
                        other.kind()
                    )))
                }
            },
            Link::Joined { mut client } => {
                let mut out = ClientOutput::default();
                let handled = client.handle(store, message, &mut out);
                self.link = Link::Joined { client };
                handled?;
                self.absorb(now, rng, store, out)
            }
            Link::Revoking { since } => match message {
                Message::LoggedOut => {
                    if !self.identity.revoke.is_empty() {
                        self.identity.revoke.remove(0);
                    }
                    self.save_identity(store)?;
                    self.out.close = true;
                    self.link = Link::Down;
                    // A session waiting behind the revoke joins now.
                    if let Some(purpose) = self.next_purpose() {
                        self.open(now, purpose);
                    }
                    Ok(())
                }
                Message::Error(body) => {
                    // An unknown or expired token is ended already.
                    if matches!(classify(&body), Disposition::Stop(_)) {
                        if !self.identity.revoke.is_empty() {
                            self.identity.revoke.remove(0);
                        }
                        self.save_identity(store)?;
                        self.out.close = true;
                        if let Some(purpose) = self.next_purpose() {
                            self.open(now, purpose);
                        }
                        Ok(())
                    } else {
                        self.link = Link::Revoking { since };
                        self.out.close = true;
                        self.lost(now, rng, store, &body.message)
                    }
                }
                other => {
                    self.link = Link::Revoking { since };
                    Err(DeviceFailure::Protocol(format!(
                        "expected 'logged-out', got '{}'",
                        other.kind()
                    )))
                }
            },
            link @ (Link::Down | Link::Waiting { .. } | Link::Opening { .. }) => {
                // A message for a connection the session has let go of.
                self.link = link;
                Ok(())
            }
        }
    }

    /// Takes in what the client session produced: its messages and events, the
    /// replies to asks, the unsent ledger, and a closing refusal.
    fn absorb<S: DeviceStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        rng: &mut dyn Entropy,
        store: &mut S,
        out: ClientOutput,
    ) -> Result<(), DeviceFailure> {
        self.out.send.extend(out.messages);
        let mut settled = Vec::new();
        for event in &out.events {
            match event {
                ClientEvent::Acknowledged { customer } | ClientEvent::Rejected { customer, .. } => {
                    settled.push(customer.clone());
                }
                ClientEvent::ConfigChanged { .. } => self.catalog = None,
                ClientEvent::PhoneUploads { device, uploads } => {
                    if uploads.is_empty() {
                        self.phone_uploads.remove(device);
                    } else {
                        self.phone_uploads.insert(device.clone(), uploads.clone());
                    }
                }
                _ => {}
            }
        }
        self.out.events.extend(out.events);
        if !settled.is_empty() {
            let mut ledger = unsent_ledger(store)?;
            let before = ledger.len();
            ledger.retain(|e| !settled.contains(&e.customer));
            if ledger.len() != before {
                save_json(store, UNSENT_KEY, &ledger)?;
            }
        }
        self.collect_replies(now, rng, store)?;
        if self.logging_out.is_some() && unsent_ledger(store)?.is_empty() && !self.deciding() {
            self.finish_logout(now, rng, store)?;
        }
        if let Some(body) = out.refused {
            return self.refused(now, rng, store, &body);
        }
        Ok(())
    }

    /// Hands each answered ask its answer.
    fn collect_replies<S: DeviceStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        rng: &mut dyn Entropy,
        store: &mut S,
    ) -> Result<(), DeviceFailure> {
        let Link::Joined { client } = &mut self.link else {
            return Ok(());
        };
        let mut answered = Vec::new();
        let mut waiting = Vec::new();
        for ask in std::mem::take(&mut self.asks) {
            match ask.sent.and_then(|(id, _)| client.take_reply(id)) {
                Some(result) => answered.push((ask, result)),
                None => waiting.push(ask),
            }
        }
        self.asks = waiting;
        for (ask, result) in answered {
            self.answered(now, rng, store, ask, result);
        }
        Ok(())
    }

    /// The server refused the session (a closing error).
    fn refused<S: DeviceStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        rng: &mut dyn Entropy,
        store: &mut S,
        body: &ErrorBody,
    ) -> Result<(), DeviceFailure> {
        self.out.close = true;
        match classify(body) {
            Disposition::Stop(reason) => self.stop(now, rng, store, reason, &body.code),
            Disposition::RetryLater | Disposition::AskUser => {
                self.lost(now, rng, store, &body.message)
            }
        }
    }

    /// Stops for `reason`: no more connections until the user acts. Unsent work
    /// stays in storage.
    fn stop<S: DeviceStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        rng: &mut dyn Entropy,
        store: &mut S,
        reason: StopReason,
        code: &str,
    ) -> Result<(), DeviceFailure> {
        self.link = Link::Down;
        self.stopped = Some(reason);
        self.logging_out = None;
        if reason.needs_login() {
            self.identity.token = None;
        }
        self.identity.stopped = Some(reason);
        self.save_identity(store)?;
        let (message, message_ja) = reason.words();
        self.out.events.push(ClientEvent::Stopped {
            reason,
            code: code.to_owned(),
            message: message.to_owned(),
            message_ja: message_ja.to_owned(),
        });
        self.fail_all(now, rng, store, actions::Failure::Stopped(reason))
    }

    /// The connection is gone: asks in flight are re-sent later (reads) or
    /// reported; the next attempt waits.
    fn lost<S: DeviceStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        rng: &mut dyn Entropy,
        store: &mut S,
        reason: &str,
    ) -> Result<(), DeviceFailure> {
        let was_revoking = matches!(self.link, Link::Revoking { .. });
        // Offline, nothing says how the phones' uploads go on.
        self.phone_uploads.clear();
        let wait = self.backoff(rng);
        let until = now.plus_millis(wait);
        self.link = Link::Waiting { until };
        if !was_revoking {
            self.out.events.push(ClientEvent::Disconnected {
                reason: reason.to_owned(),
                retry_at: Some(until),
            });
        }
        let mut kept = Vec::new();
        for mut ask in std::mem::take(&mut self.asks) {
            match ask.sent {
                Some(_) if !actions::is_read(&ask.call) => {
                    self.ask_failed(now, rng, store, ask, actions::Failure::ConnectionLost);
                }
                _ => {
                    ask.sent = None;
                    kept.push(ask);
                }
            }
        }
        // Asks made meanwhile were pushed; keep the order they were made in.
        kept.append(&mut self.asks);
        self.asks = kept;
        Ok(())
    }

    /// Fails every ask (the session stopped).
    fn fail_all<S: DeviceStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        rng: &mut dyn Entropy,
        store: &mut S,
        why: actions::Failure,
    ) -> Result<(), DeviceFailure> {
        for ask in std::mem::take(&mut self.asks) {
            self.ask_failed(now, rng, store, ask, why);
        }
        Ok(())
    }

    /// The wait before the next attempt, counting this failure.
    fn backoff(&mut self, rng: &mut dyn Entropy) -> i64 {
        let wait = crate::client::backoff(
            std::time::Duration::from_millis(self.settings.backoff_min_ms.max(0) as u64),
            std::time::Duration::from_millis(self.settings.backoff_max_ms.max(0) as u64),
            self.attempt,
            rng.unit(),
        );
        self.attempt = self.attempt.saturating_add(1);
        i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)
    }

    /// Sends the asks made while not joined.
    fn send_queued(&mut self, now: Timestamp) -> Result<(), DeviceFailure> {
        let Link::Joined { client } = &mut self.link else {
            return Ok(());
        };
        for ask in self.asks.iter_mut().filter(|a| a.sent.is_none()) {
            let mut out = ClientOutput::default();
            let id = client.send_rpc(ask.call.clone(), &mut out);
            ask.sent = Some((id, now));
            self.out.send.extend(out.messages);
        }
        Ok(())
    }

    /// Asks the server something for the screens; the answer comes as a
    /// [`ClientEvent::Reply`] (or [`ClientEvent::AskFailed`]) with the returned
    /// ticket. Asked while offline, it is sent at the next join.
    pub fn ask(&mut self, now: Timestamp, call: RpcCall) -> Result<u64, DeviceFailure> {
        self.push_ask(now, call, actions::AskPurpose::Screen)
    }

    fn push_ask(
        &mut self,
        now: Timestamp,
        call: RpcCall,
        purpose: actions::AskPurpose,
    ) -> Result<u64, DeviceFailure> {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.asks.push(Ask {
            ticket,
            call,
            sent: None,
            purpose,
        });
        self.send_queued(now)?;
        Ok(ticket)
    }

    /// What a logout now would leave unsent.
    pub fn unsent<S: DeviceStore<Doc = D>>(
        &mut self,
        store: &mut S,
    ) -> Result<Unsent, DeviceFailure> {
        let ledger = unsent_ledger(store)?;
        let deciding = self
            .asks
            .iter()
            .filter(|a| matches!(a.purpose, actions::AskPurpose::Result(_)))
            .count();
        Ok(Unsent {
            results: ledger.iter().filter(|e| e.kind == "result-saved").count() + deciding,
            events: ledger.len() + deciding,
        })
    }

    /// Whether a result is waiting for the server's rules.
    fn deciding(&self) -> bool {
        self.asks
            .iter()
            .any(|a| matches!(a.purpose, actions::AskPurpose::Result(_)))
    }

    /// Logs out. Unsent work is never dropped: online, the session waits (at most
    /// the logout grace) for the server to confirm it, then ends the session on
    /// the server; offline, the work stays for this user's next login here and
    /// the token is ended on the server at the next chance.
    pub fn logout<S: DeviceStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        rng: &mut dyn Entropy,
        store: &mut S,
    ) -> Result<(), DeviceFailure> {
        self.guarded(now, rng, |s, rng| s.begin_logout(now, rng, store))
    }

    fn begin_logout<S: DeviceStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        rng: &mut dyn Entropy,
        store: &mut S,
    ) -> Result<(), DeviceFailure> {
        // Online or on the way: the unsent work goes first (a join pushes the
        // outbox), for at most the grace.
        let reachable = !matches!(self.link, Link::Down | Link::Waiting { .. });
        if reachable && (!unsent_ledger(store)?.is_empty() || self.deciding()) {
            self.logging_out = Some(now.plus_millis(self.settings.logout_grace_ms));
            if let Link::Joined { client } = &mut self.link {
                let mut out = ClientOutput::default();
                client.push_local(store, &mut out)?;
                self.out.send.extend(out.messages);
            }
            return Ok(());
        }
        self.logged_out(now, rng, store)
    }

    /// The grace is over (or nothing is left to send): log out now.
    fn finish_logout<S: DeviceStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        rng: &mut dyn Entropy,
        store: &mut S,
    ) -> Result<(), DeviceFailure> {
        self.logging_out = None;
        self.logged_out(now, rng, store)
    }

    /// Leaves, keeps the token to end on the server (over a connection of its
    /// own, now or at the next chance), and stops.
    fn logged_out<S: DeviceStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        rng: &mut dyn Entropy,
        store: &mut S,
    ) -> Result<(), DeviceFailure> {
        if let Link::Joined { client } = &self.link {
            self.out.send.push(client.leave());
        }
        if !matches!(self.link, Link::Down | Link::Waiting { .. }) {
            self.out.close = true;
        }
        if let Some(token) = self.identity.token.take() {
            self.identity.revoke.push(token);
        }
        self.link = Link::Down;
        self.stop(
            now,
            rng,
            store,
            StopReason::LoggedOut,
            StopReason::LoggedOut.as_str(),
        )?;
        if !self.identity.revoke.is_empty() {
            self.open(now, Purpose::Revoke);
        }
        Ok(())
    }

    fn save_identity<S: DeviceStore<Doc = D>>(&self, store: &mut S) -> Result<(), DeviceFailure> {
        save_json(store, IDENTITY_KEY, &self.identity)?;
        Ok(())
    }
}

/// The ledger of local events the server has not confirmed.
fn unsent_ledger<S: DeviceStore + ?Sized>(store: &mut S) -> Result<Vec<UnsentEvent>, StorageError> {
    match store.setting(UNSENT_KEY)? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| StorageError::Unreadable(format!("unsent ledger: {e}"))),
        None => Ok(Vec::new()),
    }
}

fn save_json<S: DeviceStore + ?Sized>(
    store: &mut S,
    key: &str,
    value: &impl Serialize,
) -> Result<(), StorageError> {
    let bytes = serde_json::to_vec(value).map_err(|e| StorageError::Failed(e.to_string()))?;
    store.set_setting(key, Some(&bytes))
}
