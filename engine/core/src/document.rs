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

use std::collections::BTreeMap;

use automerge::{
    ActorId, AutoCommit, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value,
    transaction::Transactable,
};

use crate::customer::{
    Customer, NewCustomer, PhoneEntry, TimelineEntry, derive_follow_up, timeline,
};
use crate::error::CoreError;
use crate::event::CallEvent;
use crate::id::{CallId, CustomerId, TenantId, UserId};
use crate::lifecycle::{CallView, derive_call, orphan_anomalies};
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
        let tenant = TenantId::new(read_str(&doc, &ROOT, key::TENANT)?)
            .map_err(|e| malformed(key::TENANT, &e.to_string()))?;
        let id = CustomerId::new(read_str(&doc, &ROOT, key::CUSTOMER)?)
            .map_err(|e| malformed(key::CUSTOMER, &e.to_string()))?;
        let events = read_map(&doc, &ROOT, key::EVENTS)?;
        Ok(Self {
            doc,
            tenant,
            id,
            events,
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

    /// The Automerge document, for reading heads and sync state.
    pub fn automerge(&self) -> &AutoCommit {
        &self.doc
    }

    /// The Automerge document, for saving and syncing. Writing to it directly
    /// bypasses the rules: only stores, sync sessions and tests should.
    pub fn automerge_mut(&mut self) -> &mut AutoCommit {
        &mut self.doc
    }

    /// Merges another replica of the same customer into this one.
    pub fn merge(&mut self, other: &mut CustomerDoc) -> Result<(), CoreError> {
        self.doc.merge(&mut other.doc)?;
        Ok(())
    }

    /// Every event that can be read, and the keys of entries that cannot.
    pub fn events(&self) -> (Vec<CallEvent>, Vec<String>) {
        self.events_in(..)
    }

    fn events_in<R: std::ops::RangeBounds<String>>(
        &self,
        range: R,
    ) -> (Vec<CallEvent>, Vec<String>) {
        let mut events = Vec::new();
        let mut unreadable = Vec::new();
        for item in self.doc.map_range(&self.events, range) {
            let parsed = match &item.value {
                automerge::ValueRef::Scalar(automerge::ScalarValueRef::Str(json)) => {
                    serde_json::from_str::<CallEvent>(json)
                        .ok()
                        .filter(|e| event_key(&e.call, e) == item.key.as_ref())
                }
                _ => None,
            };
            match parsed {
                Some(event) => events.push(event),
                None => unreadable.push(item.key.into_owned()),
            }
        }
        (events, unreadable)
    }

    /// The events of one call (a range read: other calls are not touched).
    pub fn call_events(&self, call: &CallId) -> Vec<CallEvent> {
        // Keys are "<call>/<event>"; '0' is the character after '/'.
        let from = format!("{call}/");
        let to = format!("{call}0");
        self.events_in(from..to).0
    }

    /// The derived state of one call, if the call exists.
    pub fn call(&self, call: &CallId) -> Option<CallView> {
        derive_call(call, &self.call_events(call))
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
        let (events, unreadable) = self.events();
        let mut by_call: BTreeMap<&CallId, Vec<CallEvent>> = BTreeMap::new();
        for event in &events {
            by_call.entry(&event.call).or_default().push(event.clone());
        }
        let mut calls = Vec::with_capacity(by_call.len());
        let mut anomalies = Vec::new();
        for (call, events) in &by_call {
            match derive_call(call, events) {
                Some(view) => {
                    anomalies.extend(view.anomalies.iter().cloned());
                    calls.push(view);
                }
                None => anomalies.extend(orphan_anomalies(call, events)),
            }
        }
        calls.sort_by(|a, b| (a.origin_stamp.at, &a.call).cmp(&(b.origin_stamp.at, &b.call)));
        let (status, follow_up) = derive_follow_up(&calls);
        Ok(Customer {
            tenant: self.tenant.clone(),
            id: self.id.clone(),
            company: read_str(&self.doc, &profile, key::COMPANY)?,
            contact: read_str(&self.doc, &profile, key::CONTACT)?,
            owner: UserId::new(read_str(&self.doc, &profile, key::OWNER)?)
                .map_err(|e| malformed(key::OWNER, &e.to_string()))?,
            created_at,
            phones: self.phones()?,
            status,
            follow_up,
            calls,
            anomalies,
            unreadable_events: unreadable,
        })
    }

    fn phones(&self) -> Result<Vec<PhoneEntry>, CoreError> {
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

    /// The customer's timeline: every readable event in time order.
    pub fn timeline(&self) -> Vec<TimelineEntry> {
        timeline(&self.events().0)
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
        let mut checked: Vec<(String, String, Timestamp)> = Vec::with_capacity(events.len());
        for event in events {
            if event.call != call {
                return Err(CoreError::UnknownCall { call: event.call });
            }
            let key = event_key(&call, &event);
            if self.doc.get(&self.events, key.as_str())?.is_some()
                || checked.iter().any(|(k, ..)| k == &key)
            {
                return Err(CoreError::DuplicateEvent { event: event.id });
            }
            check_event(&customer, &event, ctx)?;
            let json =
                serde_json::to_string(&event).map_err(|e| CoreError::Automerge(e.to_string()))?;
            checked.push((key, json, event.stamp.at));
            // The next event of the batch is checked against the call with this one.
            call_events.push(event);
            if let Some(view) = derive_call(&call, &call_events) {
                customer.calls.retain(|c| c.call != call);
                customer.calls.push(view);
            }
        }
        let mut at = Timestamp::from_millis(0);
        for (key, json, event_at) in checked {
            at = at.max(event_at);
            if let Err(e) = self.doc.put(&self.events, key, json) {
                self.doc.rollback();
                return Err(e.into());
            }
        }
        self.doc.commit_with(
            automerge::transaction::CommitOptions::default().with_time(at.as_millis() / 1000),
        );
        self.call(&call).ok_or(CoreError::UnknownCall { call })
    }
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
