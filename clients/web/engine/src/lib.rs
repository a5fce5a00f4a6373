//! The engine in the page: the core and the client session, compiled to
//! WebAssembly and called by the page's TypeScript through `wasm-bindgen`.
//!
//! Owns: the bindings ([`WebReplica`] and the login helpers), which pass bytes
//! and JSON text only, so the page's code stays a drawing and input layer and
//! every rule runs here, the same code the phone and the server run.
//! Does not own: the logic (`replica`, `store`), which builds and is tested
//! natively too.

pub mod replica;
pub mod store;

use callsync_core::{ActorId, DeviceId, Role, TenantId, Timestamp, UserId};
use wasm_bindgen::prelude::*;

use crate::replica::{Identity, PageError, Replica, to_json};

fn js_error(e: PageError) -> JsError {
    JsError::new(&e.to_json().to_string())
}

fn input(what: &str, e: impl std::fmt::Display) -> JsError {
    js_error(PageError::Input(format!("{what}: {e}")))
}

/// The `login` frame to send on a fresh connection.
#[wasm_bindgen(js_name = loginFrame)]
pub fn login_frame(
    email: &str,
    password: &str,
    device: &str,
    actor: &str,
) -> Result<Vec<u8>, JsError> {
    replica::login_frame(email, password, device, actor).map_err(js_error)
}

/// The server's answer to `login` as JSON text, or `undefined` until a whole
/// frame has been read.
#[wasm_bindgen(js_name = loginReply)]
pub fn login_reply(bytes: &[u8]) -> Result<Option<String>, JsError> {
    Ok(replica::login_reply(bytes)
        .map_err(js_error)?
        .map(|v| v.to_string()))
}

/// What a race flag asks of the rep (`ja`: in Japanese), the same words the
/// phone says; `undefined` for a flag that needs nothing done.
#[wasm_bindgen(js_name = raceAdvice)]
pub fn race_advice(flag: &str, ja: bool) -> Option<String> {
    callsync_core::Flag::parse(flag)
        .and_then(callsync_core::Flag::advice)
        .map(|(en, jp)| if ja { jp } else { en }.to_owned())
}

/// One logged-in page's replica (see `replica::Replica` for the call order).
#[wasm_bindgen]
pub struct WebReplica {
    inner: Replica,
}

/// A committed write for IndexedDB.
#[wasm_bindgen(getter_with_clone)]
pub struct FlushRecord {
    /// The record's key.
    pub key: String,
    /// Its bytes; `undefined` to delete it.
    pub value: Option<Vec<u8>>,
}

#[wasm_bindgen]
impl WebReplica {
    /// A replica for the logged-in user; `actor` is the device's Automerge actor
    /// (hex), `start_limit_ms` the server's start limit.
    #[wasm_bindgen(constructor)]
    pub fn new(
        tenant: &str,
        user: &str,
        role: &str,
        device: &str,
        actor: &str,
        start_limit_ms: f64,
    ) -> Result<WebReplica, JsError> {
        let me = Identity {
            tenant: TenantId::new(tenant).map_err(|e| input("tenant", e))?,
            user: UserId::new(user).map_err(|e| input("user", e))?,
            role: Role::parse(role).ok_or_else(|| input("role", role))?,
            device: DeviceId::new(device).map_err(|e| input("device", e))?,
            actor: ActorId::try_from(actor).map_err(|e| input("actor", e))?,
        };
        Ok(Self {
            inner: Replica::new(me, start_limit_ms as i64),
        })
    }

    /// Puts back a record read from IndexedDB (at start-up).
    pub fn restore(&mut self, key: String, value: Vec<u8>) {
        self.inner.restore(key, value);
    }

    /// Starts a session on a new connection (queues `join`).
    pub fn connect(&mut self, token: &str) -> Result<(), JsError> {
        self.inner.connect(token).map_err(js_error)
    }

    /// Whether the server accepted the session.
    #[wasm_bindgen(getter)]
    pub fn joined(&self) -> bool {
        self.inner.is_joined()
    }

    /// The connection ended.
    pub fn disconnected(&mut self, reason: &str) {
        self.inner.disconnected(reason);
    }

    /// Bytes the stream delivered. An error means: drop the connection.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<(), JsError> {
        self.inner.receive(bytes).map_err(js_error)
    }

    /// Asks the server something (`call`: the wire's JSON); the answer arrives as
    /// a `reply` event with this id.
    pub fn ask(&mut self, call: &str) -> Result<f64, JsError> {
        self.inner.ask(call).map(|id| id as f64).map_err(js_error)
    }

    /// Committed writes to persist, in one IndexedDB transaction, before
    /// `takeOutgoing`.
    #[wasm_bindgen(js_name = takeFlush)]
    pub fn take_flush(&mut self) -> Vec<FlushRecord> {
        self.inner
            .take_flush()
            .into_iter()
            .map(|(key, value)| FlushRecord { key, value })
            .collect()
    }

    /// Bytes for the stream.
    #[wasm_bindgen(js_name = takeOutgoing)]
    pub fn take_outgoing(&mut self) -> Result<Vec<u8>, JsError> {
        self.inner.take_outgoing().map_err(js_error)
    }

    /// Events since the last call, as a JSON array.
    #[wasm_bindgen(js_name = takeEvents)]
    pub fn take_events(&mut self) -> String {
        to_json(&self.inner.take_events())
    }

    /// The last customer list (JSON array).
    pub fn customers(&self) -> String {
        self.inner.customers().to_string()
    }

    /// A customer as held here, with calls and timeline (JSON; `null` if not held).
    pub fn customer(&self, id: &str) -> Result<String, JsError> {
        Ok(self.inner.customer(id).map_err(js_error)?.to_string())
    }

    /// 顧客にコール. Returns the call (JSON).
    #[wasm_bindgen(js_name = requestCall)]
    #[allow(clippy::too_many_arguments)]
    pub fn request_call(
        &mut self,
        customer: &str,
        number: &str,
        origin: &str,
        recording: bool,
        now_ms: f64,
        call: &str,
        event: &str,
    ) -> Result<String, JsError> {
        let view = self
            .inner
            .request_call(
                customer,
                number,
                origin,
                recording,
                Timestamp::from_millis(now_ms as i64),
                call,
                event,
            )
            .map_err(js_error)?;
        Ok(to_json(&view))
    }

    /// コールをキャンセル (`cancelled`) or the end button (`browser-ended`).
    #[wasm_bindgen(js_name = callEvent)]
    pub fn call_event(
        &mut self,
        customer: &str,
        call: &str,
        what: &str,
        now_ms: f64,
        event: &str,
    ) -> Result<String, JsError> {
        let view = self
            .inner
            .call_event(
                customer,
                call,
                what,
                Timestamp::from_millis(now_ms as i64),
                event,
            )
            .map_err(js_error)?;
        Ok(to_json(&view))
    }

    /// コール結果を保存 (`fields`: the form as the wire's JSON). Returns the call.
    #[wasm_bindgen(js_name = saveResult)]
    pub fn save_result(
        &mut self,
        customer: &str,
        call: &str,
        fields: &str,
        now_ms: f64,
        event: &str,
    ) -> Result<String, JsError> {
        let view = self
            .inner
            .save_result(
                customer,
                call,
                fields,
                Timestamp::from_millis(now_ms as i64),
                event,
            )
            .map_err(js_error)?;
        Ok(to_json(&view))
    }

    /// 手動コール: a call made outside the system and its result (`fields`: the
    /// form as the wire's JSON), as one change. Returns the call.
    #[wasm_bindgen(js_name = manualCall)]
    #[allow(clippy::too_many_arguments)]
    pub fn manual_call(
        &mut self,
        customer: &str,
        number: &str,
        fields: &str,
        now_ms: f64,
        call: &str,
        logged_event: &str,
        result_event: &str,
    ) -> Result<String, JsError> {
        let view = self
            .inner
            .manual_call(
                customer,
                number,
                fields,
                Timestamp::from_millis(now_ms as i64),
                call,
                [logged_event, result_event],
            )
            .map_err(js_error)?;
        Ok(to_json(&view))
    }

    /// What the rules see of a call for its result (JSON `{endedAt, attempt}`);
    /// `call` undefined: a manual call logged now.
    #[wasm_bindgen(js_name = callFacts)]
    pub fn call_facts(
        &self,
        customer: &str,
        call: Option<String>,
        now_ms: f64,
    ) -> Result<String, JsError> {
        Ok(self
            .inner
            .call_facts(
                customer,
                call.as_deref(),
                Timestamp::from_millis(now_ms as i64),
            )
            .map_err(js_error)?
            .to_string())
    }

    /// The tenant's result types (JSON array), for the result form.
    #[wasm_bindgen(js_name = resultTypes)]
    pub fn result_types(&self) -> String {
        to_json(&self.inner.catalog())
    }
}
