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
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
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
pub const SCHEMA_VERSION: u64 = 2;

/// How many bucket maps the `calls` map holds (schema 2): a new call's map lands
/// in a bucket of about 1/16 of the customer's calls, so creating it walks that
/// many keys instead of every call (Automerge merges an op into its object by
/// walking the object's ops).
pub const CALL_BUCKETS: usize = 16;

/// The key of the bucket a call's map lives in: one lowercase hex digit, the
/// call id's FNV-1a hash modulo [`CALL_BUCKETS`]. Every replica computes the same,
/// so a call's place never depends on who writes.
pub fn call_bucket(call: &CallId) -> &'static str {
    BUCKET_KEYS[bucket_index(call)]
}

/// The buckets' keys, in order.
pub(crate) const BUCKET_KEYS: [&str; CALL_BUCKETS] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "a", "b", "c", "d", "e", "f",
];

fn bucket_index(call: &CallId) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in call.as_str().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % CALL_BUCKETS as u64) as usize
}

/// The `calls` map and its buckets' object ids. Once a document has them they
/// never change (only the server writes them, once; admission refuses any other
/// write to them), so a loaded document reads them once and re-checks the `calls`
/// map's id whenever it re-reads the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Buckets {
    /// The `calls` map.
    pub(crate) calls: ObjId,
    /// Its buckets, in key order (`0` to `f`).
    pub(crate) buckets: Vec<ObjId>,
}

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
    pub(super) const CALLS: &str = "calls";
}

/// A customer document: an Automerge document in schema 2 (or 1, read as it is
/// until the server upgrades it; see the crate docs).
#[derive(Debug, Clone)]
pub struct CustomerDoc {
    doc: AutoCommit,
    tenant: TenantId,
    id: CustomerId,
    events: ObjId,
    derived: RefCell<Derived>,
    /// The buckets, once read (see [`Buckets`]).
    buckets: RefCell<Option<Arc<Buckets>>>,
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
        put_call_buckets(&mut doc)?;
        doc.commit_with(
            automerge::transaction::CommitOptions::default().with_time(at.as_millis() / 1000),
        );
        Ok(Self {
            doc,
            tenant: new.tenant.clone(),
            id: new.id.clone(),
            events,
            derived: RefCell::default(),
            buckets: RefCell::default(),
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
            buckets: RefCell::default(),
        })
    }

    /// Brings a schema 1 document to schema 2 by adding the `calls` map and its
    /// buckets, as one change stamped `at`; events already recorded stay where
    /// they are. Returns whether anything was written (false on schema 2).
    ///
    /// **Only the server calls this** (its store, when it first opens a document):
    /// the buckets are objects, and two replicas each creating "the" buckets would
    /// have one set hidden by the other. Devices read and write schema 1 documents
    /// as they are until the server's upgrade reaches them by sync.
    pub fn upgrade(&mut self, at: Timestamp) -> Result<bool, CoreError> {
        if read_buckets(&self.doc)?.is_some() {
            return Ok(false);
        }
        let written = self
            .doc
            .put(ROOT, key::SCHEMA, ScalarValue::Uint(SCHEMA_VERSION))
            .and_then(|()| put_call_buckets(&mut self.doc));
        if let Err(e) = written {
            self.doc.rollback();
            return Err(e.into());
        }
        self.doc.commit_with(
            automerge::transaction::CommitOptions::default().with_time(at.as_millis() / 1000),
        );
        // Nothing an event reader sees changed: the kept derivation stays exact.
        let heads = sorted_heads(&mut self.doc);
        let derived = self.derived.get_mut();
        if derived.fresh {
            derived.heads = Some(heads);
        }
        Ok(true)
    }

    /// The schema version the document declares (1 or 2).
    pub fn schema(&self) -> Result<u64, CoreError> {
        read_schema(&self.doc)
    }

    /// The `calls` map and its buckets, if the document has them (schema 2).
    pub(crate) fn buckets(&self) -> Result<Option<Arc<Buckets>>, CoreError> {
        self.buckets_at(None)
    }

    /// [`Self::buckets`] as the document was at `heads` (if not read before):
    /// admission reads them as they were before a device's changes, which may
    /// have tried to replace them.
    pub(crate) fn buckets_at(
        &self,
        heads: Option<&[automerge::ChangeHash]>,
    ) -> Result<Option<Arc<Buckets>>, CoreError> {
        if let Some(buckets) = &*self.buckets.borrow() {
            return Ok(Some(Arc::clone(buckets)));
        }
        let map = |obj: &ObjId, prop: &str| -> Result<Option<ObjId>, CoreError> {
            let value = match heads {
                Some(heads) => self.doc.get_at(obj, prop, heads)?,
                None => self.doc.get(obj, prop)?,
            };
            Ok(match value {
                Some((Value::Object(ObjType::Map), id)) => Some(id),
                _ => None,
            })
        };
        let Some(calls) = map(&ROOT, key::CALLS)? else {
            return Ok(None);
        };
        // One walk over the `calls` map, not a lookup per bucket: on a freshly
        // loaded document each lookup is a seek through Automerge's columns.
        let mut found: [Option<ObjId>; CALL_BUCKETS] = Default::default();
        let mut keep = |item: automerge::iter::MapRangeItem<'_>| {
            if matches!(item.value, automerge::ValueRef::Object(ObjType::Map))
                && let Some(i) = BUCKET_KEYS.iter().position(|k| *k == item.key)
            {
                found[i] = Some(item.id());
            }
        };
        match heads {
            Some(heads) => self.doc.map_range_at(&calls, .., heads).for_each(&mut keep),
            None => self.doc.map_range(&calls, ..).for_each(&mut keep),
        }
        let mut buckets = Vec::with_capacity(CALL_BUCKETS);
        for bucket in found {
            buckets.push(bucket.ok_or_else(|| malformed(key::CALLS, "a bucket is missing"))?);
        }
        let read = Arc::new(Buckets { calls, buckets });
        *self.buckets.borrow_mut() = Some(Arc::clone(&read));
        Ok(Some(read))
    }

    /// The bucket map `call`'s map belongs in, if the document has buckets.
    pub(crate) fn bucket_map(&self, call: &CallId) -> Result<Option<ObjId>, CoreError> {
        Ok(self
            .buckets()?
            .map(|b| b.buckets[bucket_index(call)].clone()))
    }

    /// The map of `call`'s events, if it has one (the winner, as writers pick it).
    pub(crate) fn call_map(&self, call: &CallId) -> Result<Option<ObjId>, CoreError> {
        match self.bucket_map(call)? {
            Some(bucket) => Ok(map_at(&self.doc, &bucket, call.as_str())?),
            None => Ok(None),
        }
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

    /// Applies a peer's sync message, as Automerge's `receive_sync_message` does
    /// but without its walk over the whole history in the usual exchange (see
    /// [`crate::sync_receive`]).
    ///
    /// A message that brings no change (an acknowledgement, the peer's heads)
    /// leaves the kept derivation as it was: only new changes make the next read
    /// look at the document again.
    pub fn receive_sync_message(
        &mut self,
        state: &mut automerge::sync::State,
        message: automerge::sync::Message,
    ) -> Result<crate::sync_receive::Received, automerge::AutomergeError> {
        let before = sorted_heads(&mut self.doc);
        // The buckets, read now at the current heads when changes arrive:
        // admission needs them as they were before the message's changes, and
        // reading them afterwards at old heads costs Automerge a clock per key (a
        // fifth of a freshly loaded document's admission). A malformed document
        // is left for admission to name.
        if !message.changes.is_empty() {
            let _ = self.buckets();
        }
        let received = crate::sync_receive::receive_sync_message(&mut self.doc, state, message);
        if sorted_heads(&mut self.doc) != before {
            // As `automerge_mut`: what was kept matched `before`, if anything.
            let derived = self.derived.get_mut();
            if derived.fresh && derived.heads.is_none() {
                derived.heads = Some(before);
            }
            derived.fresh = false;
        }
        received
    }

    /// The next sync message for a peer. Generating one changes nothing in the
    /// document, so the kept derivation stays as it was.
    pub fn generate_sync_message(
        &mut self,
        state: &mut automerge::sync::State,
    ) -> Option<automerge::sync::Message> {
        use automerge::sync::SyncDoc;
        self.doc.sync().generate_sync_message(state)
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
        let (ours, theirs) = (read_buckets(&self.doc)?, read_buckets(&other.doc)?);
        let other_buckets = matches!((&ours, &theirs), (Some(a), Some(b)) if a != b);
        if other.tenant != self.tenant
            || other.id != self.id
            || other.events != self.events
            || other_buckets
        {
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
        for (key, entry) in &derived.entries {
            match &entry.event {
                Some(event) => events.push(event.clone()),
                None => unreadable.push(key.clone()),
            }
        }
        (events, unreadable)
    }

    /// The events of one call, in key order. Read from the kept derivation when
    /// it is up to date, otherwise straight from the call's own entries (its map,
    /// and schema 1's flat map): a server admitting one event on a document it
    /// just loaded reads that call, not every call.
    pub fn call_events(&self, call: &CallId) -> Vec<CallEvent> {
        {
            let derived = self.derived.borrow();
            if derived.fresh {
                return derived.call_events(call);
            }
        }
        self.read_call_events(call)
    }

    /// [`Self::call_events`] from the document itself, as a scan would read them.
    fn read_call_events(&self, call: &CallId) -> Vec<CallEvent> {
        let mut found: BTreeMap<String, Option<CallEvent>> = BTreeMap::new();
        let mut take = |key: String, value: &automerge::ValueRef<'_>| {
            let event = match value {
                automerge::ValueRef::Scalar(automerge::ScalarValueRef::Str(text)) => {
                    serde_json::from_str::<CallEvent>(text).ok()
                }
                _ => None,
            }
            .filter(|e| event_key(&e.call, e) == key);
            // A later place wins, as in a scan (the call's map over the flat map).
            found.insert(key, event);
        };
        let (from, to) = (format!("{call}/"), format!("{call}0"));
        for item in self.doc.map_range(&self.events, from..to) {
            take(item.key.to_string(), &item.value);
        }
        for calls in maps_at(&self.doc, &ROOT, key::CALLS) {
            for bucket in maps_at(&self.doc, &calls, call_bucket(call)) {
                for map in maps_at(&self.doc, &bucket, call.as_str()) {
                    for item in self.doc.map_range(&map, ..) {
                        take(format!("{call}/{}", item.key), &item.value);
                    }
                }
            }
        }
        found.into_values().flatten().collect()
    }

    /// The customer's list fields (names, owner, status, recall, restriction),
    /// kept between reads like the calls: after the first read, a change of one
    /// call costs a pass over the calls' kept results, not a read of every event.
    pub fn summary(&self) -> Result<Summary, CoreError> {
        let derived = self.derived();
        if let Some(e) = &derived.identity_error {
            return Err(e.clone());
        }
        if let Some(summary) = &derived.summary {
            return Ok(summary.clone());
        }
        let follow_up = derive_follow_up(
            derived
                .views
                .values()
                .filter_map(|v| v.as_ref().ok().map(|v| &**v)),
        );
        drop(derived);
        let profile = read_map(&self.doc, &ROOT, key::PROFILE)?;
        let summary = Summary {
            company: read_str(&self.doc, &profile, key::COMPANY)?,
            contact: read_str(&self.doc, &profile, key::CONTACT)?,
            owner: UserId::new(read_str(&self.doc, &profile, key::OWNER)?)
                .map_err(|e| malformed(key::OWNER, &e.to_string()))?,
            status: follow_up.status,
            recall_at: follow_up.recall_at,
            restriction_until: follow_up.restriction_until,
        };
        self.derived.borrow_mut().summary = Some(summary.clone());
        Ok(summary)
    }

    /// The calls whose derived state changed since the last time this was asked
    /// (every call, the first time after a load), with their state: what an index
    /// of calls must rewrite. Calls without an origin are left out.
    pub fn take_changed_calls(&mut self) -> Vec<Arc<CallView>> {
        drop(self.derived());
        let derived = self.derived.get_mut();
        std::mem::take(&mut derived.changed)
            .into_iter()
            .filter_map(|call| match derived.views.get(&call) {
                Some(Ok(view)) => Some(Arc::clone(view)),
                _ => None,
            })
            .collect()
    }

    /// Every call's derived state, in call id order (a call whose events do not
    /// derive is left out, as in [`Self::customer`]): what a store indexes
    /// without building the whole customer.
    pub fn call_views(&self) -> Vec<Arc<CallView>> {
        self.derived()
            .views
            .values()
            .filter_map(|view| view.as_ref().ok().map(Arc::clone))
            .collect()
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
            let kept_buckets = self.buckets.borrow().as_ref().map(|b| b.calls.clone());
            let buckets_moved = match &kept_buckets {
                Some(calls) => read_buckets(&self.doc).ok().flatten().as_ref() != Some(calls),
                None => false,
            };
            derived.identity_error = match read_identity(&self.doc) {
                Ok((tenant, id, events))
                    if tenant == self.tenant
                        && id == self.id
                        && events == self.events
                        && !buckets_moved =>
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
            .filter(|(_, entry)| entry.event.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        drop(derived);
        calls.sort_by(|a, b| (a.origin_stamp.at, &a.call).cmp(&(b.origin_stamp.at, &b.call)));
        let follow_up = derive_follow_up(calls.iter().map(|c| &**c));
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
        let mut checked: Vec<(String, EventId, String, Timestamp)> =
            Vec::with_capacity(events.len());
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
            checked.push((key, event.id.clone(), json, event.stamp.at));
            // The next event of the batch is checked against the call with this one.
            call_events.push(event);
            if let Some(view) = derive_call(&call, call_events.iter()) {
                customer.calls.retain(|c| c.call != call);
                customer.calls.push(Arc::new(view));
            }
        }
        let mut at = Timestamp::from_millis(0);
        let written = self.place_for(&call, known > 0).and_then(|place| {
            for (key, event_id, json, event_at) in &checked {
                at = at.max(*event_at);
                match &place {
                    Place::CallMap(map) => self.doc.put(map, event_id.as_str(), json.as_str())?,
                    Place::Flat => self.doc.put(&self.events, key.as_str(), json.as_str())?,
                }
            }
            Ok(())
        });
        if let Err(e) = written {
            self.doc.rollback();
            self.derived.get_mut().fresh = false;
            return Err(e);
        }
        // Keep the derived cache exact: these entries are all that changed.
        let derived = self.derived.get_mut();
        let generation = derived.generation;
        let new_events = call_events.split_off(known);
        for ((key, ..), event) in checked.into_iter().zip(new_events) {
            derived.entries.insert(
                key,
                Entry {
                    op: None,
                    event: Some(event),
                    generation,
                },
            );
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

    /// Where the events of `call` are written (inside the open transaction):
    /// - its own map, if it has one;
    /// - schema 1's flat map, if the call is known there (`known`: it has events
    ///   but no map) or the document has no buckets yet (schema 1);
    /// - otherwise a new map in the call's bucket, created by this change, which
    ///   carries the call's origin event: a call is created by one replica only
    ///   (its ids are drawn by the device that requests or logs it), so no other
    ///   replica ever creates the same call's map.
    fn place_for(&mut self, call: &CallId, known: bool) -> Result<Place, CoreError> {
        let Some(bucket) = self.bucket_map(call)? else {
            return Ok(Place::Flat);
        };
        if let Some(map) = map_at(&self.doc, &bucket, call.as_str())? {
            return Ok(Place::CallMap(map));
        }
        if known {
            return Ok(Place::Flat);
        }
        Ok(Place::CallMap(self.doc.put_object(
            &bucket,
            call.as_str(),
            ObjType::Map,
        )?))
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
        let generation = derived.generation;
        for (key, event) in entries {
            derived.mark_dirty(&key);
            derived.entries.insert(
                key,
                Entry {
                    op: None,
                    event,
                    generation,
                },
            );
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

/// A customer's list fields: what a list of customers shows, sorts and filters
/// by (the same values [`CustomerDoc::customer`] derives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The company name.
    pub company: String,
    /// The contact's name.
    pub contact: String,
    /// The rep in charge.
    pub owner: UserId,
    /// The status the latest result picked (or 未対応 / 対応済み).
    pub status: crate::customer::CustomerStatus,
    /// The recall in force, if any.
    pub recall_at: Option<Timestamp>,
    /// The call restriction in force, if any.
    pub restriction_until: Option<Timestamp>,
}

/// Where a call's events are written (see [`CustomerDoc::place_for`]).
enum Place {
    /// The call's own map (schema 2).
    CallMap(ObjId),
    /// Schema 1's flat `events` map, keyed `<call>/<event>`.
    Flat,
}

/// The `calls` map with its [`CALL_BUCKETS`] bucket maps, written with a schema 2
/// document or by [`CustomerDoc::upgrade`] (inside the caller's transaction).
fn put_call_buckets(doc: &mut AutoCommit) -> Result<(), automerge::AutomergeError> {
    let calls = doc.put_object(ROOT, key::CALLS, ObjType::Map)?;
    for bucket in 0..CALL_BUCKETS {
        doc.put_object(&calls, format!("{bucket:x}"), ObjType::Map)?;
    }
    Ok(())
}

/// The map under `prop` of `obj` (the winning value), if there is one.
fn map_at(
    doc: &AutoCommit,
    obj: &ObjId,
    prop: &str,
) -> Result<Option<ObjId>, automerge::AutomergeError> {
    Ok(match doc.get(obj, prop)? {
        Some((Value::Object(ObjType::Map), id)) => Some(id),
        _ => None,
    })
}

/// Every map under `prop` of `obj`, conflicting ones included: a reader unions
/// them, so no write can hide another's events.
fn maps_at(doc: &AutoCommit, obj: &ObjId, prop: &str) -> Vec<ObjId> {
    doc.get_all(obj, prop)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(value, id)| matches!(value, Value::Object(ObjType::Map)).then_some(id))
        .collect()
}

/// The `calls` map's buckets, if the document has them (schema 2).
fn read_buckets(doc: &AutoCommit) -> Result<Option<ObjId>, CoreError> {
    Ok(map_at(doc, &ROOT, key::CALLS)?)
}

/// The schema version a document declares.
fn read_schema(doc: &AutoCommit) -> Result<u64, CoreError> {
    match doc.get(ROOT, key::SCHEMA)? {
        Some((Value::Scalar(v), _)) => match v.as_ref() {
            ScalarValue::Uint(n) => Ok(*n),
            ScalarValue::Int(n) if *n >= 0 => Ok(*n as u64),
            _ => Err(malformed(key::SCHEMA, "not a number")),
        },
        _ => Err(malformed(key::SCHEMA, "missing")),
    }
}

/// The schema version, tenant, customer and `events` map of a document, checked.
fn read_identity(doc: &AutoCommit) -> Result<(TenantId, CustomerId, ObjId), CoreError> {
    let schema = read_schema(doc)?;
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
    /// Every event entry by its key `<call>/<event>` (where it is stored: a call's
    /// map or schema 1's flat map).
    entries: BTreeMap<String, Entry>,
    /// Counts scans: an entry visited twice in one scan (the same event id in both
    /// places, only from a misbehaving writer) is told from one kept from before.
    generation: u64,
    /// Every call's derived view, or the anomalies of a call with no origin.
    views: BTreeMap<CallId, Result<Arc<CallView>, Vec<Anomaly>>>,
    /// Calls whose events changed since they were last derived.
    dirty: BTreeSet<CallId>,
    /// Calls re-derived since [`CustomerDoc::take_changed_calls`] last took them.
    changed: BTreeSet<CallId>,
    /// The list fields, while no call changed and the document was not re-read.
    summary: Option<Summary>,
    /// Set when the document no longer is this customer's (see `derived`).
    identity_error: Option<CoreError>,
    /// The document's heads (sorted) when `entries` last matched it, where known:
    /// a caller that knows exactly what changed since can bring the state up to
    /// date without a scan ([`CustomerDoc::learn_new_entries`]). Taken when the
    /// document is next handed out for writing (reads cannot ask Automerge for its
    /// heads).
    heads: Option<Vec<automerge::ChangeHash>>,
}

/// One event entry as a scan last saw it.
#[derive(Debug, Clone)]
struct Entry {
    /// The Automerge op that wrote the value (a new write is a new op, so this
    /// tells changed entries exactly); `None` for entries this replica just wrote
    /// (the next scan learns their op and parses them once more, which is cheaper
    /// than asking Automerge now).
    op: Option<ObjId>,
    /// The event, if the entry is one (under its own key).
    event: Option<CallEvent>,
    /// The scan that last saw it.
    generation: u64,
}

/// The maps a map entry holds: its value, or every conflicting value if writers
/// raced (each is read, so none hides another).
fn objects(doc: &AutoCommit, obj: &ObjId, item: &automerge::iter::MapRangeItem<'_>) -> Vec<ObjId> {
    if item.conflict {
        maps_at(doc, obj, &item.key)
    } else if let automerge::ValueRef::Object(ObjType::Map) = item.value {
        vec![item.id()]
    } else {
        Vec::new()
    }
}

impl Derived {
    /// Brings `entries` up to date, parsing only entries whose text changed:
    /// schema 1's flat map first, then every call's map (so an event id found in
    /// both reads as the per-call one, the same on every replica).
    fn rescan(&mut self, doc: &AutoCommit, events: &ObjId) {
        // Whatever changed the document may have changed the profile too.
        self.summary = None;
        self.generation = self.generation.wrapping_add(1);
        let mut seen = 0usize;
        for item in doc.map_range(events, ..) {
            seen += self.visit(item.key.as_ref(), item.id(), &item.value);
        }
        let mut key = String::new();
        let calls = maps_at(doc, &ROOT, key::CALLS);
        if let [only] = calls.as_slice() {
            match self.scan_calls_in_one_walk(doc, only, &mut key) {
                Ok(visited) => seen += visited,
                // A conflict hides maps from a walk of what is visible: every
                // map is read below instead (what was visited counts once).
                Err(visited) => seen += visited + self.scan_calls_per_map(doc, &calls, &mut key),
            }
        } else {
            seen += self.scan_calls_per_map(doc, &calls, &mut key);
        }
        if seen != self.entries.len() {
            // Entries vanished (only a misbehaving writer deletes).
            let generation = self.generation;
            let gone: Vec<String> = self
                .entries
                .iter()
                .filter(|(_, e)| e.generation != generation)
                .map(|(k, _)| k.clone())
                .collect();
            for key in gone {
                self.mark_dirty(&key);
                self.entries.remove(&key);
            }
        }
        self.fresh = true;
    }

    /// Visits every call's entries in one walk of the `calls` subtree (parents
    /// before children), which on a freshly loaded document costs about half of
    /// a range read per bucket and per call (each one seeks from the start).
    /// `Err` with what it visited if a bucket or call holds conflicting maps.
    fn scan_calls_in_one_walk(
        &mut self,
        doc: &AutoCommit,
        calls: &ObjId,
        key: &mut String,
    ) -> Result<usize, usize> {
        let mut seen = 0usize;
        let mut buckets: HashSet<ObjId> = HashSet::new();
        let mut call_maps: HashMap<ObjId, String> = HashMap::new();
        for item in doc.iter_at(calls, None) {
            let automerge::iter::DocItem::Map(entry) = item.item else {
                continue;
            };
            let obj: &ObjId = &item.obj;
            if obj == calls || buckets.contains(obj) {
                if entry.conflict {
                    return Err(seen);
                }
                if let automerge::ValueRef::Object(ObjType::Map) = entry.value {
                    if obj == calls {
                        buckets.insert(entry.id());
                    } else {
                        call_maps.insert(entry.id(), entry.key.into_owned());
                    }
                }
            } else if let Some(call) = call_maps.get(obj) {
                key.clear();
                key.push_str(call);
                key.push('/');
                key.push_str(&entry.key);
                seen += self.visit(key, entry.id(), &entry.value);
            }
        }
        Ok(seen)
    }

    /// Visits every call's entries map by map (each bucket and call read on
    /// its own, conflicting maps included).
    fn scan_calls_per_map(&mut self, doc: &AutoCommit, calls: &[ObjId], key: &mut String) -> usize {
        let mut seen = 0usize;
        for calls in calls {
            for bucket in doc.map_range(calls, ..) {
                for bucket in objects(doc, calls, &bucket) {
                    for call in doc.map_range(&bucket, ..) {
                        for call_map in objects(doc, &bucket, &call) {
                            for item in doc.map_range(&call_map, ..) {
                                key.clear();
                                key.push_str(&call.key);
                                key.push('/');
                                key.push_str(&item.key);
                                seen += self.visit(key, item.id(), &item.value);
                            }
                        }
                    }
                }
            }
        }
        seen
    }

    /// Takes one entry seen by a scan; returns 1 if its key is new to this scan.
    fn visit(&mut self, key: &str, op: ObjId, value: &automerge::ValueRef<'_>) -> usize {
        let generation = self.generation;
        let (first_visit, known) = match self.entries.get_mut(key) {
            Some(entry) => {
                let first = entry.generation != generation;
                entry.generation = generation;
                (first, entry.op.as_ref() == Some(&op))
            }
            None => (true, false),
        };
        if !known {
            let event = match value {
                automerge::ValueRef::Scalar(automerge::ScalarValueRef::Str(text)) => {
                    serde_json::from_str::<CallEvent>(text).ok()
                }
                _ => None,
            }
            .filter(|e| event_key(&e.call, e) == key);
            self.mark_dirty(key);
            self.entries.insert(
                key.to_owned(),
                Entry {
                    op: Some(op),
                    event,
                    generation,
                },
            );
        }
        usize::from(first_visit)
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
            .filter_map(|(_, entry)| entry.event.as_ref())
            .collect()
    }

    /// Re-derives the calls marked dirty.
    fn rederive(&mut self) {
        if !self.dirty.is_empty() {
            self.summary = None;
        }
        for call in std::mem::take(&mut self.dirty) {
            self.changed.insert(call.clone());
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
