//! [`CustomerDoc`]: one Automerge document per customer, behind a typed API.
//!
//! Owns: the document schema (see the crate docs), creating, loading and checking
//! documents, recording events after the rules pass, and reading them back as a
//! [`Customer`]. No caller touches raw Automerge paths.
//! Does not own: persistence (the store saves the bytes this hands out) or sync
//! transport.
//!
//! Call order: [`CustomerDoc::create`] or [`CustomerDoc::load`], then any number of
//! [`CustomerDoc::record`] / [`CustomerDoc::customer`]; hosts persist with
//! [`CustomerDoc::automerge_mut`] (`save_after`, `get_heads`) and merge replicas with
//! [`CustomerDoc::merge`].

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use automerge::{
    ActorId, AutoCommit, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value,
    transaction::Transactable,
};

use crate::customer::{
    Customer, NewCustomer, PhoneEntry, TimelineEntry, derive_follow_up, timeline,
};
use crate::error::CoreError;
use crate::event::CallEvent;
use crate::id::{CallId, CustomerId, EventId, TenantId, UserId};
use crate::lifecycle::{Anomaly, AnomalyReason, CallView, derive_call, orphan_anomalies};
use crate::phone_number::PhoneNumber;
use crate::rules::{RuleContext, check_event};
use crate::time::Timestamp;

/// The schema version this build writes and the newest it reads.
pub const SCHEMA_VERSION: u64 = 1;

/// Longest company or contact name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Most phone numbers on one customer.
pub const MAX_PHONES: usize = 20;

mod key {
    pub(super) const SCHEMA: &str = "schema";
    pub(super) const TENANT: &str = "tenant";
    pub(super) const CUSTOMER: &str = "customer";
    pub(super) const CREATED_AT: &str = "created_at";
    pub(super) const PROFILE: &str = "profile";
    pub(super) const COMPANY: &str = "company";
    pub(super) const CONTACT: &str = "contact";
    pub(super) const OWNER: &str = "owner";
    pub(super) const PHONES: &str = "phones";
    pub(super) const LABEL: &str = "label";
    pub(super) const NUMBER: &str = "number";
    pub(super) const EVENTS: &str = "events";
}

/// A customer document: an Automerge document in the v1 schema.
#[derive(Debug, Clone)]
pub struct CustomerDoc {
    doc: AutoCommit,
    tenant: TenantId,
    id: CustomerId,
    events: ObjId,
    derived: RefCell<Derived>,
}

impl CustomerDoc {
    /// Creates the document of a new customer, written by `actor` at `at`.
    pub fn create(new: &NewCustomer, at: Timestamp, actor: ActorId) -> Result<Self, CoreError> {
        check_text("company", &new.company)?;
        check_text("contact", &new.contact)?;
        if new.phones.is_empty() {
            return Err(CoreError::NoPhoneNumbers);
        }
        if new.phones.len() > MAX_PHONES {
            return Err(CoreError::FieldTooLong {
                field: "phones",
                max: MAX_PHONES,
            });
        }
        for phone in &new.phones {
            if phone.label.chars().count() > MAX_NAME_CHARS {
                return Err(CoreError::FieldTooLong {
                    field: "phone label",
                    max: MAX_NAME_CHARS,
                });
            }
        }
        let mut doc = AutoCommit::new().with_actor(actor);
        doc.put(ROOT, key::SCHEMA, ScalarValue::Uint(SCHEMA_VERSION))?;
        doc.put(ROOT, key::TENANT, new.tenant.as_str())?;
        doc.put(ROOT, key::CUSTOMER, new.id.as_str())?;
        doc.put(
            ROOT,
            key::CREATED_AT,
            ScalarValue::Timestamp(at.as_millis()),
        )?;
        let profile = doc.put_object(ROOT, key::PROFILE, ObjType::Map)?;
        doc.put(&profile, key::COMPANY, new.company.trim())?;
        doc.put(&profile, key::CONTACT, new.contact.trim())?;
        doc.put(&profile, key::OWNER, new.owner.as_str())?;
        let phones = doc.put_object(ROOT, key::PHONES, ObjType::Map)?;
        for phone in &new.phones {
            let entry = doc.put_object(&phones, phone.number.digits(), ObjType::Map)?;
            doc.put(&entry, key::LABEL, phone.label.trim())?;
            doc.put(&entry, key::NUMBER, phone.number.as_written())?;
        }
        let events = doc.put_object(ROOT, key::EVENTS, ObjType::Map)?;
        doc.commit_with(
            automerge::transaction::CommitOptions::default().with_time(at.as_millis() / 1000),
        );
        Ok(Self {
            doc,
            tenant: new.tenant.clone(),
            id: new.id.clone(),
            events,
            derived: RefCell::default(),
        })
    }

    /// Loads a document from saved bytes (a snapshot, optionally followed by
    /// incremental chunks), to be edited as `actor`.
    pub fn load(bytes: &[u8], actor: ActorId) -> Result<Self, CoreError> {
        let doc = AutoCommit::load(bytes)?.with_actor(actor);
        Self::from_automerge(doc)
    }

    /// Wraps an Automerge document after checking it is a customer document this
    /// build can read.
    pub fn from_automerge(doc: AutoCommit) -> Result<Self, CoreError> {
        let (tenant, id, events) = read_identity(&doc)?;
        Ok(Self {
            doc,
            tenant,
            id,
            events,
            derived: RefCell::default(),
        })
    }

    /// The tenant that owns the customer.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The customer's id.
    pub fn id(&self) -> &CustomerId {
        &self.id
    }

    /// The `events` map's object id (admission checks that changes touch only it).
    pub(crate) fn events_object(&self) -> &ObjId {
        &self.events
    }

    /// The Automerge document, for reading heads and sync state.
    pub fn automerge(&self) -> &AutoCommit {
        &self.doc
    }

    /// The Automerge document, for saving and syncing. Writing to it directly
    /// bypasses the rules: only stores, sync sessions and tests should.
    pub fn automerge_mut(&mut self) -> &mut AutoCommit {
        // The caller may change anything: re-scan on the next read, unless told
        // exactly what changed since these heads.
        let derived = self.derived.get_mut();
        if derived.fresh && derived.heads.is_none() {
            derived.heads = Some(sorted_heads(&mut self.doc));
        }
        derived.fresh = false;
        &mut self.doc
    }

    /// Whether changes wait in the document for a dependency it does not have.
    pub fn has_queued_changes(&mut self) -> bool {
        !self.doc.get_missing_deps(&[]).is_empty()
    }

    /// The document's current heads. Reading them does not change the document.
    pub fn heads(&mut self) -> Vec<automerge::ChangeHash> {
        self.doc.get_heads()
    }

    /// The whole document, compacted, for a snapshot.
    pub fn save(&mut self) -> Vec<u8> {
        // Never the changes waiting for a missing dependency: Automerge keeps them
        // by default, and a queued change under an actor and sequence number that
        // later get a real change would make the saved bytes unloadable.
        self.doc.save_with_options(automerge::SaveOptions {
            deflate: true,
            retain_orphans: false,
        })
    }

    /// The changes made since `heads`, as one incremental chunk.
    pub fn save_after(&mut self, heads: &[automerge::ChangeHash]) -> Vec<u8> {
        self.doc.save_after(heads)
    }

    /// Merges another replica of the same customer into this one.
    ///
    /// Refuses a document of another customer, or one created independently under
    /// the same id (its `events` map is another object, and merging would hide one
    /// of the two maps).
    pub fn merge(&mut self, other: &mut CustomerDoc) -> Result<(), CoreError> {
        if other.tenant != self.tenant || other.id != self.id || other.events != self.events {
            return Err(CoreError::DifferentDocument {
                ours: format!("{}/{}", self.tenant, self.id),
                theirs: format!("{}/{}", other.tenant, other.id),
            });
        }
        self.derived.get_mut().fresh = false;
        self.doc.merge(&mut other.doc)?;
        Ok(())
    }

    /// Every event that can be read, and the keys of entries that cannot.
    pub fn events(&self) -> (Vec<CallEvent>, Vec<String>) {
        let derived = self.derived();
        let mut events = Vec::with_capacity(derived.entries.len());
        let mut unreadable = Vec::new();
        for (key, (_, event)) in &derived.entries {
            match event {
                Some(event) => events.push(event.clone()),
                None => unreadable.push(key.clone()),
            }
        }
        (events, unreadable)
    }

    /// The events of one call (a range read: other calls are not touched).
    pub fn call_events(&self, call: &CallId) -> Vec<CallEvent> {
        self.derived().call_events(call)
    }

    /// The derived state of one call, if the call exists.
    pub fn call(&self, call: &CallId) -> Option<CallView> {
        match self.derived().views.get(call) {
            Some(Ok(view)) => Some(CallView::clone(view)),
            _ => None,
        }
    }

    /// The parsed events and derived calls, brought up to date with the document.
    ///
    /// Parsing and deriving are what reading costs, so both are kept between
    /// reads: [`CustomerDoc::record`] updates them for exactly the events it
    /// writes; anything else that may have changed the document (a merge, sync, or
    /// [`CustomerDoc::automerge_mut`]) marks them stale, and the next read re-scans
    /// the `events` map, parsing only entries whose text changed and re-deriving
    /// only their calls. The answer is always what a fresh derivation would give.
    fn derived(&self) -> std::cell::Ref<'_, Derived> {
        if !self.derived.borrow().fresh {
            let mut derived = self.derived.borrow_mut();
            // Whatever changed the document may have changed its root too.
            derived.identity_error = match read_identity(&self.doc) {
                Ok((tenant, id, events))
                    if tenant == self.tenant && id == self.id && events == self.events =>
                {
                    None
                }
                Ok((tenant, id, _)) => Some(CoreError::DifferentDocument {
                    ours: format!("{}/{}", self.tenant, self.id),
                    theirs: format!("{tenant}/{id} (created independently)"),
                }),
                Err(e) => Some(e),
            };
            if derived.identity_error.is_some() {
                *derived = Derived {
                    identity_error: derived.identity_error.take(),
                    fresh: true,
                    ..Derived::default()
                };
            } else {
                derived.rescan(&self.doc, &self.events);
                derived.rederive();
                derived.heads = None;
            }
        }
        self.derived.borrow()
    }

    /// The customer as every replica derives it.
    pub fn customer(&self) -> Result<Customer, CoreError> {
        let profile = read_map(&self.doc, &ROOT, key::PROFILE)?;
        let created_at = match self.doc.get(ROOT, key::CREATED_AT)? {
            Some((Value::Scalar(v), _)) => match v.as_ref() {
                ScalarValue::Timestamp(ms) | ScalarValue::Int(ms) => Timestamp::from_millis(*ms),
                _ => return Err(malformed(key::CREATED_AT, "not a timestamp")),
            },
            _ => return Err(malformed(key::CREATED_AT, "missing")),
        };
        let derived = self.derived();
        if let Some(e) = &derived.identity_error {
            return Err(e.clone());
        }
        let mut calls = Vec::with_capacity(derived.views.len());
        let mut anomalies = Vec::new();
        for view in derived.views.values() {
            match view {
                Ok(view) => {
                    anomalies.extend(view.anomalies.iter().cloned());
                    calls.push(Arc::clone(view));
                }
                Err(orphans) => anomalies.extend(orphans.iter().cloned()),
            }
        }
        let unreadable_events = derived
            .entries
            .iter()
            .filter(|(_, (_, e))| e.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        drop(derived);
        calls.sort_by(|a, b| (a.origin_stamp.at, &a.call).cmp(&(b.origin_stamp.at, &b.call)));
        let follow_up = derive_follow_up(&calls);
        Ok(Customer {
            tenant: self.tenant.clone(),
            id: self.id.clone(),
            company: read_str(&self.doc, &profile, key::COMPANY)?,
            contact: read_str(&self.doc, &profile, key::CONTACT)?,
            owner: UserId::new(read_str(&self.doc, &profile, key::OWNER)?)
                .map_err(|e| malformed(key::OWNER, &e.to_string()))?,
            created_at,
            phones: self.phones()?,
            status: follow_up.status,
            recall_at: follow_up.recall_at,
            restriction_until: follow_up.restriction_until,
            calls,
            anomalies,
            unreadable_events,
        })
    }

    /// The customer's phone numbers (without deriving anything from the calls).
    pub fn phones(&self) -> Result<Vec<PhoneEntry>, CoreError> {
        let phones = read_map(&self.doc, &ROOT, key::PHONES)?;
        let mut out = Vec::new();
        for item in self.doc.map_range(&phones, ..) {
            let automerge::ValueRef::Object(ObjType::Map) = item.value else {
                return Err(malformed("phones", "entry is not a map"));
            };
            let entry = item.id();
            let number = PhoneNumber::parse(&read_str(&self.doc, &entry, key::NUMBER)?)
                .map_err(|e| malformed("phones.number", &e.to_string()))?;
            out.push(PhoneEntry {
                label: read_str(&self.doc, &entry, key::LABEL)?,
                number,
            });
        }
        Ok(out)
    }

    /// The customer's timeline: every readable event in time order, each marked
    /// if derivation ignores it.
    pub fn timeline(&self) -> Vec<TimelineEntry> {
        let ignored: BTreeMap<EventId, AnomalyReason> = {
            let derived = self.derived();
            derived
                .views
                .values()
                .flat_map(|view| match view {
                    Ok(view) => view.anomalies.clone(),
                    Err(orphans) => orphans.clone(),
                })
                .map(|a| (a.event, a.reason))
                .collect()
        };
        timeline(&self.events().0, &ignored)
    }

    /// Checks `event` against the rules and, if it passes, records it in one change.
    /// Returns the call's new state. A refused event changes nothing.
    pub fn record(
        &mut self,
        event: CallEvent,
        ctx: &RuleContext<'_>,
    ) -> Result<CallView, CoreError> {
        self.record_all(vec![event], ctx)
    }

    /// Checks and records several events on one call as one change (a manual call
    /// and its result, say): all or nothing.
    pub fn record_all(
        &mut self,
        events: Vec<CallEvent>,
        ctx: &RuleContext<'_>,
    ) -> Result<CallView, CoreError> {
        let Some(first) = events.first() else {
            return Err(CoreError::EmptyField { field: "events" });
        };
        let call = first.call.clone();
        let mut customer = self.customer()?;
        let mut call_events = self.call_events(&call);
        let known = call_events.len();
        let mut checked: Vec<(String, String, Timestamp)> = Vec::with_capacity(events.len());
        for event in events {
            if event.call != call {
                return Err(CoreError::UnknownCall { call: event.call });
            }
            let key = event_key(&call, &event);
            // The kept derivation is fresh here (`customer()` above made it so).
            let recorded = self.derived.borrow().entries.contains_key(&key);
            if recorded || checked.iter().any(|(k, ..)| k == &key) {
                return Err(CoreError::DuplicateEvent { event: event.id });
            }
            check_event(&customer, &event, ctx)?;
            let json =
                serde_json::to_string(&event).map_err(|e| CoreError::Automerge(e.to_string()))?;
            checked.push((key, json, event.stamp.at));
            // The next event of the batch is checked against the call with this one.
            call_events.push(event);
            if let Some(view) = derive_call(&call, call_events.iter()) {
                customer.calls.retain(|c| c.call != call);
                customer.calls.push(Arc::new(view));
            }
        }
        let mut at = Timestamp::from_millis(0);
        for (key, json, event_at) in &checked {
            at = at.max(*event_at);
            if let Err(e) = self.doc.put(&self.events, key.as_str(), json.as_str()) {
                self.doc.rollback();
                self.derived.get_mut().fresh = false;
                return Err(e.into());
            }
        }
        // Keep the derived cache exact: these entries are all that changed.
        let derived = self.derived.get_mut();
        let new_events = call_events.split_off(known);
        for ((key, _, _), event) in checked.into_iter().zip(new_events) {
            derived.entries.insert(key, (None, Some(event)));
        }
        derived.dirty.insert(call.clone());
        derived.rederive();
        self.doc.commit_with(
            automerge::transaction::CommitOptions::default().with_time(at.as_millis() / 1000),
        );
        let heads = sorted_heads(&mut self.doc);
        self.derived.get_mut().heads = Some(heads);
        self.call(&call).ok_or(CoreError::UnknownCall { call })
    }

    /// Tells the kept derivation that the document changed since `before` by
    /// exactly these new entries of the `events` map and nothing else (the
    /// server's admission checks every operation of a device's changes is such a
    /// put), so reading it costs the new entries, not a scan of every event. If the
    /// kept state did not match `before`, nothing is learnt and the next read scans
    /// as usual: the answer is always what a fresh derivation would give.
    pub fn learn_new_entries(
        &mut self,
        before: &[automerge::ChangeHash],
        entries: impl IntoIterator<Item = (String, Option<CallEvent>)>,
    ) -> bool {
        let mut before = before.to_vec();
        before.sort();
        let heads = sorted_heads(&mut self.doc);
        let derived = self.derived.get_mut();
        if derived.identity_error.is_some() || derived.heads.as_ref() != Some(&before) {
            return false;
        }
        for (key, event) in entries {
            derived.mark_dirty(&key);
            derived.entries.insert(key, (None, event));
        }
        derived.rederive();
        derived.fresh = true;
        derived.heads = Some(heads);
        true
    }
}

fn sorted_heads(doc: &mut AutoCommit) -> Vec<automerge::ChangeHash> {
    let mut heads = doc.get_heads();
    heads.sort();
    heads
}

/// The schema version, tenant, customer and `events` map of a document, checked.
fn read_identity(doc: &AutoCommit) -> Result<(TenantId, CustomerId, ObjId), CoreError> {
    let schema = match doc.get(ROOT, key::SCHEMA)? {
        Some((Value::Scalar(v), _)) => match v.as_ref() {
            ScalarValue::Uint(n) => *n,
            ScalarValue::Int(n) if *n >= 0 => *n as u64,
            _ => return Err(malformed(key::SCHEMA, "not a number")),
        },
        _ => return Err(malformed(key::SCHEMA, "missing")),
    };
    if schema > SCHEMA_VERSION {
        return Err(CoreError::UnsupportedSchema {
            found: schema,
            supported: SCHEMA_VERSION,
        });
    }
    let tenant = TenantId::new(read_str(doc, &ROOT, key::TENANT)?)
        .map_err(|e| malformed(key::TENANT, &e.to_string()))?;
    let id = CustomerId::new(read_str(doc, &ROOT, key::CUSTOMER)?)
        .map_err(|e| malformed(key::CUSTOMER, &e.to_string()))?;
    let events = read_map(doc, &ROOT, key::EVENTS)?;
    Ok((tenant, id, events))
}

/// The key of an event in the `events` map: `<call>/<event>`.
fn event_key(call: &CallId, event: &CallEvent) -> String {
    format!("{call}/{}", event.id)
}

fn check_text(field: &'static str, value: &str) -> Result<(), CoreError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(CoreError::EmptyField { field });
    }
    if value.chars().count() > MAX_NAME_CHARS {
        return Err(CoreError::FieldTooLong {
            field,
            max: MAX_NAME_CHARS,
        });
    }
    Ok(())
}

fn malformed(path: &str, reason: &str) -> CoreError {
    CoreError::MalformedDocument {
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

fn read_str(doc: &AutoCommit, obj: &ObjId, prop: &str) -> Result<String, CoreError> {
    match doc.get(obj, prop)? {
        Some((Value::Scalar(v), _)) => match v.as_ref() {
            ScalarValue::Str(s) => Ok(s.to_string()),
            _ => Err(malformed(prop, "not a string")),
        },
        _ => Err(malformed(prop, "missing")),
    }
}

fn read_map(doc: &AutoCommit, obj: &ObjId, prop: &str) -> Result<ObjId, CoreError> {
    match doc.get(obj, prop)? {
        Some((Value::Object(ObjType::Map), id)) => Ok(id),
        _ => Err(malformed(prop, "missing or not a map")),
    }
}

/// Parsed events and derived calls of one document, kept between reads.
#[derive(Debug, Clone, Default)]
struct Derived {
    /// Whether `entries` matches the document. False until the first scan, and
    /// after anything but `record` may have changed the document.
    fresh: bool,
    /// Every entry of the `events` map: the Automerge op that wrote its value (a
    /// new write is a new op, so this tells changed entries exactly), and the event
    /// if the entry is one (under its own key).
    /// (`None` for entries this replica just wrote: the next scan learns their op
    /// and parses them once more, which is cheaper than asking Automerge now.)
    entries: BTreeMap<String, (Option<ObjId>, Option<CallEvent>)>,
    /// Every call's derived view, or the anomalies of a call with no origin.
    views: BTreeMap<CallId, Result<Arc<CallView>, Vec<Anomaly>>>,
    /// Calls whose events changed since they were last derived.
    dirty: BTreeSet<CallId>,
    /// Set when the document no longer is this customer's (see `derived`).
    identity_error: Option<CoreError>,
    /// The document's heads (sorted) when `entries` last matched it, where known:
    /// a caller that knows exactly what changed since can bring the state up to
    /// date without a scan ([`CustomerDoc::learn_new_entries`]). Taken when the
    /// document is next handed out for writing (reads cannot ask Automerge for its
    /// heads).
    heads: Option<Vec<automerge::ChangeHash>>,
}

impl Derived {
    /// Brings `entries` up to date, parsing only entries whose text changed.
    fn rescan(&mut self, doc: &AutoCommit, events: &ObjId) {
        let mut seen = 0usize;
        for item in doc.map_range(events, ..) {
            seen += 1;
            let text = match &item.value {
                automerge::ValueRef::Scalar(automerge::ScalarValueRef::Str(text)) => {
                    Some(text.as_ref())
                }
                _ => None,
            };
            let op = item.id();
            if matches!(self.entries.get(item.key.as_ref()), Some((Some(known), _)) if *known == op)
            {
                continue;
            }
            let event = text
                .and_then(|t| serde_json::from_str::<CallEvent>(t).ok())
                .filter(|e| event_key(&e.call, e) == item.key.as_ref());
            self.mark_dirty(&item.key);
            self.entries
                .insert(item.key.into_owned(), (Some(op), event));
        }
        if seen != self.entries.len() {
            // Entries vanished (only a misbehaving writer deletes): find which.
            let present: BTreeSet<String> = doc
                .map_range(events, ..)
                .map(|i| i.key.into_owned())
                .collect();
            let gone: Vec<String> = self
                .entries
                .keys()
                .filter(|k| !present.contains(*k))
                .cloned()
                .collect();
            for key in gone {
                self.mark_dirty(&key);
                self.entries.remove(&key);
            }
        }
        self.fresh = true;
    }

    fn mark_dirty(&mut self, key: &str) {
        let call = key.split_once('/').map_or(key, |(call, _)| call);
        if let Ok(call) = CallId::new(call) {
            self.dirty.insert(call);
        }
    }

    fn call_events(&self, call: &CallId) -> Vec<CallEvent> {
        self.call_event_refs(call).into_iter().cloned().collect()
    }

    fn call_event_refs(&self, call: &CallId) -> Vec<&CallEvent> {
        // Keys are "<call>/<event>"; '0' is the character after '/'.
        let (from, to) = (format!("{call}/"), format!("{call}0"));
        self.entries
            .range(from..to)
            .filter_map(|(_, (_, e))| e.as_ref())
            .collect()
    }

    /// Re-derives the calls marked dirty.
    fn rederive(&mut self) {
        for call in std::mem::take(&mut self.dirty) {
            let events = self.call_event_refs(&call);
            if events.is_empty() {
                self.views.remove(&call);
                continue;
            }
            let view = derive_call(&call, events.iter().copied())
                .map(Arc::new)
                .ok_or_else(|| orphan_anomalies(&call, events.iter().copied()));
            self.views.insert(call, view);
        }
    }
}
