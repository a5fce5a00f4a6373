//! The rep's actions on a device, and the result flow.
//!
//! Owns: turning a press (request a call, cancel, start, end, save a result,
//! log a manual call) into events stamped on the server's clock (the device's
//! reading kept beside), checked by the core's rules against what this device
//! holds (the user's open calls elsewhere included), saved to the outbox in the
//! same write, noted in the unsent ledger, and offered to the server at once when
//! joined. And the result flow: a host with the tenant's rules at hand (the
//! phone's plugin host) decides on the device; otherwise, online, the server's
//! rules decide (`decide-result`) and the answer is saved as it is; offline, or
//! when the server cannot answer, or refuses for a reason that is not the rep's,
//! the pick is saved as made, with why ([`KeptReason`]).
//! Does not own: the rules themselves (the core; the plugins on the server or the
//! phone), ids' uniqueness beyond 64 random bits, or what the screens show.

use callsync_core::plugin::{CallFacts, Pick, call_facts};
use callsync_core::rules::check_option_time;
use callsync_core::tenant_config::{
    InstallRequestError, PluginListing, TenantConfigDoc, install_request,
};
use callsync_core::wire::{DecidedResult, ErrorBody, RefusalCode, RpcCall, RpcResult};
use callsync_core::{
    CallEvent, CallId, CallView, CoreError, CustomerId, CustomerStatus, DeviceId, EventId,
    EventKind, OptionKind, PhoneNumber, ResultCatalog, ResultOption, ResultTypeId, RuleContext,
    SavedResultFields, Stamp, Timestamp,
};
use serde::{Deserialize, Serialize};

use super::{
    Ask, DeviceFailure, DeviceSession, DeviceStore, Entropy, Link, StopReason, UNSENT_KEY,
    UnsentEvent, save_json, unsent_ledger,
};
use crate::client::{ClientEvent, ClientOutput};
use crate::storage::{LoadedDoc, StorageError};

/// Why an action was refused. Nothing was saved.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ActionError {
    /// The core's rules refused it (the code and both languages are the core's).
    #[error(transparent)]
    Refused(#[from] CoreError),
    /// This device does not hold the customer (or the call).
    #[error("{0} is not held on this device")]
    NotHeld(String),
    /// The session stopped (logged out, the contract revoked, …): nothing is
    /// recorded until the user logs in again.
    #[error("{}", .0.words().0)]
    Stopped(StopReason),
    /// The tenant's rules (run on this device) refused the pick, in their words.
    #[error("{}", .0.message)]
    Rules(ErrorBody),
    /// The server would not admit it from this member (e.g. a rep deleting
    /// a recording, which needs a manager or above).
    #[error(transparent)]
    Admission(#[from] callsync_core::admission::AdmissionError),
    /// Storage failed; the host rolls back.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A plugin install could not be asked as given (a setting, the holiday
    /// table, the file's size, an unknown rule set).
    #[error(transparent)]
    Install(#[from] InstallRequestError),
}

impl ActionError {
    /// A stable code.
    pub fn code(&self) -> &str {
        match self {
            Self::Refused(e) => e.code(),
            Self::NotHeld(_) => "not-held",
            Self::Stopped(reason) => reason.as_str(),
            Self::Rules(body) => &body.code,
            Self::Admission(e) => e.code(),
            Self::Storage(_) => "storage",
            Self::Install(e) => e.code(),
        }
    }

    /// The message in Japanese.
    pub fn message_ja(&self) -> String {
        match self {
            Self::Refused(e) => e.message_ja(),
            Self::NotHeld(what) => format!("{what} はこの端末にありません"),
            Self::Stopped(reason) => reason.words().1.to_owned(),
            Self::Rules(body) => body.message_ja.clone(),
            Self::Admission(e) => e.message_ja(),
            Self::Storage(_) => "端末への保存に失敗しました".to_owned(),
            Self::Install(e) => e.message_ja(),
        }
    }
}

/// A session failure while acting: storage (the host rolls back) either way.
fn action_failure(e: DeviceFailure) -> ActionError {
    match e {
        DeviceFailure::Storage(e) => ActionError::Storage(e),
        DeviceFailure::Protocol(p) => ActionError::Storage(StorageError::Failed(p)),
    }
}

impl From<callsync_core::id::IdError> for ActionError {
    fn from(e: callsync_core::id::IdError) -> Self {
        Self::Refused(e.into())
    }
}

/// The result form as the rep filled it in.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultForm {
    /// The result type.
    pub result_type: ResultTypeId,
    /// None, recall or call restriction.
    pub option: OptionKind,
    /// The time picked for a recall or restriction (none: the rules pick it).
    #[serde(default)]
    pub at: Option<Timestamp>,
    /// The status picked (none: the type's default).
    #[serde(default)]
    pub customer_status: Option<CustomerStatus>,
    /// Free memo.
    #[serde(default)]
    pub memo: String,
}

impl ResultForm {
    fn pick(&self) -> Pick {
        Pick {
            result_type: self.result_type.clone(),
            option: self.option,
            at: self.at,
            customer_status: self.customer_status.clone(),
        }
    }
}

/// Why a result was saved as picked rather than as the tenant's rules decide.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeptReason {
    /// The device was offline.
    Offline,
    /// The server did not answer in time.
    NoAnswer,
    /// The connection dropped while the server was deciding.
    ConnectionLost,
    /// The server was busy or failing.
    ServerTrouble,
    /// The session stopped while the server was deciding.
    Stopped,
}

impl KeptReason {
    /// The kebab-case code saved with the result.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offline => "offline",
            Self::NoAnswer => "no-answer",
            Self::ConnectionLost => "connection-lost",
            Self::ServerTrouble => "server-trouble",
            Self::Stopped => "stopped",
        }
    }
}

/// What saving a result did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaveOutcome {
    /// Saved here now; with the reason when the pick was kept as made.
    Saved(Box<CallView>, Option<KeptReason>),
    /// The server's rules are deciding; a [`ClientEvent::ResultSaved`] or
    /// [`ClientEvent::ResultRefused`] with this ticket follows.
    Deciding {
        /// The save's ticket.
        ticket: u64,
    },
}

/// The tenant's rules run on the device itself (a host with a plugin host).
pub trait LocalRules {
    /// Decides `pick` with the configuration document `config` (as synced), for
    /// a call with `facts`, saved at `saved_at` (server clock). `Err`: the rules
    /// refuse the pick, in their own words (the rep's to mend).
    fn decide(
        &self,
        config: &TenantConfigDoc,
        pick: &Pick,
        facts: CallFacts,
        saved_at: Timestamp,
    ) -> Result<DecidedResult, ErrorBody>;
}

/// Why an ask ended without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    NoAnswer,
    ConnectionLost,
    Stopped(StopReason),
}

impl Failure {
    pub(super) fn code(self) -> &'static str {
        match self {
            Self::NoAnswer => "no-answer",
            Self::ConnectionLost => "connection-lost",
            Self::Stopped(_) => "stopped",
        }
    }

    pub(super) fn words(self) -> (&'static str, &'static str) {
        match self {
            Self::NoAnswer => (
                "The server did not answer. Please try again.",
                "サーバーから応答がありません。もう一度お試しください。",
            ),
            Self::ConnectionLost => (
                "The connection was lost before the server answered. Please check and try again.",
                "サーバーが応答する前に接続が切れました。結果を確認して、もう一度お試しください。",
            ),
            Self::Stopped(reason) => reason.words(),
        }
    }

    fn kept(self) -> KeptReason {
        match self {
            Self::NoAnswer => KeptReason::NoAnswer,
            Self::ConnectionLost => KeptReason::ConnectionLost,
            Self::Stopped(_) => KeptReason::Stopped,
        }
    }
}

/// What an ask is for.
pub(super) enum AskPurpose {
    /// A screen's question; answered with [`ClientEvent::Reply`].
    Screen,
    /// A result waiting for the server's rules.
    Result(Box<ResultFlow>),
}

/// A result being decided by the server's rules.
pub(super) struct ResultFlow {
    customer: CustomerId,
    call: CallId,
    form: ResultForm,
    /// Events recorded with the result (a manual call's `manual-call`).
    before: Vec<CallEvent>,
    /// The result event's id and stamp (fixed when the rep pressed save).
    event: EventId,
    stamp: Stamp,
}

/// Whether asking again cannot change anything on the server, so a request
/// lost with its connection is simply sent again. (`decide-result` changes
/// nothing either, but a rep is not kept waiting for a reconnect: its pick is
/// saved as made.)
pub(super) fn is_read(call: &RpcCall) -> bool {
    matches!(
        call,
        RpcCall::UserList
            | RpcCall::CustomerList { .. }
            | RpcCall::Subscribe { .. }
            | RpcCall::Devices
            | RpcCall::RecallList
            | RpcCall::CallStats { .. }
            | RpcCall::RecordingLink { .. }
    )
}

fn new_id<T>(
    rng: &mut dyn Entropy,
    prefix: &str,
    make: impl FnOnce(String) -> Result<T, callsync_core::id::IdError>,
) -> Result<T, ActionError> {
    Ok(make(format!("{prefix}-{}", rng.hex(8)))?)
}

impl<D: LoadedDoc> DeviceSession<D> {
    /// The stamp of an event this device records when its clock reads `now`:
    /// the server's time, the device's own beside it (see [`super::clock`]).
    pub fn stamp(&self, now: Timestamp) -> Stamp {
        Stamp {
            at: self.server_time(now),
            device: self.identity.device.clone(),
            device_kind: self.identity.kind,
            user: self.identity.user.clone(),
            device_at: self.clock.map(|_| now),
        }
    }

    fn event(
        &self,
        rng: &mut dyn Entropy,
        now: Timestamp,
        call: &CallId,
        kind: EventKind,
    ) -> Result<CallEvent, ActionError> {
        Ok(CallEvent {
            id: new_id(rng, "ev", EventId::new)?,
            call: call.clone(),
            stamp: self.stamp(now),
            kind,
        })
    }

    /// The tenant's result types as synced here (the standard ones before the
    /// first sync, or with no active rule set).
    pub fn catalog<S: DeviceStore<Doc = D>>(
        &mut self,
        store: &mut S,
    ) -> Result<ResultCatalog, StorageError> {
        if let Some(catalog) = &self.catalog {
            return Ok(catalog.clone());
        }
        let catalog = self
            .config_doc(store)?
            .and_then(|doc| doc.config().ok())
            .filter(|config| config.active.is_some())
            .map(|config| config.catalog())
            .unwrap_or_else(ResultCatalog::standard);
        self.catalog = Some(catalog.clone());
        Ok(catalog)
    }

    /// The tenant's installed rule sets and their history as synced here, for
    /// the admin screen (empty before the first install).
    pub fn plugin_listing<S: DeviceStore<Doc = D>>(
        &mut self,
        store: &mut S,
    ) -> Result<PluginListing, StorageError> {
        Ok(self
            .config_doc(store)?
            .and_then(|doc| doc.config().ok())
            .map(|config| config.listing())
            .unwrap_or_default())
    }

    /// Asks the server to install a plugin file with its settings (`KEY=VALUE`
    /// lines), holiday table (the Japanese one when `None`) and time zone: the
    /// request `callsync admin plugin install` sends. The verdict comes as a
    /// reply with the returned ticket.
    pub fn install_plugin(
        &mut self,
        now: Timestamp,
        file: Vec<u8>,
        settings: &[String],
        holidays: Option<&str>,
        time_zone: &str,
    ) -> Result<u64, ActionError> {
        let call = install_request(file, settings, holidays, time_zone)?;
        self.ask(now, call).map_err(action_failure)
    }

    /// Asks the server to make an installed rule set active again (a rollback),
    /// sending the plugin, settings, holidays and zone this device holds for it:
    /// the request `callsync admin plugin rollback` sends.
    pub fn roll_back_plugin<S: DeviceStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        store: &mut S,
        ruleset: &str,
    ) -> Result<u64, ActionError> {
        let call = match self.config_doc(store)? {
            Some(doc) => doc.reinstall_request(ruleset)?,
            None => {
                return Err(InstallRequestError::UnknownRuleset(ruleset.to_owned()).into());
            }
        };
        self.ask(now, call).map_err(action_failure)
    }

    fn config_doc<S: DeviceStore<Doc = D>>(
        &mut self,
        store: &mut S,
    ) -> Result<Option<TenantConfigDoc>, StorageError> {
        Ok(store
            .config(&self.identity.tenant)?
            .and_then(|bytes| TenantConfigDoc::load(&bytes, self.actor.clone()).ok()))
    }

    /// The document of a customer this device holds, for an action on it.
    fn held_doc<S: DeviceStore<Doc = D>>(
        &self,
        store: &mut S,
        customer: &CustomerId,
    ) -> Result<D, ActionError> {
        store
            .load(&self.identity.tenant, customer, self.actor.clone())?
            .ok_or_else(|| ActionError::NotHeld(format!("customer {customer}")))
    }

    fn customer_of<S: DeviceStore<Doc = D>>(
        &mut self,
        store: &mut S,
        customer: Option<&CustomerId>,
        call: &CallId,
    ) -> Result<CustomerId, ActionError> {
        match customer {
            Some(c) => Ok(c.clone()),
            None => store
                .customer_of_call(&self.identity.tenant, call)?
                .ok_or_else(|| ActionError::NotHeld(format!("call {call}"))),
        }
    }

    /// Records `events` on one customer as one local change: checked, saved with
    /// the outbox, noted as unsent, offered to the server when joined.
    fn act<S: DeviceStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        rng: &mut dyn Entropy,
        store: &mut S,
        customer: &CustomerId,
        events: Vec<CallEvent>,
    ) -> Result<CallView, ActionError> {
        if let Some(reason) = self.stopped
            && reason != StopReason::UpdateRequired
        {
            return Err(ActionError::Stopped(reason));
        }
        let role = self.identity.role;
        if let Some(e) = events.iter().find(|e| e.kind.role_needed() > role) {
            return Err(callsync_core::admission::AdmissionError::RoleRequired {
                event: e.kind.name(),
                needed: e.kind.role_needed().as_str(),
            }
            .into());
        }
        let catalog = self.catalog(store)?;
        let tenant = self.identity.tenant.clone();
        let others = store.open_calls(&tenant, &self.identity.user, customer)?;
        let mut doc = self.held_doc(store, customer)?;
        let ctx = RuleContext {
            catalog: &catalog,
            start_limit_ms: self.settings.start_limit_ms,
            other_open_calls: &others,
        };
        let noted: Vec<UnsentEvent> = events
            .iter()
            .map(|e| UnsentEvent {
                customer: customer.clone(),
                call: e.call.clone(),
                kind: e.kind.name().to_owned(),
            })
            .collect();
        let view = doc.doc_mut().record_all(events, &ctx)?;
        store.save_local(&mut doc)?;
        let mut ledger = unsent_ledger(store)?;
        ledger.extend(noted);
        save_json(store, UNSENT_KEY, &ledger)?;
        if let Link::Joined { client } = &mut self.link {
            let mut out = ClientOutput::default();
            client
                .push_local(store, &mut out)
                .map_err(|e| action_failure(DeviceFailure::from(e)))?;
            self.out.send.extend(out.messages);
        }
        let _ = (now, rng);
        Ok(view)
    }

    /// Records events a host built with [`Self::stamp`] (the CLI's commands, whose
    /// result fields its own plugin host decided) on one customer, as one local
    /// change, through the same checks, outbox and ledger as every action.
    pub fn record<S: DeviceStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        rng: &mut dyn Entropy,
        store: &mut S,
        customer: &CustomerId,
        events: Vec<CallEvent>,
    ) -> Result<CallView, ActionError> {
        self.act(now, rng, store, customer, events)
    }

    /// **顧客にコール** (desk): asks the phone `origin` to dial `number` of
    /// `customer`.
    #[allow(clippy::too_many_arguments)]
    pub fn request_call<S: DeviceStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        rng: &mut dyn Entropy,
        store: &mut S,
        customer: &CustomerId,
        number: &str,
        origin: &DeviceId,
        recording: bool,
    ) -> Result<CallView, ActionError> {
        let call = new_id(rng, "call", CallId::new)?;
        let kind = EventKind::Requested {
            destination: PhoneNumber::parse(number).map_err(CoreError::from)?,
            origin: origin.clone(),
            recording,
        };
        let event = self.event(rng, now, &call, kind)?;
        self.act(now, rng, store, customer, vec![event])
    }

    /// An event on an existing call: **コールをキャンセル** (`Cancelled`), the
    /// red end button (`BrowserEnded`), *Start call* (`Started`), the phone's end
    /// (`PhoneEnded`). `customer` may be left out when this device holds the call.
    pub fn call_event<S: DeviceStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        rng: &mut dyn Entropy,
        store: &mut S,
        customer: Option<&CustomerId>,
        call: &CallId,
        kind: EventKind,
    ) -> Result<CallView, ActionError> {
        let customer = self.customer_of(store, customer, call)?;
        let event = self.event(rng, now, call, kind)?;
        self.act(now, rng, store, &customer, vec![event])
    }

    /// **コール結果を保存**: the result form for `call` (see the module for the
    /// flow). `rules`: the tenant's rules, when this host can run them.
    #[allow(clippy::too_many_arguments)]
    pub fn save_result<S: DeviceStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        rng: &mut dyn Entropy,
        store: &mut S,
        customer: Option<&CustomerId>,
        call: &CallId,
        form: ResultForm,
        rules: Option<&dyn LocalRules>,
    ) -> Result<SaveOutcome, ActionError> {
        let customer = self.customer_of(store, customer, call)?;
        let held = self.held_doc(store, &customer)?.doc().customer()?;
        let facts =
            call_facts(&held, call).ok_or(CoreError::CallNeverStarted { call: call.clone() })?;
        self.result(
            now,
            rng,
            store,
            customer,
            call.clone(),
            form,
            facts,
            Vec::new(),
            rules,
        )
    }

    /// **手動コール**: a call made outside the system (with `number`) and its
    /// result, as one change, through the same result flow.
    #[allow(clippy::too_many_arguments)]
    pub fn manual_call<S: DeviceStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        rng: &mut dyn Entropy,
        store: &mut S,
        customer: &CustomerId,
        number: &str,
        form: ResultForm,
        rules: Option<&dyn LocalRules>,
    ) -> Result<SaveOutcome, ActionError> {
        let held = self.held_doc(store, customer)?.doc().customer()?;
        let call = new_id(rng, "call", CallId::new)?;
        let logged = EventKind::ManualCall {
            number: PhoneNumber::parse(number).map_err(CoreError::from)?,
        };
        let logged = self.event(rng, now, &call, logged)?;
        let took_place = held.calls.iter().filter(|c| c.took_place()).count();
        let facts = CallFacts {
            ended_at: logged.stamp.at,
            attempt: u32::try_from(took_place + 1).unwrap_or(u32::MAX),
        };
        self.result(
            now,
            rng,
            store,
            customer.clone(),
            call,
            form,
            facts,
            vec![logged],
            rules,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn result<S: DeviceStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        rng: &mut dyn Entropy,
        store: &mut S,
        customer: CustomerId,
        call: CallId,
        form: ResultForm,
        facts: CallFacts,
        before: Vec<CallEvent>,
        rules: Option<&dyn LocalRules>,
    ) -> Result<SaveOutcome, ActionError> {
        let stamp = self.stamp(now);
        // The core's own checks of a picked time come first, whatever the rules
        // would say.
        if let Some(at) = form.at {
            let picked = match form.option {
                OptionKind::Restriction => ResultOption::Restriction { until: at },
                _ => ResultOption::Recall { at },
            };
            check_option_time(&picked, stamp.at)?;
        }
        let flow = ResultFlow {
            customer,
            call,
            form,
            before,
            event: new_id(rng, "ev", EventId::new)?,
            stamp,
        };
        // The result as picked must pass the core's rules now (the call ended,
        // no result yet, a type of the tenant's), so a refusal comes before any
        // question to the server.
        let catalog = self.catalog(store)?;
        let mut checked = flow.form.clone();
        if checked.option != OptionKind::None && checked.at.is_none() {
            // The rules pick the time; any valid one stands in for the check.
            checked.at = Some(flow.stamp.at.plus_millis(86_400_000).ceil_to_option_step());
        }
        let picked = self.picked_fields(&catalog, &checked, None)?;
        self.check_flow(store, &flow, &catalog, picked)?;
        if let Some(rules) = rules
            && let Some(config) = self.config_doc(store)?
        {
            let decided = rules
                .decide(&config, &flow.form.pick(), facts, flow.stamp.at)
                .map_err(ActionError::Rules)?;
            let fields = self.decided_fields(&flow.form, decided);
            let view = self.record_flow(now, rng, store, &flow, fields)?;
            return Ok(SaveOutcome::Saved(Box::new(view), None));
        }
        if matches!(self.link, Link::Joined { .. }) {
            let call = RpcCall::DecideResult {
                pick: flow.form.pick(),
                ended_at: facts.ended_at,
                attempt: facts.attempt,
                saved_at: flow.stamp.at,
            };
            let ticket = self
                .push_ask(now, call, AskPurpose::Result(Box::new(flow)))
                .map_err(action_failure)?;
            return Ok(SaveOutcome::Deciding { ticket });
        }
        let fields = self.picked_fields(&catalog, &flow.form, Some(KeptReason::Offline))?;
        let view = self.record_flow(now, rng, store, &flow, fields)?;
        Ok(SaveOutcome::Saved(
            Box::new(view),
            Some(KeptReason::Offline),
        ))
    }

    /// The form's fields as picked: the time as given (required), the status
    /// picked or the type's default.
    fn picked_fields(
        &self,
        catalog: &ResultCatalog,
        form: &ResultForm,
        kept: Option<KeptReason>,
    ) -> Result<SavedResultFields, ActionError> {
        let option = match (form.option, form.at) {
            (OptionKind::None, _) => ResultOption::None,
            (OptionKind::Recall, Some(at)) => ResultOption::Recall { at },
            (OptionKind::Restriction, Some(until)) => ResultOption::Restriction { until },
            (option, None) => return Err(CoreError::OptionTimeRequired { option }.into()),
        };
        let customer_status = form.customer_status.clone().or_else(|| {
            catalog
                .get(&form.result_type)
                .and_then(|t| t.default_status.clone())
        });
        Ok(SavedResultFields {
            result_type: form.result_type.clone(),
            option,
            customer_status,
            memo: form.memo.clone(),
            decision: None,
            kept_as_picked: kept.map(|k| k.as_str().to_owned()),
        })
    }

    fn decided_fields(&self, form: &ResultForm, decided: DecidedResult) -> SavedResultFields {
        SavedResultFields {
            result_type: form.result_type.clone(),
            option: decided.option,
            customer_status: decided.customer_status,
            memo: form.memo.clone(),
            decision: Some(Box::new(decided.decision)),
            kept_as_picked: None,
        }
    }

    /// Checks the flow's events with `fields` against the rules, recording nothing.
    fn check_flow<S: DeviceStore<Doc = D>>(
        &mut self,
        store: &mut S,
        flow: &ResultFlow,
        catalog: &ResultCatalog,
        fields: SavedResultFields,
    ) -> Result<(), ActionError> {
        let tenant = self.identity.tenant.clone();
        let mut doc = self.held_doc(store, &flow.customer)?;
        let others = store.open_calls(&tenant, &self.identity.user, &flow.customer)?;
        let ctx = RuleContext {
            catalog,
            start_limit_ms: self.settings.start_limit_ms,
            other_open_calls: &others,
        };
        let mut events = flow.before.clone();
        events.push(self.flow_event(flow, fields));
        // Recorded on a copy that is never saved.
        doc.doc_mut().record_all(events, &ctx)?;
        Ok(())
    }

    fn flow_event(&self, flow: &ResultFlow, fields: SavedResultFields) -> CallEvent {
        CallEvent {
            id: flow.event.clone(),
            call: flow.call.clone(),
            stamp: flow.stamp.clone(),
            kind: EventKind::ResultSaved(fields),
        }
    }

    fn record_flow<S: DeviceStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        rng: &mut dyn Entropy,
        store: &mut S,
        flow: &ResultFlow,
        fields: SavedResultFields,
    ) -> Result<CallView, ActionError> {
        let mut events = flow.before.clone();
        events.push(self.flow_event(flow, fields));
        self.act(now, rng, store, &flow.customer, events)
    }

    /// An ask answered.
    pub(super) fn answered<S: DeviceStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        rng: &mut dyn Entropy,
        store: &mut S,
        ask: Ask,
        result: RpcResult,
    ) {
        let flow = match ask.purpose {
            AskPurpose::Screen => {
                self.listing_answered(ask.ticket, Some(&result));
                self.out.events.push(ClientEvent::Reply {
                    ticket: ask.ticket,
                    result,
                });
                return;
            }
            AskPurpose::Result(flow) => flow,
        };
        match result {
            RpcResult::Decided(decided) => {
                let fields = self.decided_fields(&flow.form, decided);
                self.finish_flow(now, rng, store, ask.ticket, &flow, Ok(fields));
            }
            RpcResult::Refused(body) if rep_must_mend(&body) => {
                self.out.events.push(ClientEvent::ResultRefused {
                    ticket: ask.ticket,
                    code: body.code,
                    message: body.message,
                    message_ja: body.message_ja,
                });
            }
            // The server's trouble, not the rep's: the pick as made.
            _ => self.finish_flow(
                now,
                rng,
                store,
                ask.ticket,
                &flow,
                Err(KeptReason::ServerTrouble),
            ),
        }
    }

    /// An ask that ended without an answer.
    pub(super) fn ask_failed<S: DeviceStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        rng: &mut dyn Entropy,
        store: &mut S,
        ask: Ask,
        why: Failure,
    ) {
        match ask.purpose {
            AskPurpose::Screen => {
                self.listing_answered(ask.ticket, None);
                let (message, message_ja) = why.words();
                self.out.events.push(ClientEvent::AskFailed {
                    ticket: ask.ticket,
                    code: why.code().to_owned(),
                    message: message.to_owned(),
                    message_ja: message_ja.to_owned(),
                });
            }
            AskPurpose::Result(flow) => {
                self.finish_flow(now, rng, store, ask.ticket, &flow, Err(why.kept()));
            }
        }
    }

    /// Saves a flow's result: as decided, or as picked with why. Whatever goes
    /// wrong is told as a refused result (storage failing included), so no
    /// other question is dropped with it.
    fn finish_flow<S: DeviceStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        rng: &mut dyn Entropy,
        store: &mut S,
        ticket: u64,
        flow: &ResultFlow,
        fields: Result<SavedResultFields, KeptReason>,
    ) {
        let (fields, kept) = match fields {
            Ok(fields) => (Ok(fields), None),
            Err(kept) => match self.catalog(store) {
                Ok(catalog) => (
                    self.picked_fields(&catalog, &flow.form, Some(kept)),
                    Some(kept),
                ),
                Err(e) => (Err(ActionError::Storage(e)), Some(kept)),
            },
        };
        // A stopped session still keeps the rep's result: it was pressed while
        // the session was alive, and goes out with the next login.
        let stopped = self.stopped.take();
        let recorded = fields.and_then(|fields| self.record_flow(now, rng, store, flow, fields));
        self.stopped = stopped;
        match recorded {
            Ok(_) => {
                self.out.events.push(ClientEvent::ResultSaved {
                    ticket,
                    customer: flow.customer.clone(),
                    call: flow.call.clone(),
                    kept_as_picked: kept.map(|k| k.as_str().to_owned()),
                });
            }
            Err(e) => {
                self.out.events.push(ClientEvent::ResultRefused {
                    ticket,
                    code: e.code().to_owned(),
                    message: e.to_string(),
                    message_ja: e.message_ja(),
                });
            }
        }
    }
}

/// Whether a refusal of `decide-result` is the rep's to mend (the rules refuse
/// the pick, or a rule of the core's): else the pick is kept as made.
fn rep_must_mend(body: &ErrorBody) -> bool {
    match RefusalCode::parse(&body.code) {
        Some(code) => code == RefusalCode::ResultNotDecided,
        // The core's own codes (a time not on a step, a type the tenant lacks).
        None => true,
    }
}
