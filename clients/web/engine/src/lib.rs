//! The engine in the page: the core and the device session, compiled to
//! WebAssembly and called by the page's TypeScript through `wasm-bindgen`.
//!
//! Owns: the bindings ([`WebDevice`]), which pass bytes, numbers and JSON text
//! only, so the page's code stays a drawing, storage and transport layer and
//! every decision runs here, the same code the phone and the CLI's desk run.
//! Does not own: the logic (`replica`, `store`), which builds and is tested
//! natively too.

pub mod replica;
pub mod store;
pub mod views;

use callsync_core::Timestamp;
use wasm_bindgen::prelude::*;

use crate::replica::{PageError, Replica, Step, to_json};

fn js_error(e: PageError) -> JsError {
    JsError::new(&e.to_json().to_string())
}

fn at(now_ms: f64) -> Timestamp {
    Timestamp::from_millis(now_ms as i64)
}

/// What a race flag asks of the rep (`ja`: in Japanese), the same words the
/// phone says; `undefined` for a flag that needs nothing done.
#[wasm_bindgen(js_name = raceAdvice)]
pub fn race_advice(flag: &str, ja: bool) -> Option<String> {
    callsync_core::Flag::parse(flag)
        .and_then(callsync_core::Flag::advice)
        .map(|(en, jp)| if ja { jp } else { en }.to_owned())
}

/// The engine's words for the screens (JSON): every phase (`name`, `en`, `ja`,
/// whether it is `open`, and what the desk should do in it), every event kind
/// and every result option, so the page keeps no list of its own.
#[wasm_bindgen]
pub fn vocabulary() -> String {
    to_json(&views::Vocabulary::of_the_core())
}

/// One page's device (see `replica::Replica` for the call order). Every `now`
/// is the page's `Date.now()`: the engine corrects it to the server's clock.
#[wasm_bindgen]
pub struct WebDevice {
    inner: Replica,
}

/// A batch of writes for IndexedDB.
#[wasm_bindgen(getter_with_clone)]
pub struct FlushBatch {
    /// Report it with `flushed`.
    pub ticket: f64,
    /// The records.
    pub records: Vec<FlushRecord>,
}

/// One record of a batch.
#[wasm_bindgen(getter_with_clone)]
#[derive(Clone)]
pub struct FlushRecord {
    /// The record's key.
    pub key: String,
    /// Its bytes; `undefined` to delete it.
    pub value: Option<Vec<u8>>,
}

/// One transport step: `connect`, `send` (with `bytes`) or `close`.
#[wasm_bindgen(getter_with_clone)]
pub struct TransportStep {
    /// `connect`, `send` or `close`.
    pub op: String,
    /// The bytes to write, for `send`.
    pub bytes: Option<Vec<u8>>,
}

#[wasm_bindgen]
impl WebDevice {
    /// An empty device; `seed` is random bits from `crypto.getRandomValues` (as a
    /// number below 2^53), `start_limit_ms` the server's start limit.
    #[wasm_bindgen(constructor)]
    pub fn new(seed: f64, start_limit_ms: f64) -> WebDevice {
        Self {
            inner: Replica::new(seed as u64, start_limit_ms as i64),
        }
    }

    /// Puts back a record read from IndexedDB (at start-up).
    pub fn restore(&mut self, key: String, value: Vec<u8>) {
        self.inner.restore(key, value);
    }

    /// Opens the session saved in the records; false if nobody logged in here.
    pub fn open(&mut self) -> Result<bool, JsError> {
        self.inner.open().map_err(js_error)
    }

    /// The login frame for a connection of its own.
    #[wasm_bindgen(js_name = loginStart)]
    pub fn login_start(
        &mut self,
        now_ms: f64,
        email: &str,
        password: &str,
    ) -> Result<Vec<u8>, JsError> {
        self.inner
            .login_start(at(now_ms), email, password)
            .map_err(js_error)
    }

    /// Bytes of the login connection: `undefined` until the answer is whole,
    /// then JSON `{loggedIn}` or `{refused}`.
    #[wasm_bindgen(js_name = loginReceive)]
    pub fn login_receive(&mut self, now_ms: f64, bytes: &[u8]) -> Result<Option<String>, JsError> {
        Ok(self
            .inner
            .login_receive(at(now_ms), bytes)
            .map_err(js_error)?
            .map(|v| v.to_string()))
    }

    /// Goes online.
    pub fn start(&mut self, now_ms: f64) -> Result<(), JsError> {
        self.inner.start(at(now_ms)).map_err(js_error)
    }

    /// The connection asked for is open.
    pub fn connected(&mut self, now_ms: f64) -> Result<(), JsError> {
        self.inner.connected(at(now_ms)).map_err(js_error)
    }

    /// The connection failed or closed.
    pub fn disconnected(&mut self, now_ms: f64, reason: &str) -> Result<(), JsError> {
        self.inner
            .disconnected(at(now_ms), reason)
            .map_err(js_error)
    }

    /// The browser says the network is back.
    #[wasm_bindgen(js_name = networkUp)]
    pub fn network_up(&mut self, now_ms: f64) -> Result<(), JsError> {
        self.inner.network_up(at(now_ms)).map_err(js_error)
    }

    /// Bytes the stream delivered.
    pub fn receive(&mut self, now_ms: f64, bytes: &[u8]) -> Result<(), JsError> {
        self.inner.receive(at(now_ms), bytes).map_err(js_error)
    }

    /// When to call `handleTimeout` next (`Date.now()` terms), if ever.
    #[wasm_bindgen(js_name = pollTimeout)]
    pub fn poll_timeout(&self) -> Option<f64> {
        self.inner.poll_timeout().map(|t| t.as_millis() as f64)
    }

    /// Runs what is due.
    #[wasm_bindgen(js_name = handleTimeout)]
    pub fn handle_timeout(&mut self, now_ms: f64) -> Result<(), JsError> {
        self.inner.handle_timeout(at(now_ms)).map_err(js_error)
    }

    /// The next batch of writes for IndexedDB, if any.
    #[wasm_bindgen(js_name = takeFlush)]
    pub fn take_flush(&mut self) -> Option<FlushBatch> {
        self.inner.take_flush().map(|(ticket, records)| FlushBatch {
            ticket: ticket as f64,
            records: records
                .into_iter()
                .map(|(key, value)| FlushRecord { key, value })
                .collect(),
        })
    }

    /// IndexedDB wrote the batch (`ok`), or failed to.
    pub fn flushed(&mut self, now_ms: f64, ticket: f64, ok: bool) -> Result<(), JsError> {
        self.inner
            .flushed(at(now_ms), ticket as u64, ok)
            .map_err(js_error)
    }

    /// The transport steps whose writes IndexedDB holds, in order.
    #[wasm_bindgen(js_name = takeOutgoing)]
    pub fn take_outgoing(&mut self) -> Vec<TransportStep> {
        self.inner
            .take_outgoing()
            .into_iter()
            .map(|step| match step {
                Step::Connect => TransportStep {
                    op: "connect".to_owned(),
                    bytes: None,
                },
                Step::Send(bytes) => TransportStep {
                    op: "send".to_owned(),
                    bytes: Some(bytes),
                },
                Step::Close => TransportStep {
                    op: "close".to_owned(),
                    bytes: None,
                },
            })
            .collect()
    }

    /// Events since the last call, as a JSON array.
    #[wasm_bindgen(js_name = takeEvents)]
    pub fn take_events(&mut self) -> String {
        to_json(&self.inner.take_events())
    }

    /// The link, the login and the clock (JSON).
    pub fn state(&self, now_ms: f64) -> String {
        self.inner.state(at(now_ms)).to_string()
    }

    /// Asks the server something (`call`: a request's JSON); the answer comes as
    /// a `reply` event with this ticket.
    pub fn ask(&mut self, now_ms: f64, call: &str) -> Result<f64, JsError> {
        self.inner
            .ask(at(now_ms), call)
            .map(|t| t as f64)
            .map_err(js_error)
    }

    /// Installs a plugin file (`settings`: `KEY=VALUE` lines; `holidays`: a
    /// `date,name` table, or `undefined` for Japan's); the verdict comes as a
    /// `reply` event with the returned ticket.
    #[wasm_bindgen(js_name = installPlugin)]
    pub fn install_plugin(
        &mut self,
        now_ms: f64,
        file: Vec<u8>,
        settings: &str,
        holidays: Option<String>,
        time_zone: &str,
    ) -> Result<f64, JsError> {
        self.inner
            .install_plugin(at(now_ms), file, settings, holidays.as_deref(), time_zone)
            .map(|t| t as f64)
            .map_err(js_error)
    }

    /// Makes an installed rule set active again; the verdict comes as a `reply`.
    #[wasm_bindgen(js_name = rollBackPlugin)]
    pub fn roll_back_plugin(&mut self, now_ms: f64, ruleset: &str) -> Result<f64, JsError> {
        self.inner
            .roll_back_plugin(at(now_ms), ruleset)
            .map(|t| t as f64)
            .map_err(js_error)
    }

    /// The installed rule sets, the active one first, and the history (JSON).
    pub fn plugins(&mut self) -> String {
        self.inner.plugins().to_string()
    }

    /// Where the upload of `call`'s recording stands, as the user's phone said
    /// last (JSON `UploadState`, or `null`).
    #[wasm_bindgen(js_name = uploadOf)]
    pub fn upload_of(&self, call: &str) -> Result<String, JsError> {
        self.inner
            .upload_of(call)
            .map(|v| v.to_string())
            .map_err(js_error)
    }

    /// 顧客にコール. Returns the call (JSON).
    #[wasm_bindgen(js_name = requestCall)]
    pub fn request_call(
        &mut self,
        now_ms: f64,
        customer: &str,
        number: &str,
        origin: &str,
        recording: bool,
    ) -> Result<String, JsError> {
        let view = self
            .inner
            .request_call(at(now_ms), customer, number, origin, recording)
            .map_err(js_error)?;
        Ok(to_json(&view))
    }

    /// コールをキャンセル (`cancelled`), the end button (`browser-ended`), or
    /// 録音を削除 (`recording-deleted`, manager or above).
    #[wasm_bindgen(js_name = callEvent)]
    pub fn call_event(
        &mut self,
        now_ms: f64,
        customer: &str,
        call: &str,
        what: &str,
    ) -> Result<String, JsError> {
        let view = self
            .inner
            .call_event(at(now_ms), customer, call, what)
            .map_err(js_error)?;
        Ok(to_json(&view))
    }

    /// コール結果を保存 (`form`: the result form's JSON). Returns JSON
    /// `{saved, kept}` or `{deciding: ticket}`.
    #[wasm_bindgen(js_name = saveResult)]
    pub fn save_result(
        &mut self,
        now_ms: f64,
        customer: &str,
        call: &str,
        form: &str,
    ) -> Result<String, JsError> {
        Ok(self
            .inner
            .save_result(at(now_ms), customer, call, form)
            .map_err(js_error)?
            .to_string())
    }

    /// 手動コール (`form`: the result form's JSON), as `saveResult`.
    #[wasm_bindgen(js_name = manualCall)]
    pub fn manual_call(
        &mut self,
        now_ms: f64,
        customer: &str,
        number: &str,
        form: &str,
    ) -> Result<String, JsError> {
        Ok(self
            .inner
            .manual_call(at(now_ms), customer, number, form)
            .map_err(js_error)?
            .to_string())
    }

    /// What a logout would leave unsent (JSON `{results, events}`).
    pub fn unsent(&mut self) -> Result<String, JsError> {
        Ok(self.inner.unsent().map_err(js_error)?.to_string())
    }

    /// Logs out.
    pub fn logout(&mut self, now_ms: f64) -> Result<(), JsError> {
        self.inner.logout(at(now_ms)).map_err(js_error)
    }

    /// Starts the customer list over with `query` (empty: every customer),
    /// searched on the server; the answer comes as a `reply` event.
    #[wasm_bindgen(js_name = listCustomers)]
    pub fn list_customers(&mut self, now_ms: f64, query: &str) -> Result<f64, JsError> {
        self.inner
            .list_customers(at(now_ms), query)
            .map(|t| t as f64)
            .map_err(js_error)
    }

    /// Asks the next page of the list, if there is one.
    #[wasm_bindgen(js_name = moreCustomers)]
    pub fn more_customers(&mut self, now_ms: f64) -> Result<Option<f64>, JsError> {
        self.inner
            .more_customers(at(now_ms))
            .map(|t| t.map(|t| t as f64))
            .map_err(js_error)
    }

    /// The list as the server answered so far (JSON `{query, rows, complete, loading}`).
    #[wasm_bindgen(js_name = customerListing)]
    pub fn customer_listing(&self) -> String {
        self.inner.customer_listing().to_string()
    }

    /// The list this device can show offline, matching `query` (JSON array).
    #[wasm_bindgen(js_name = localCustomers)]
    pub fn local_customers(&self, query: &str) -> String {
        self.inner.local_customers(query).to_string()
    }

    /// A customer as held here, with calls and timeline (JSON; `null` if not held).
    pub fn customer(&self, id: &str) -> Result<String, JsError> {
        Ok(self.inner.customer(id).map_err(js_error)?.to_string())
    }

    /// The tenant's result types (JSON), for the result form.
    #[wasm_bindgen(js_name = resultTypes)]
    pub fn result_types(&mut self) -> String {
        self.inner.catalog().to_string()
    }
}
