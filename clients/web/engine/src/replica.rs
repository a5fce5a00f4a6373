//! The page's device: the host of its [`DeviceSession`] (the same session the
//! phone and the CLI's desk run) over the page's working set, with the stream's
//! framing, driven by the page's TypeScript.
//!
//! Owns: turning the WebTransport stream's bytes into messages and back (the
//! core's frames), running each session call as one transaction over the
//! [`PageStore`] (commit on success, roll back on failure), and holding every
//! transport step the session asks for (connect, send, close) behind the batch
//! of IndexedDB writes it depends on: a step is released only once IndexedDB has
//! confirmed that batch and every earlier one ([`Replica::flushed`]); a batch
//! that fails to write undoes the working set, drops the steps behind it, drops
//! the connection and tells the rep. Times come in from the page (`now`, the
//! device's own clock: the session corrects it), randomness from a seed the
//! page draws, so everything here is deterministic and runs natively in tests.
//! Does not own: any protocol decision (the session: connecting, retrying,
//! the clock, requests, refusals, the rep's actions and the result flow), the
//! socket, the clock, IndexedDB or the screens (the page).
//!
//! Call order: [`Replica::restore`] every record of the user's IndexedDB, then
//! [`Replica::open`] (or a login: [`Replica::login_start`] on a connection of its
//! own, then [`Replica::login_receive`]); [`Replica::start`]. After every call,
//! the page writes [`Replica::take_flush`] to IndexedDB and reports it with
//! [`Replica::flushed`], carries out [`Replica::take_outgoing`] in order (open a
//! connection and report [`Replica::connected`] or [`Replica::disconnected`];
//! write bytes; close), shows [`Replica::take_events`], and sets a timer for
//! [`Replica::poll_timeout`] that calls [`Replica::handle_timeout`].

use std::collections::VecDeque;

use callsync_core::wire::{self, CustomerSummary, FRAME_HEADER_BYTES, Message, RpcCall};
use callsync_core::{CallId, CallView, CustomerId, DeviceId, DeviceKind, EventKind, Timestamp};
use callsync_session::device::actions::{ActionError, ResultForm, SaveOutcome};
use callsync_session::device::login::{LoginError, LoginExchange};
use callsync_session::device::{
    DeviceFailure, DeviceInput, DeviceSession, DeviceSettings, IDENTITY_KEY, Identity, SplitMix64,
};
use serde::Serialize;
use serde_json::{Value, json};

use crate::store::{CUSTOMERS_KEY, PageDoc, PageStore};
use crate::views::{
    CustomerDetail, ErrorView, LoginAnswer, LoginRefusal, PageEvent, PagePhase, PageState,
    PublicIdentity, SaveOutcomeView, StopView,
};

/// Why the page's call failed.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// The rules (or the session) refused the action; nothing changed.
    #[error("{0}")]
    Refused(#[from] ActionError),
    /// Something the page passed in is not what it should be.
    #[error("{0}")]
    Input(String),
    /// No user is logged in on this page.
    #[error("not logged in")]
    LoggedOut,
}

impl From<DeviceFailure> for PageError {
    fn from(e: DeviceFailure) -> Self {
        Self::Input(e.to_string())
    }
}

impl From<callsync_core::id::IdError> for PageError {
    fn from(e: callsync_core::id::IdError) -> Self {
        Self::Refused(ActionError::Refused(e.into()))
    }
}

impl PageError {
    /// The error as the page shows it: a stable code and the message in both
    /// languages.
    pub fn to_json(&self) -> Value {
        match self {
            Self::Refused(e) => json!(ErrorView {
                code: e.code().to_owned(),
                message: e.to_string(),
                message_ja: e.message_ja(),
            }),
            Self::Input(m) => json!(ErrorView {
                code: "input".to_owned(),
                message: m.clone(),
                message_ja: m.clone(),
            }),
            Self::LoggedOut => json!(ErrorView {
                code: "logged-out".to_owned(),
                message: "Please log in.".to_owned(),
                message_ja: "ログインしてください。".to_owned(),
            }),
        }
    }
}

/// A transport step the session asked for, released once IndexedDB holds the
/// writes before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Open a connection (then report connected or disconnected).
    Connect,
    /// Write these bytes to the stream.
    Send(Vec<u8>),
    /// Close the connection.
    Close,
}

/// The words a rep sees when IndexedDB could not save.
const STORAGE_FAILED_EN: &str =
    "This device could not save (is its storage full?). Nothing was sent; please try again.";
const STORAGE_FAILED_JA: &str = "この端末に保存できませんでした（ストレージの空き容量を確認してください）。送信していません。もう一度お試しください。";

/// One page's device.
pub struct Replica {
    settings: DeviceSettings,
    store: PageStore,
    session: Option<DeviceSession<PageDoc>>,
    rng: SplitMix64,
    login: Option<LoginExchange>,
    inbound: Vec<u8>,
    /// Steps waiting for their batch of writes, with the batch's ticket.
    outgoing: VecDeque<(u64, Step)>,
    /// Events for the screens, held like the steps: nothing is shown as done
    /// before IndexedDB holds it.
    events: VecDeque<(u64, Value)>,
}

fn input(what: &str, e: impl std::fmt::Display) -> PageError {
    PageError::Input(format!("{what}: {e}"))
}

impl Replica {
    /// An empty device: `seed` seeds its randomness (the page draws it from
    /// `crypto.getRandomValues`), `start_limit_ms` is the server's start limit.
    pub fn new(seed: u64, start_limit_ms: i64) -> Self {
        Self {
            settings: DeviceSettings {
                start_limit_ms,
                ..DeviceSettings::default()
            },
            store: PageStore::default(),
            session: None,
            rng: SplitMix64::new(seed),
            login: None,
            inbound: Vec::new(),
            outgoing: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Puts back one record read from IndexedDB (at start-up, before anything else).
    pub fn restore(&mut self, key: String, value: Vec<u8>) {
        self.store.restore(key, value);
    }

    /// Who last logged in with this database, if anyone.
    pub fn identity(&self) -> Option<Identity> {
        self.store
            .get(&format!("setting:{IDENTITY_KEY}"))
            .and_then(|bytes| serde_json::from_slice(bytes).ok())
    }

    /// Opens the session saved in the records; false if nobody logged in here.
    pub fn open(&mut self) -> Result<bool, PageError> {
        let settings = self.settings.clone();
        let session = self.transact(|_, store| DeviceSession::restore(settings, store))?;
        self.session = session;
        Ok(self.session.is_some())
    }

    /// The session, if a user is logged in.
    pub fn session(&self) -> Option<&DeviceSession<PageDoc>> {
        self.session.as_ref()
    }

    /// Runs one call on the working set: commit if it succeeds, roll back if not.
    fn transact<T, E>(
        &mut self,
        call: impl FnOnce(&mut SplitMix64, &mut PageStore) -> Result<T, E>,
    ) -> Result<T, PageError>
    where
        PageError: From<E>,
    {
        let result = call(&mut self.rng, &mut self.store);
        match result {
            Ok(value) => {
                self.commit();
                Ok(value)
            }
            Err(e) => {
                self.store.rollback();
                Err(e.into())
            }
        }
    }

    /// Commits the store's pending writes; each document written is reported as
    /// a `document` event, so the screens redraw what changed.
    fn commit(&mut self) {
        for customer in self.store.commit() {
            self.tell(PageEvent::Document { customer });
        }
    }

    /// Queues an event behind the writes made so far.
    fn tell(&mut self, event: PageEvent) {
        let ticket = self.store.ticket();
        self.events.push_back((ticket, json!(event)));
    }

    /// Runs a session call in one transaction and queues what it asks for
    /// behind its writes. A failed call is rolled back; its output holds only
    /// the close of its connection.
    fn drive<T>(
        &mut self,
        call: impl FnOnce(
            &mut DeviceSession<PageDoc>,
            &mut SplitMix64,
            &mut PageStore,
        ) -> Result<T, PageError>,
    ) -> Result<T, PageError> {
        let Some(session) = self.session.as_mut() else {
            return Err(PageError::LoggedOut);
        };
        let result = call(session, &mut self.rng, &mut self.store);
        match &result {
            Ok(_) => self.commit(),
            Err(_) => {
                self.store.rollback();
                session.take_output_ref().after_rollback();
            }
        }
        self.queue_output();
        result
    }

    /// Queues the session's output behind the writes made so far.
    fn queue_output(&mut self) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let out = session.take_output();
        let ticket = self.store.ticket();
        for message in &out.send {
            match wire::encode_frame(message) {
                Ok(frame) => self.outgoing.push_back((ticket, Step::Send(frame))),
                Err(e) => self.events.push_back((
                    ticket,
                    json!(PageEvent::Error {
                        message: e.to_string()
                    }),
                )),
            }
        }
        if out.close {
            self.inbound.clear();
            self.outgoing.push_back((ticket, Step::Close));
        }
        if out.connect {
            self.inbound.clear();
            self.outgoing.push_back((ticket, Step::Connect));
        }
        let mut listed = false;
        for event in out.events {
            match serde_json::to_value(&event) {
                Ok(value) => self.events.push_back((ticket, value)),
                Err(e) => self.events.push_back((
                    ticket,
                    json!(PageEvent::Error {
                        message: e.to_string()
                    }),
                )),
            }
            listed |= matches!(
                event,
                callsync_session::client::ClientEvent::Reply {
                    result: wire::RpcResult::Customers(_),
                    ..
                }
            );
        }
        // The unsearched list as far as it was read is kept for offline use: the
        // list opens with no network.
        let listing = session.customer_listing();
        if listed
            && listing.query.is_none()
            && !listing.rows.is_empty()
            && let Ok(bytes) = serde_json::to_vec(&listing.rows)
        {
            self.store.put(CUSTOMERS_KEY.to_owned(), bytes);
            self.commit();
        }
    }

    fn handle(&mut self, now: Timestamp, input: DeviceInput) -> Result<(), PageError> {
        self.drive(|s, rng, store| {
            s.handle(now, rng, store, input)
                .map_err(|e| PageError::Input(e.to_string()))
        })
    }

    // --- login -----------------------------------------------------------

    /// Starts a login: the frame to send first on a connection of its own.
    pub fn login_start(
        &mut self,
        now: Timestamp,
        email: &str,
        password: &str,
    ) -> Result<Vec<u8>, PageError> {
        let previous = self.identity();
        let (exchange, message) = LoginExchange::start(
            now,
            &mut self.rng,
            email,
            password,
            DeviceKind::Desk,
            previous.as_ref(),
            None,
        )
        .map_err(|e| PageError::Input(e.to_string()))?;
        self.login = Some(exchange);
        self.inbound.clear();
        wire::encode_frame(&message).map_err(|e| input("login", e))
    }

    /// Bytes of the login connection: `None` until a whole frame has arrived,
    /// then `{"loggedIn": identity}` (the session is open and saved) or
    /// `{"refused": {code, message, messageJa, disposition}}`.
    pub fn login_receive(
        &mut self,
        now: Timestamp,
        bytes: &[u8],
    ) -> Result<Option<Value>, PageError> {
        self.inbound.extend_from_slice(bytes);
        let Some(message) = self.next_frame()? else {
            return Ok(None);
        };
        self.inbound.clear();
        let exchange = self
            .login
            .take()
            .ok_or_else(|| PageError::Input("no login in progress".to_owned()))?;
        match exchange.finish(now, message) {
            Ok((identity, clock)) => {
                let settings = self.settings.clone();
                let session = self.transact(|_, store| {
                    DeviceSession::logged_in(settings, store, identity.clone(), clock)
                        .map_err(|e| PageError::Input(e.to_string()))
                })?;
                self.session = Some(session);
                Ok(Some(json!(LoginAnswer::LoggedIn(PublicIdentity::from(
                    &identity
                )))))
            }
            Err(LoginError::Refused { body, disposition }) => {
                Ok(Some(json!(LoginAnswer::Refused(LoginRefusal {
                    code: body.code,
                    message: body.message,
                    message_ja: body.message_ja,
                    disposition,
                }))))
            }
            Err(e) => Err(PageError::Input(e.to_string())),
        }
    }

    // --- the connection ----------------------------------------------------

    /// Goes online.
    pub fn start(&mut self, now: Timestamp) -> Result<(), PageError> {
        self.drive(|s, _, _| {
            s.start(now);
            Ok(())
        })
    }

    /// The connection the session asked for is open.
    pub fn connected(&mut self, now: Timestamp) -> Result<(), PageError> {
        self.inbound.clear();
        self.handle(now, DeviceInput::Connected)
    }

    /// The connection failed or closed.
    pub fn disconnected(&mut self, now: Timestamp, reason: &str) -> Result<(), PageError> {
        self.inbound.clear();
        self.handle(
            now,
            DeviceInput::Disconnected {
                reason: reason.to_owned(),
            },
        )
    }

    /// The browser says the network is back.
    pub fn network_up(&mut self, now: Timestamp) -> Result<(), PageError> {
        self.handle(now, DeviceInput::NetworkUp)
    }

    /// When [`Self::handle_timeout`] is next due (device clock).
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.session.as_ref().and_then(|s| s.poll_timeout())
    }

    /// Runs what is due.
    pub fn handle_timeout(&mut self, now: Timestamp) -> Result<(), PageError> {
        self.drive(|s, rng, store| {
            s.handle_timeout(now, rng, store)
                .map_err(|e| PageError::Input(e.to_string()))
        })
    }

    /// The next whole frame of `inbound`, if one has arrived.
    fn next_frame(&mut self) -> Result<Option<Message>, PageError> {
        let Some(header) = self.inbound.get(..FRAME_HEADER_BYTES) else {
            return Ok(None);
        };
        let mut len = [0u8; FRAME_HEADER_BYTES];
        len.copy_from_slice(header);
        let len = wire::frame_body_len(len).map_err(|e| input("frame", e))?;
        let Some(body) = self
            .inbound
            .get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len)
        else {
            return Ok(None);
        };
        let message = wire::decode_body(body).map_err(|e| input("frame", e))?;
        self.inbound.drain(..FRAME_HEADER_BYTES + len);
        Ok(Some(message))
    }

    /// Feeds bytes the stream delivered; whole frames are handled, a partial one
    /// waits for the rest. A frame that does not decode drops the connection.
    pub fn receive(&mut self, now: Timestamp, bytes: &[u8]) -> Result<(), PageError> {
        self.inbound.extend_from_slice(bytes);
        loop {
            match self.next_frame() {
                Ok(Some(message)) => self.handle(now, DeviceInput::Received(message))?,
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.inbound.clear();
                    self.outgoing.push_back((self.store.ticket(), Step::Close));
                    self.disconnected(now, &e.to_string())?;
                    return Err(e);
                }
            }
        }
    }

    // --- IndexedDB and the transport ----------------------------------------

    /// The next batch of writes for IndexedDB (`None`: nothing waiting): its
    /// ticket and records (`None` value: delete).
    pub fn take_flush(&mut self) -> Option<crate::store::Batch> {
        self.store.take_flush()
    }

    /// IndexedDB wrote batch `ticket`, or failed to (`ok` false): then the
    /// working set is put back, every step behind that batch is dropped, the
    /// connection goes, and the rep is told nothing was sent.
    pub fn flushed(&mut self, now: Timestamp, ticket: u64, ok: bool) -> Result<(), PageError> {
        if !self.store.written(ticket, ok) || ok {
            return Ok(());
        }
        self.outgoing.retain(|(t, _)| *t < ticket);
        self.events.retain(|(t, _)| *t < ticket);
        self.outgoing.push_back((ticket, Step::Close));
        self.tell(PageEvent::StorageFailed {
            message: STORAGE_FAILED_EN.to_owned(),
            message_ja: STORAGE_FAILED_JA.to_owned(),
        });
        if self.session.is_some() {
            self.disconnected(now, "storage failed")?;
        }
        Ok(())
    }

    /// The transport steps whose writes IndexedDB holds, in order.
    pub fn take_outgoing(&mut self) -> Vec<Step> {
        let written = self.store.written_up_to();
        let mut steps = Vec::new();
        while let Some((ticket, _)) = self.outgoing.front()
            && *ticket <= written
        {
            if let Some((_, step)) = self.outgoing.pop_front() {
                steps.push(step);
            }
        }
        steps
    }

    /// Whether steps are waiting for IndexedDB.
    pub fn has_held_steps(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// What happened, for the screens: the events whose writes IndexedDB holds.
    pub fn take_events(&mut self) -> Vec<Value> {
        let written = self.store.written_up_to();
        let mut events = Vec::new();
        while let Some((ticket, _)) = self.events.front()
            && *ticket <= written
        {
            if let Some((_, event)) = self.events.pop_front() {
                events.push(event);
            }
        }
        events
    }

    /// The link, the login and the clock, for the screens.
    pub fn state(&self, now: Timestamp) -> Value {
        let Some(session) = &self.session else {
            return json!(PageState {
                phase: PagePhase::LoggedOut,
                stopped: None,
                retry_at: None,
                server_now: None,
                clock: None,
                identity: self.identity().as_ref().map(PublicIdentity::from),
                revoking: false,
            });
        };
        json!(PageState {
            phase: session.phase().into(),
            stopped: session.stop_reason().map(StopView::from),
            retry_at: session.retry_at(),
            server_now: Some(session.server_time(now)),
            clock: session.clock().copied(),
            identity: Some(PublicIdentity::from(session.identity())),
            revoking: !session.identity().revoke.is_empty(),
        })
    }

    // --- requests and actions ----------------------------------------------

    /// Asks the server something (`call`: the wire's JSON of a request); the
    /// answer comes as a `reply` event with the returned ticket.
    pub fn ask(&mut self, now: Timestamp, call: &str) -> Result<u64, PageError> {
        let call: RpcCall = serde_json::from_str(call).map_err(|e| input("request", e))?;
        self.drive(|s, _, _| {
            s.ask(now, call)
                .map_err(|e| PageError::Input(e.to_string()))
        })
    }

    /// Asks the server to install a plugin file (settings as `KEY=VALUE` lines,
    /// a `date,name` holiday table or the Japanese one); the verdict comes as a
    /// `reply` event with the returned ticket.
    pub fn install_plugin(
        &mut self,
        now: Timestamp,
        file: Vec<u8>,
        settings: &str,
        holidays: Option<&str>,
        time_zone: &str,
    ) -> Result<u64, PageError> {
        let settings: Vec<String> = settings.lines().map(str::to_owned).collect();
        self.drive(|s, _, _| Ok(s.install_plugin(now, file, &settings, holidays, time_zone)?))
    }

    /// Asks the server to make an installed rule set active again.
    pub fn roll_back_plugin(&mut self, now: Timestamp, ruleset: &str) -> Result<u64, PageError> {
        self.drive(|s, _, store| Ok(s.roll_back_plugin(now, store, ruleset)?))
    }

    /// The installed rule sets and their history as synced here (JSON).
    pub fn plugins(&mut self) -> Value {
        let Some(session) = self.session.as_mut() else {
            return json!(callsync_core::tenant_config::PluginListing::default());
        };
        json!(session.plugin_listing(&mut self.store).unwrap_or_default())
    }

    /// Where the upload of `call`'s recording stands, as the user's phone said
    /// last (`null`: no connected phone holds it).
    pub fn upload_of(&self, call: &str) -> Result<Value, PageError> {
        let call = CallId::new(call)?;
        Ok(json!(
            self.session.as_ref().and_then(|s| s.upload_of(&call))
        ))
    }

    /// **顧客にコール**: asks the phone `origin` to dial `number`.
    pub fn request_call(
        &mut self,
        now: Timestamp,
        customer: &str,
        number: &str,
        origin: &str,
        recording: bool,
    ) -> Result<CallView, PageError> {
        let customer = CustomerId::new(customer)?;
        let origin = DeviceId::new(origin)?;
        self.drive(|s, rng, store| {
            Ok(s.request_call(now, rng, store, &customer, number, &origin, recording)?)
        })
    }

    /// An event on an existing call of `customer`: **コールをキャンセル**
    /// (`cancelled`) or the red end button (`browser-ended`).
    pub fn call_event(
        &mut self,
        now: Timestamp,
        customer: &str,
        call: &str,
        what: &str,
    ) -> Result<CallView, PageError> {
        let customer = CustomerId::new(customer)?;
        let call = CallId::new(call)?;
        let kind = match what {
            "cancelled" => EventKind::Cancelled,
            "browser-ended" => EventKind::BrowserEnded,
            "recording-deleted" => EventKind::RecordingDeleted,
            other => return Err(PageError::Input(format!("unknown action {other}"))),
        };
        self.drive(|s, rng, store| {
            Ok(s.call_event(now, rng, store, Some(&customer), &call, kind)?)
        })
    }

    /// **コール結果を保存** (`form`: the result form's JSON): saved now (offline,
    /// or the pick kept) or decided by the server's rules first.
    pub fn save_result(
        &mut self,
        now: Timestamp,
        customer: &str,
        call: &str,
        form: &str,
    ) -> Result<Value, PageError> {
        let customer = CustomerId::new(customer)?;
        let call = CallId::new(call)?;
        let form: ResultForm = serde_json::from_str(form).map_err(|e| input("result form", e))?;
        let outcome = self.drive(|s, rng, store| {
            Ok(s.save_result(now, rng, store, Some(&customer), &call, form, None)?)
        })?;
        Ok(outcome_json(outcome))
    }

    /// **手動コール**: a call made outside the system and its result.
    pub fn manual_call(
        &mut self,
        now: Timestamp,
        customer: &str,
        number: &str,
        form: &str,
    ) -> Result<Value, PageError> {
        let customer = CustomerId::new(customer)?;
        let form: ResultForm = serde_json::from_str(form).map_err(|e| input("result form", e))?;
        let outcome = self.drive(|s, rng, store| {
            Ok(s.manual_call(now, rng, store, &customer, number, form, None)?)
        })?;
        Ok(outcome_json(outcome))
    }

    /// What a logout now would leave unsent.
    pub fn unsent(&mut self) -> Result<Value, PageError> {
        let unsent =
            self.drive(|s, _, store| s.unsent(store).map_err(|e| PageError::Input(e.to_string())))?;
        Ok(json!(unsent))
    }

    /// Logs out (unsent work is sent first when online, else kept for this
    /// user's next login here).
    pub fn logout(&mut self, now: Timestamp) -> Result<(), PageError> {
        self.drive(|s, rng, store| {
            s.logout(now, rng, store)
                .map_err(|e: DeviceFailure| PageError::Input(e.to_string()))
        })
    }

    // --- reading -----------------------------------------------------------

    /// Starts the customer list over with `query` (a search on the server).
    pub fn list_customers(&mut self, now: Timestamp, query: &str) -> Result<u64, PageError> {
        let query = Some(query.to_owned());
        self.drive(|s, _, _| Ok(s.list_customers(now, query)?))
    }

    /// Asks the next page of the list, if there is one.
    pub fn more_customers(&mut self, now: Timestamp) -> Result<Option<u64>, PageError> {
        self.drive(|s, _, _| Ok(s.more_customers(now)?))
    }

    /// The list as the server answered so far (JSON `{query, rows, complete,
    /// loading}`).
    pub fn customer_listing(&self) -> Value {
        self.session.as_ref().map_or_else(
            || json!(callsync_session::device::listing::CustomerListing::default()),
            |s| json!(s.customer_listing()),
        )
    }

    /// The list this device can show with no network: the customers it last
    /// listed and those it holds, matching `query` as the server would (company,
    /// contact or id containing it; ASCII letters in any case), in id order.
    pub fn local_customers(&self, query: &str) -> Value {
        let mut rows: std::collections::BTreeMap<String, Value> = std::collections::BTreeMap::new();
        if let Some(Value::Array(listed)) = self
            .store
            .get(CUSTOMERS_KEY)
            .and_then(|bytes| serde_json::from_slice::<Value>(bytes).ok())
        {
            for row in listed {
                if let Some(id) = row["id"].as_str() {
                    rows.insert(id.to_owned(), row.clone());
                }
            }
        }
        for held in self.store.customers_held() {
            if let Ok(Some(doc)) = self.store.load_doc(&held, automerge::ActorId::random())
                && let Ok(c) = doc.customer()
            {
                rows.insert(
                    held.to_string(),
                    json!(CustomerSummary {
                        id: held.clone(),
                        company: c.company,
                        contact: c.contact,
                        owner: c.owner.to_string(),
                        status: c.status.as_str().to_owned(),
                    }),
                );
            }
        }
        let query = query.trim().to_ascii_lowercase();
        let matches = |row: &Value| {
            query.is_empty()
                || ["company", "contact", "id"].iter().any(|f| {
                    row[*f]
                        .as_str()
                        .is_some_and(|v| v.to_ascii_lowercase().contains(&query))
                })
        };
        Value::Array(rows.into_values().filter(matches).collect())
    }

    /// A customer as held here, with calls and timeline (`null` when this device
    /// does not hold it yet).
    pub fn customer(&self, id: &str) -> Result<Value, PageError> {
        let id = CustomerId::new(id)?;
        let Some(doc) = self
            .store
            .load_doc(&id, automerge::ActorId::random())
            .map_err(|e| PageError::Input(e.to_string()))?
        else {
            return Ok(Value::Null);
        };
        let customer = doc
            .customer()
            .map_err(|e| PageError::Refused(ActionError::Refused(e)))?;
        Ok(json!(CustomerDetail {
            customer,
            timeline: doc.timeline(),
        }))
    }

    /// The tenant's result types as synced here.
    pub fn catalog(&mut self) -> Value {
        let catalog = self
            .session
            .as_mut()
            .and_then(|s| s.catalog(&mut self.store).ok())
            .unwrap_or_else(callsync_core::ResultCatalog::standard);
        json!(catalog)
    }
}

fn outcome_json(outcome: SaveOutcome) -> Value {
    match outcome {
        SaveOutcome::Saved(view, kept) => json!(SaveOutcomeView {
            saved: Some(*view),
            kept,
            deciding: None,
        }),
        SaveOutcome::Deciding { ticket } => json!(SaveOutcomeView {
            saved: None,
            kept: None,
            deciding: Some(ticket),
        }),
    }
}

/// A view for the page, as JSON text.
pub fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use callsync_core::{
        CustomerDoc, NewCustomer, PhoneEntry, PhoneNumber, Role, TenantId, UserId,
    };

    const NUMBER: &str = "03-1234-5678";

    fn frame(message: &Message) -> Vec<u8> {
        wire::encode_frame(message).unwrap()
    }

    /// A page logged in as a rep, holding one customer, online.
    fn online_page() -> Replica {
        let mut page = Replica::new(7, 60_000);
        let mut doc = CustomerDoc::create(
            &NewCustomer {
                tenant: TenantId::new("acme").unwrap(),
                id: CustomerId::new("cus-1").unwrap(),
                company: "株式会社さくら物産".to_owned(),
                contact: "佐藤".to_owned(),
                owner: UserId::new("rep@acme.example").unwrap(),
                phones: vec![PhoneEntry {
                    label: "代表".to_owned(),
                    number: PhoneNumber::parse(NUMBER).unwrap(),
                }],
            },
            Timestamp::from_millis(1_000),
            automerge::ActorId::random(),
        )
        .unwrap();
        page.restore("doc:cus-1".to_owned(), doc.save());
        let now = Timestamp::from_millis(10_000);
        page.login_start(now, "rep@acme.example", "pw").unwrap();
        let answer = page
            .login_receive(
                now,
                &frame(&Message::LoggedIn {
                    token: "t".to_owned(),
                    expires_at: Timestamp::from_millis(i64::MAX / 2),
                    tenant: TenantId::new("acme").unwrap(),
                    user: UserId::new("rep@acme.example").unwrap(),
                    role: Role::User,
                    server_time: Some(now),
                }),
            )
            .unwrap()
            .unwrap();
        assert!(answer.get("loggedIn").is_some(), "{answer}");
        let (ticket, _) = page.take_flush().unwrap();
        page.flushed(now, ticket, true).unwrap();
        page.start(now).unwrap();
        assert_eq!(page.take_outgoing(), vec![Step::Connect]);
        page.connected(now).unwrap();
        let steps = page.take_outgoing();
        assert!(
            matches!(steps.as_slice(), [Step::Send(_)]),
            "join: {steps:?}"
        );
        page.receive(
            now,
            &frame(&Message::Peer {
                sender_id: "server".to_owned(),
                selected_protocol_version: wire::PROTOCOL_VERSION.to_owned(),
                tenant: TenantId::new("acme").unwrap(),
                user: UserId::new("rep@acme.example").unwrap(),
                role: Role::User,
                cursor: wire::Cursor {
                    epoch: "e".to_owned(),
                    seq: 1,
                },
                changed: Vec::new(),
                config_heads: Vec::new(),
                server_time: Some(now),
            }),
        )
        .unwrap();
        while let Some((ticket, _)) = page.take_flush() {
            page.flushed(now, ticket, true).unwrap();
        }
        page.take_outgoing();
        page.take_events();
        page
    }

    fn request(page: &mut Replica) -> Result<CallView, PageError> {
        page.request_call(
            Timestamp::from_millis(20_000),
            "cus-1",
            NUMBER,
            "phone-1",
            true,
        )
    }

    #[test]
    fn nothing_is_sent_before_indexeddb_confirms_the_writes_it_depends_on() {
        let mut page = online_page();
        request(&mut page).unwrap();
        assert!(page.take_outgoing().is_empty(), "held behind its writes");
        let (ticket, records) = page.take_flush().unwrap();
        assert!(records.iter().any(|(k, _)| k == "doc:cus-1"));
        assert!(records.iter().any(|(k, _)| k == "outbox:cus-1"));
        assert!(page.take_outgoing().is_empty(), "handed out is not written");
        page.flushed(Timestamp::from_millis(20_001), ticket, true)
            .unwrap();
        let steps = page.take_outgoing();
        assert!(
            steps.iter().any(|s| matches!(s, Step::Send(_))),
            "the change goes once written: {steps:?}"
        );
    }

    #[test]
    fn a_failed_indexeddb_write_sends_nothing_undoes_the_change_and_tells_the_rep() {
        let mut page = online_page();
        let before = page.customer("cus-1").unwrap();
        request(&mut page).unwrap();
        let (ticket, _) = page.take_flush().unwrap();
        page.flushed(Timestamp::from_millis(20_001), ticket, false)
            .unwrap();
        assert_eq!(page.customer("cus-1").unwrap(), before, "undone");
        let steps = page.take_outgoing();
        assert!(
            !steps.iter().any(|s| matches!(s, Step::Send(_))),
            "nothing sent: {steps:?}"
        );
        assert!(steps.contains(&Step::Close));
        let events = page.take_events();
        assert!(
            events.iter().any(|e| e["event"] == "storage-failed"),
            "{events:?}"
        );
        assert!(
            !events.iter().any(|e| e["event"] == "document"),
            "nothing of the failed batch is shown: {events:?}"
        );
        assert_eq!(
            page.state(Timestamp::from_millis(20_002))["phase"],
            "offline"
        );
    }

    #[test]
    fn refused_actions_are_typed_and_change_nothing() {
        let mut page = online_page();
        let before = page.customer("cus-1").unwrap();
        // A customer this device does not hold.
        let refused = page
            .request_call(
                Timestamp::from_millis(20_000),
                "cus-2",
                NUMBER,
                "phone-1",
                true,
            )
            .unwrap_err();
        assert_eq!(refused.to_json()["code"], "not-held");
        // A number the customer does not have: the core's rule, with its code.
        let refused = page
            .request_call(
                Timestamp::from_millis(20_000),
                "cus-1",
                "06-9999-9999",
                "phone-1",
                true,
            )
            .unwrap_err();
        assert!(refused.to_json()["messageJa"].as_str().is_some());
        assert!(matches!(
            page.call_event(Timestamp::from_millis(3_000), "cus-1", "call-1", "dialed"),
            Err(PageError::Input(_))
        ));
        assert!(matches!(
            page.save_result(
                Timestamp::from_millis(3_000),
                "cus-1",
                "call-1",
                "{not json"
            ),
            Err(PageError::Input(_))
        ));
        // A result for a call that never took place: the core refuses it.
        let refused = page
            .save_result(
                Timestamp::from_millis(3_000),
                "cus-1",
                "call-9",
                r#"{"resultType":"appointment","option":"none"}"#,
            )
            .unwrap_err();
        assert_eq!(refused.to_json()["code"], "call-never-started");
        assert_eq!(page.customer("cus-1").unwrap(), before);
        assert!(page.take_flush().is_none(), "nothing to persist");
        assert!(page.take_outgoing().is_empty());
    }

    #[test]
    fn a_broken_frame_from_the_server_drops_the_connection() {
        let mut page = online_page();
        assert!(
            page.receive(
                Timestamp::from_millis(20_000),
                &[0xff, 0xff, 0xff, 0xff, 1, 2, 3]
            )
            .is_err()
        );
        assert!(page.take_outgoing().contains(&Step::Close));
        assert_eq!(
            page.state(Timestamp::from_millis(20_000))["phase"],
            "offline"
        );
    }
}
