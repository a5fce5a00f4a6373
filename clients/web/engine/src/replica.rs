//! The page's replica: one device's documents, its session with the server, and
//! the rep's actions, driven by the page's TypeScript.
//!
//! Owns: turning the WebTransport stream's bytes into messages and back (the
//! core's frames), one client session per connection, running each session call
//! as one transaction over the [`PageStore`] (commit on success, roll back and
//! drop the connection on failure), replies to requests, and the rep's actions
//! (request a call, cancel, end) checked by the core's rules on the documents
//! held here, offline too. Times come in from the page (`now`), so everything
//! here is deterministic and runs natively in tests.
//! Does not own: the socket, the clock, IndexedDB or the screens (the page).
//!
//! Call order, per connection: [`Replica::connect`]; then [`Replica::receive`]
//! for every chunk the stream delivers; after every call that returns `Ok`, the
//! page persists [`Replica::take_flush`] and only then writes
//! [`Replica::take_outgoing`] to the stream and shows [`Replica::take_events`];
//! [`Replica::disconnected`] when the stream ends. Actions work with or without
//! a connection; their changes reach the server through the outbox.

use automerge::ActorId;
use callsync_core::wire::{self, FRAME_HEADER_BYTES, Message, RpcCall, RpcResult};
use callsync_core::{
    CallEvent, CallId, CallView, CoreError, CustomerDoc, CustomerId, DeviceId, DeviceKind, EventId,
    EventKind, PhoneNumber, ResultCatalog, Role, RuleContext, SavedResultFields, Stamp, TenantId,
    Timestamp, UserId,
};
use callsync_session::client::{ClientOutput, ClientSession, Device};
use serde::Serialize;
use serde_json::{Value, json};

use callsync_core::tenant_config::TenantConfigDoc;

use crate::store::{CONFIG_KEY, CUSTOMERS_KEY, PageDoc, PageStore};

/// Why the page's call failed.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// The rules refused the action; nothing changed.
    #[error("{0}")]
    Refused(#[from] CoreError),
    /// The server broke the protocol or refused the session; the page drops the
    /// connection and reconnects.
    #[error("{0}")]
    Connection(String),
    /// Something the page passed in is not what it should be.
    #[error("{0}")]
    Input(String),
}

impl From<callsync_core::id::IdError> for PageError {
    fn from(e: callsync_core::id::IdError) -> Self {
        Self::Refused(e.into())
    }
}

impl From<callsync_core::phone_number::PhoneNumberError> for PageError {
    fn from(e: callsync_core::phone_number::PhoneNumberError) -> Self {
        Self::Refused(e.into())
    }
}

impl PageError {
    /// The error as the page shows it: a stable code and the message in both
    /// languages.
    pub fn to_json(&self) -> Value {
        match self {
            Self::Refused(e) => json!({
                "code": e.code(),
                "message": e.to_string(),
                "messageJa": e.message_ja(),
            }),
            Self::Connection(m) => json!({ "code": "connection", "message": m, "messageJa": m }),
            Self::Input(m) => json!({ "code": "input", "message": m, "messageJa": m }),
        }
    }
}

/// Who the page is logged in as.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The tenant.
    pub tenant: TenantId,
    /// The user.
    pub user: UserId,
    /// Their role.
    pub role: Role,
    /// This browser's device id.
    pub device: DeviceId,
    /// The Automerge actor it writes under.
    pub actor: ActorId,
}

/// One logged-in page's replica.
pub struct Replica {
    me: Identity,
    start_limit_ms: i64,
    store: PageStore,
    session: Option<ClientSession<PageDoc>>,
    joined: bool,
    inbound: Vec<u8>,
    outgoing: Vec<u8>,
    events: Vec<Value>,
    /// Requests in flight, by id.
    asked: Vec<u64>,
}

fn connection(e: impl std::fmt::Display) -> PageError {
    PageError::Connection(e.to_string())
}

fn push_frame(out: &mut Vec<u8>, message: &Message) -> Result<(), PageError> {
    out.extend(wire::encode_frame(message).map_err(connection)?);
    Ok(())
}

impl Replica {
    /// A replica for `me`, empty until the page restores its records.
    pub fn new(me: Identity, start_limit_ms: i64) -> Self {
        Self {
            me,
            start_limit_ms,
            store: PageStore::default(),
            session: None,
            joined: false,
            inbound: Vec::new(),
            outgoing: Vec::new(),
            events: Vec::new(),
            asked: Vec::new(),
        }
    }

    /// Puts back one record read from IndexedDB (at start-up, before anything else).
    pub fn restore(&mut self, key: String, value: Vec<u8>) {
        self.store.restore(key, value);
    }

    /// Starts a session on a new connection: queues `join` with `token`.
    pub fn connect(&mut self, token: &str) -> Result<(), PageError> {
        let session = ClientSession::new(Device {
            tenant: self.me.tenant.clone(),
            id: self.me.device.clone(),
            actor: self.me.actor.clone(),
        });
        let join = session.join(&mut self.store, token).map_err(connection)?;
        self.session = Some(session);
        self.joined = false;
        self.inbound.clear();
        self.outgoing.clear();
        self.asked.clear();
        push_frame(&mut self.outgoing, &join)
    }

    /// Whether the session has been accepted (`peer` arrived).
    pub fn is_joined(&self) -> bool {
        self.session.is_some() && self.joined
    }

    /// The connection ended: the session is dropped; documents, the outbox and
    /// the cursor stay.
    pub fn disconnected(&mut self, reason: &str) {
        if self.session.take().is_some() {
            self.events
                .push(json!({ "event": "disconnected", "reason": reason }));
        }
        self.joined = false;
        self.inbound.clear();
        self.outgoing.clear();
        self.asked.clear();
    }

    /// Feeds bytes the stream delivered; whole frames are handled, a partial one
    /// waits for the rest.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<(), PageError> {
        self.inbound.extend_from_slice(bytes);
        let mut at = 0;
        let result = loop {
            let Some(header) = self.inbound.get(at..at + FRAME_HEADER_BYTES) else {
                break Ok(());
            };
            let mut len = [0u8; FRAME_HEADER_BYTES];
            len.copy_from_slice(header);
            let len = match wire::frame_body_len(len) {
                Ok(len) => len,
                Err(e) => break Err(connection(e)),
            };
            let start = at + FRAME_HEADER_BYTES;
            let Some(body) = self.inbound.get(start..start + len) else {
                break Ok(());
            };
            let message = match wire::decode_body(body) {
                Ok(message) => message,
                Err(e) => break Err(connection(e)),
            };
            at = start + len;
            if let Err(e) = self.handle(message) {
                break Err(e);
            }
        };
        self.inbound.drain(..at);
        result
    }

    fn handle(&mut self, message: Message) -> Result<(), PageError> {
        let Some(session) = self.session.as_mut() else {
            return Err(connection("no session"));
        };
        let mut out = ClientOutput::default();
        let outcome = if self.joined {
            session.handle(&mut self.store, message, &mut out)
        } else {
            session.on_peer(&mut self.store, message, &mut out)
        };
        if let Err(e) = outcome {
            self.store.rollback();
            return Err(connection(e));
        }
        self.joined = true;
        let mut replies = Vec::new();
        self.asked.retain(|id| match session.take_reply(*id) {
            Some(result) => {
                replies.push((*id, result));
                false
            }
            None => true,
        });
        for (id, result) in replies {
            if let RpcResult::Customers(list) = &result
                && let Ok(bytes) = serde_json::to_vec(list)
            {
                // Kept for offline use: the list opens with no network.
                self.store.put(CUSTOMERS_KEY.to_owned(), bytes);
            }
            self.events
                .push(json!({ "event": "reply", "id": id, "result": result }));
        }
        self.commit();
        for message in &out.messages {
            push_frame(&mut self.outgoing, message)?;
        }
        for event in out.events {
            self.events
                .push(serde_json::to_value(event).map_err(connection)?);
        }
        if let Some(refused) = out.refused {
            return Err(PageError::Connection(format!(
                "{}: {}",
                refused.code, refused.message
            )));
        }
        Ok(())
    }

    /// Commits the store's pending writes; each document written is reported as
    /// a `document` event, so the screens redraw what changed (a document synced
    /// from the server reports nothing else).
    fn commit(&mut self) {
        for customer in self.store.commit() {
            self.events
                .push(json!({ "event": "document", "customer": customer }));
        }
    }

    /// Asks the server something (`call` as the wire's JSON); the answer comes as
    /// a `reply` event with the returned id.
    pub fn ask(&mut self, call: &str) -> Result<u64, PageError> {
        let call: RpcCall =
            serde_json::from_str(call).map_err(|e| PageError::Input(e.to_string()))?;
        let Some(session) = self.session.as_mut().filter(|_| self.joined) else {
            return Err(connection("not connected"));
        };
        let mut out = ClientOutput::default();
        let id = session.send_rpc(call, &mut out);
        self.asked.push(id);
        for message in &out.messages {
            push_frame(&mut self.outgoing, message)?;
        }
        Ok(id)
    }

    /// Committed writes for IndexedDB (`None`: delete). Persist them before
    /// [`Self::take_outgoing`].
    pub fn take_flush(&mut self) -> Vec<(String, Option<Vec<u8>>)> {
        self.store.take_flush()
    }

    /// Bytes for the stream, once IndexedDB holds what produced them.
    pub fn take_outgoing(&mut self) -> Result<Vec<u8>, PageError> {
        if self.store.has_flush() {
            return Err(PageError::Input(
                "persist the flushed records before sending".to_owned(),
            ));
        }
        Ok(std::mem::take(&mut self.outgoing))
    }

    /// What happened since the last call, for the screens.
    pub fn take_events(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.events)
    }

    /// The last customer list the server sent (JSON array), for offline use.
    pub fn customers(&self) -> Value {
        self.store
            .get(CUSTOMERS_KEY)
            .and_then(|bytes| serde_json::from_slice(bytes).ok())
            .unwrap_or_else(|| json!([]))
    }

    /// A customer as held here, with its calls derived (`null` when this device
    /// does not hold it yet).
    pub fn customer(&self, id: &str) -> Result<Value, PageError> {
        let id = CustomerId::new(id)?;
        let Some(doc) = self
            .store
            .load_doc(&id, self.me.actor.clone())
            .map_err(|e| PageError::Connection(e.to_string()))?
        else {
            return Ok(Value::Null);
        };
        let customer = doc.customer()?;
        Ok(json!({
            "customer": customer,
            "timeline": doc.timeline(),
        }))
    }

    /// The tenant's result types: the active rule set's, as synced here (the
    /// standard ones before the first sync).
    pub fn catalog(&self) -> ResultCatalog {
        self.store
            .get(CONFIG_KEY)
            .and_then(|bytes| TenantConfigDoc::load(bytes, self.me.actor.clone()).ok())
            .and_then(|doc| doc.config().ok())
            .filter(|config| config.active.is_some())
            .map(|config| config.catalog())
            .unwrap_or_else(ResultCatalog::standard)
    }

    /// A document this device holds, to read or act on; refused when it does not
    /// hold it (yet).
    fn held(&self, customer: &CustomerId) -> Result<CustomerDoc, PageError> {
        self.store
            .load_doc(customer, self.me.actor.clone())
            .map_err(|e| PageError::Connection(e.to_string()))?
            .ok_or_else(|| {
                PageError::Input(format!("customer {customer} is not held on this device"))
            })
    }

    /// Records `events` on one customer as one local change, checked by the core's
    /// rules (the user's open calls on the other customers held here included),
    /// then offers it to the server if connected.
    fn act(
        &mut self,
        customer: &CustomerId,
        events: Vec<CallEvent>,
    ) -> Result<CallView, PageError> {
        let catalog = self.catalog();
        let mut others = Vec::new();
        for held in self.store.customers_held() {
            if &held == customer {
                continue;
            }
            if let Ok(Some(doc)) = self.store.load_doc(&held, self.me.actor.clone())
                && let Ok(c) = doc.customer()
            {
                others.extend(callsync_core::rules::open_calls_of(&c, &self.me.user));
            }
        }
        let mut doc = self.held(customer)?;
        let ctx = RuleContext {
            catalog: &catalog,
            start_limit_ms: self.start_limit_ms,
            other_open_calls: &others,
        };
        let view = doc.record_all(events, &ctx)?;
        self.store.save_local(&mut doc);
        self.commit();
        if let Some(session) = self.session.as_mut().filter(|_| self.joined) {
            let mut out = ClientOutput::default();
            match session.push_local(&mut self.store, &mut out) {
                Ok(()) => {
                    self.commit();
                    for message in &out.messages {
                        push_frame(&mut self.outgoing, message)?;
                    }
                }
                // The change is saved; the session is not usable: the page
                // hears `disconnected`, and the next connection pushes it.
                Err(e) => {
                    self.store.rollback();
                    self.disconnected(&e.to_string());
                }
            }
        }
        Ok(view)
    }

    fn stamp(&self, now: Timestamp) -> Stamp {
        Stamp {
            at: now,
            device: self.me.device.clone(),
            device_kind: DeviceKind::Desk,
            user: self.me.user.clone(),
            device_at: None,
        }
    }

    fn event(
        &self,
        call: &CallId,
        now: Timestamp,
        id: &str,
        kind: EventKind,
    ) -> Result<CallEvent, PageError> {
        Ok(CallEvent {
            id: EventId::new(id)?,
            call: call.clone(),
            stamp: self.stamp(now),
            kind,
        })
    }

    /// **顧客にコール**: asks the phone `origin` to dial `number`. `call` and
    /// `event` are fresh ids from the page (random).
    #[allow(clippy::too_many_arguments)]
    pub fn request_call(
        &mut self,
        customer: &str,
        number: &str,
        origin: &str,
        recording: bool,
        now: Timestamp,
        call: &str,
        event: &str,
    ) -> Result<CallView, PageError> {
        let customer = CustomerId::new(customer)?;
        let call = CallId::new(call)?;
        let kind = EventKind::Requested {
            destination: PhoneNumber::parse(number)?,
            origin: DeviceId::new(origin)?,
            recording,
        };
        let event = self.event(&call, now, event, kind)?;
        self.act(&customer, vec![event])
    }

    /// An event on an existing call of `customer`: **コールをキャンセル**
    /// (`cancelled`) or the red end button (`browser-ended`).
    pub fn call_event(
        &mut self,
        customer: &str,
        call: &str,
        what: &str,
        now: Timestamp,
        event: &str,
    ) -> Result<CallView, PageError> {
        let customer = CustomerId::new(customer)?;
        let call = CallId::new(call)?;
        let kind = match what {
            "cancelled" => EventKind::Cancelled,
            "browser-ended" => EventKind::BrowserEnded,
            other => return Err(PageError::Input(format!("unknown action {other}"))),
        };
        let event = self.event(&call, now, event, kind)?;
        self.act(&customer, vec![event])
    }

    /// **コール結果を保存**: the result form's fields (`fields`: the wire's JSON of
    /// the form), checked by the core's rules (the browser must have ended the
    /// call; the type and option must be the tenant's).
    pub fn save_result(
        &mut self,
        customer: &str,
        call: &str,
        fields: &str,
        now: Timestamp,
        event: &str,
    ) -> Result<CallView, PageError> {
        let customer = CustomerId::new(customer)?;
        let call = CallId::new(call)?;
        // With a connection the fields come decided by the tenant's rules (a
        // `decide-result` answer, decision record included; the hub re-runs it);
        // offline they are the rep's pick as made.
        let fields: SavedResultFields =
            serde_json::from_str(fields).map_err(|e| PageError::Input(e.to_string()))?;
        let event = self.event(&call, now, event, EventKind::ResultSaved(fields))?;
        self.act(&customer, vec![event])
    }

    /// **手動コール**: logs a call made outside the system (with `number`) and its
    /// result as one change.
    #[allow(clippy::too_many_arguments)]
    pub fn manual_call(
        &mut self,
        customer: &str,
        number: &str,
        fields: &str,
        now: Timestamp,
        call: &str,
        events: [&str; 2],
    ) -> Result<CallView, PageError> {
        let customer = CustomerId::new(customer)?;
        let call = CallId::new(call)?;
        let fields: SavedResultFields =
            serde_json::from_str(fields).map_err(|e| PageError::Input(e.to_string()))?;
        let logged = EventKind::ManualCall {
            number: PhoneNumber::parse(number)?,
        };
        let events = vec![
            self.event(&call, now, events[0], logged)?,
            self.event(&call, now, events[1], EventKind::ResultSaved(fields))?,
        ];
        self.act(&customer, events)
    }

    /// What the rules see of a call for its result (`decide-result`'s `endedAt`
    /// and `attempt`): of `call`, or of a manual call logged now when `call` is
    /// `None`.
    pub fn call_facts(
        &self,
        customer: &str,
        call: Option<&str>,
        now: Timestamp,
    ) -> Result<Value, PageError> {
        let held = self.held(&CustomerId::new(customer)?)?.customer()?;
        let facts = match call {
            Some(call) => {
                let call = CallId::new(call)?;
                callsync_core::plugin::call_facts(&held, &call)
                    .ok_or_else(|| PageError::Input(format!("call {call} never took place")))?
            }
            None => callsync_core::plugin::CallFacts {
                ended_at: now,
                attempt: u32::try_from(held.calls.iter().filter(|c| c.took_place()).count() + 1)
                    .unwrap_or(u32::MAX),
            },
        };
        Ok(json!({ "endedAt": facts.ended_at, "attempt": facts.attempt }))
    }
}

/// The `login` frame (sent on its own connection, before any session).
pub fn login_frame(
    email: &str,
    password: &str,
    device: &str,
    actor: &str,
) -> Result<Vec<u8>, PageError> {
    let message = Message::Login {
        supported_protocol_versions: vec![wire::PROTOCOL_VERSION.to_owned()],
        email: email.to_owned(),
        password: password.to_owned(),
        device: wire::DeviceRegistration {
            id: DeviceId::new(device)?,
            kind: DeviceKind::Desk,
            actor: actor.to_owned(),
        },
    };
    wire::encode_frame(&message).map_err(connection)
}

/// The server's answer to `login`, from the bytes read so far: `None` until a
/// whole frame has arrived, then the session (`loggedIn`) or the refusal (`error`).
pub fn login_reply(bytes: &[u8]) -> Result<Option<Value>, PageError> {
    let Some(header) = bytes.get(..FRAME_HEADER_BYTES) else {
        return Ok(None);
    };
    let mut len = [0u8; FRAME_HEADER_BYTES];
    len.copy_from_slice(header);
    let len = wire::frame_body_len(len).map_err(connection)?;
    let Some(body) = bytes.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len) else {
        return Ok(None);
    };
    match wire::decode_body(body).map_err(connection)? {
        Message::LoggedIn {
            token,
            expires_at,
            tenant,
            user,
            role,
            ..
        } => Ok(Some(json!({
            "loggedIn": { "token": token, "expiresAt": expires_at, "tenant": tenant, "user": user, "role": role }
        }))),
        Message::Error(body) => Ok(Some(json!({ "error": body }))),
        other => Err(connection(format!(
            "expected 'logged-in', got '{}'",
            other.kind()
        ))),
    }
}

/// A view for the page, as JSON text.
pub fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use callsync_core::{NewCustomer, PhoneEntry};

    const NUMBER: &str = "03-1234-5678";

    fn replica_holding_a_customer() -> Replica {
        let me = Identity {
            tenant: TenantId::new("acme").unwrap(),
            user: UserId::new("rep@acme.example").unwrap(),
            role: Role::User,
            device: DeviceId::new("desk-web-1").unwrap(),
            actor: ActorId::random(),
        };
        let mut doc = CustomerDoc::create(
            &NewCustomer {
                tenant: me.tenant.clone(),
                id: CustomerId::new("cus-1").unwrap(),
                company: "株式会社さくら物産".to_owned(),
                contact: "佐藤".to_owned(),
                owner: me.user.clone(),
                phones: vec![PhoneEntry {
                    label: "代表".to_owned(),
                    number: PhoneNumber::parse(NUMBER).unwrap(),
                }],
            },
            Timestamp::from_millis(1_000),
            ActorId::random(),
        )
        .unwrap();
        let mut replica = Replica::new(me, 60_000);
        replica.restore("doc:cus-1".to_owned(), doc.save());
        replica
    }

    fn request(replica: &mut Replica, customer: &str, number: &str) -> Result<CallView, PageError> {
        replica.request_call(
            customer,
            number,
            "phone-1",
            true,
            Timestamp::from_millis(2_000),
            "call-1",
            "ev-1",
        )
    }

    #[test]
    fn nothing_is_sent_before_the_committed_writes_are_persisted() {
        let mut replica = replica_holding_a_customer();
        request(&mut replica, "cus-1", NUMBER).unwrap();
        assert!(matches!(replica.take_outgoing(), Err(PageError::Input(_))));
        let flushed = replica.take_flush();
        assert!(flushed.iter().any(|(k, _)| k == "doc:cus-1"));
        assert!(flushed.iter().any(|(k, _)| k == "outbox:cus-1"));
        assert!(replica.take_outgoing().is_ok());
    }

    #[test]
    fn refused_actions_are_typed_and_change_nothing() {
        let mut replica = replica_holding_a_customer();
        let before = replica.customer("cus-1").unwrap();
        // A customer this device does not hold.
        assert!(matches!(
            request(&mut replica, "cus-2", NUMBER),
            Err(PageError::Input(_))
        ));
        // A number the customer does not have: the core's rule, with its code.
        let refused = request(&mut replica, "cus-1", "06-9999-9999").unwrap_err();
        assert!(matches!(refused, PageError::Refused(_)));
        assert!(refused.to_json()["messageJa"].as_str().is_some());
        // A malformed id, an unknown action, a result form that is not one.
        assert!(matches!(
            request(&mut replica, "cus 1", NUMBER),
            Err(PageError::Refused(_))
        ));
        assert!(matches!(
            replica.call_event(
                "cus-1",
                "call-1",
                "dialed",
                Timestamp::from_millis(3_000),
                "ev-2"
            ),
            Err(PageError::Input(_))
        ));
        assert!(matches!(
            replica.save_result(
                "cus-1",
                "call-1",
                "{not json",
                Timestamp::from_millis(3_000),
                "ev-3"
            ),
            Err(PageError::Input(_))
        ));
        // A result for a call that never took place: the core refuses it.
        assert!(matches!(
            replica.save_result(
                "cus-1",
                "call-9",
                r#"{"result_type":"appointment","option":{"kind":"none"}}"#,
                Timestamp::from_millis(3_000),
                "ev-4",
            ),
            Err(PageError::Refused(_))
        ));
        assert_eq!(replica.customer("cus-1").unwrap(), before);
        assert!(replica.take_flush().is_empty(), "nothing to persist");
        assert!(replica.take_outgoing().unwrap().is_empty());
    }

    #[test]
    fn a_broken_frame_from_the_server_ends_the_session() {
        let mut replica = replica_holding_a_customer();
        replica.connect("token").unwrap();
        replica.take_outgoing().unwrap();
        // A length past the frame limit, then garbage.
        assert!(matches!(
            replica.receive(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]),
            Err(PageError::Connection(_))
        ));
        let mut replica = replica_holding_a_customer();
        replica.connect("token").unwrap();
        assert!(matches!(
            replica.receive(&[0, 0, 0, 2, 0xff, 0xff]),
            Err(PageError::Connection(_))
        ));
        assert!(replica.take_flush().is_empty());
    }
}
