//! Admission: what the server accepts from a device's changes.
//!
//! Owns: [`admit`], run by the server after a device's sync message has been
//! applied to its copy of a document and before anything is saved or forwarded.
//! It checks the new changes (those not in `before`) against the session that sent
//! them: every change is made under an Automerge actor bound to the sending device
//! (**actor binding**), the only edits are new entries in the `events` map, and
//! every new event is stamped with the sending device, its kind and its user, and
//! refers to a call that device or user may act on. On refusal the server drops its
//! copy (the caller reloads from the store), so a refused change is never stored
//! and never forwarded.
//!
//! What this deliberately does *not* check: the rules that depend on what the
//! sender knew (a `started` racing a cancel, a second result saved concurrently).
//! Those are valid history; derivation names them on every replica (see
//! [`crate::rules`] for why the local rules are stricter).
//! Does not own: authentication, sessions, which devices exist (the caller passes
//! a [`Directory`]), or visibility of the document itself (checked before any sync).

use automerge::{ActorId, ChangeHash, ReadDoc};

use crate::account::Role;
use crate::document::{BUCKET_KEYS, CustomerDoc, call_bucket};
use crate::error::CoreError;
use crate::event::{CallEvent, DeviceKind, EventKind};
use crate::id::{CallId, DeviceId, TenantId, UserId};
use crate::result_type::ResultCatalog;
use crate::rules::{MAX_MEMO_CHARS, check_option_time};

/// The session a change arrived on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    /// The session's tenant.
    pub tenant: TenantId,
    /// The signed-in user.
    pub user: UserId,
    /// The user's role.
    pub role: Role,
    /// The device.
    pub device: DeviceId,
    /// Desk or phone.
    pub kind: DeviceKind,
}

/// What admission needs to know about devices and actors.
pub trait Directory {
    /// Whether `actor` is bound to `device`.
    fn actor_is_bound_to(&self, actor: &ActorId, device: &DeviceId) -> bool;
    /// Whether `device` is a phone of `user` in the session's tenant.
    fn is_phone_of(&self, device: &DeviceId, user: &UserId) -> bool;
}

/// Why the server refused a device's changes. Nothing of them was kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// A change was made under an actor that is not bound to the sending device.
    #[error("a change was made under actor {actor}, which does not belong to this device")]
    ForeignActor {
        /// The actor, in hex.
        actor: String,
    },
    /// A change edited something other than new entries of the `events` map.
    #[error("devices may only add call events; this change edited {what}")]
    ForbiddenEdit {
        /// What was edited.
        what: String,
    },
    /// An entry is not a readable event, or sits under the wrong key.
    #[error("entry {key} is not a well-formed call event")]
    MalformedEvent {
        /// The entry's key.
        key: String,
    },
    /// An event's stamp names another device, device kind or user than the session.
    #[error("event {key} claims to be recorded by another {field} than this session's")]
    ForgedStamp {
        /// The entry's key.
        key: String,
        /// Which part of the stamp: `device`, `device kind` or `user`.
        field: &'static str,
    },
    /// The call was requested or logged by another user.
    #[error("call {call} belongs to another user")]
    NotYourCall {
        /// The call.
        call: CallId,
    },
    /// A request named an origin device that is not one of the user's phones.
    #[error("{device} is not one of your phones")]
    NotYourPhone {
        /// The device named.
        device: DeviceId,
    },
    /// The event needs a higher role.
    #[error("recording '{event}' needs the {needed} role or above")]
    RoleRequired {
        /// The event.
        event: &'static str,
        /// The least role allowed.
        needed: &'static str,
    },
    /// An event carries a field this build does not know.
    #[error("event {key} has a field this server does not know: {field}")]
    UnknownField {
        /// The entry's key.
        key: String,
        /// The field's path in the event.
        field: String,
    },
    /// A message, a change or an event is over its limit.
    #[error("too many {what} (at most {limit})")]
    TooLarge {
        /// What was counted.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// The event breaks a rule that holds whatever the interleaving.
    #[error(transparent)]
    Core(#[from] CoreError),
}

impl AdmissionError {
    /// A stable kebab-case code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::ForeignActor { .. } => "foreign-actor",
            Self::ForbiddenEdit { .. } => "forbidden-edit",
            Self::MalformedEvent { .. } => "malformed-event",
            Self::ForgedStamp { .. } => "forged-stamp",
            Self::NotYourCall { .. } => "not-your-call",
            Self::NotYourPhone { .. } => "not-your-phone",
            Self::RoleRequired { .. } => "role-required",
            Self::UnknownField { .. } => "unknown-field",
            Self::TooLarge { .. } => "too-large",
            Self::Core(e) => e.code(),
        }
    }

    /// The message in Japanese.
    pub fn message_ja(&self) -> String {
        match self {
            Self::ForeignActor { .. } => {
                "この端末のものではない書き込みが含まれています".to_owned()
            }
            // `what` is a technical English text: it stays in `message` and the logs.
            Self::ForbiddenEdit { .. } => "端末から変更できるのはコールの記録だけです".to_owned(),
            Self::MalformedEvent { key } => format!("記録 {key} の形式が正しくありません"),
            Self::ForgedStamp { key, .. } => {
                format!("記録 {key} はこの端末・ユーザーのものではありません")
            }
            Self::NotYourCall { call } => format!("コール {call} は他のユーザーのコールです"),
            Self::NotYourPhone { device } => format!("{device} はあなたの携帯端末ではありません"),
            Self::RoleRequired { event, needed } => format!(
                "「{}」には{}以上の権限が必要です",
                event_ja(event),
                Role::parse(needed).map_or("マネージャー", Role::label_ja)
            ),
            Self::UnknownField { key, field } => {
                format!("記録 {key} に不明な項目があります（{field}）")
            }
            Self::TooLarge { limit, .. } => {
                format!("送信された変更が大きすぎます（上限 {limit}）")
            }
            Self::Core(e) => e.message_ja(),
        }
    }
}

/// An event kind as the Japanese UI names it (the kinds admission refuses by role).
fn event_ja(name: &str) -> &'static str {
    match name {
        "recording-deleted" => "録音の削除",
        "result-saved" => "コール結果の保存",
        "requested" => "コールの発信",
        "cancelled" => "コールのキャンセル",
        _ => "この記録",
    }
}

/// Most new changes one sync message may carry. An honest device sends one per
/// action; a phone offline for a whole day sends a few thousand.
pub const MAX_NEW_CHANGES: usize = 16_384;
/// Most operations in one change: one per event, and an action records at most
/// a handful of events at once.
pub const MAX_OPS_PER_CHANGE: usize = 32;
/// Largest change, in bytes (an event with a full memo is about 17 KiB).
pub const MAX_CHANGE_BYTES: usize = 64 << 10;
/// Largest event, as stored JSON.
pub const MAX_EVENT_BYTES: usize = 32 << 10;

/// Checks the changes `doc` gained since `before` (the server's heads before it
/// applied the sender's sync message). Returns the events they add, in key order.
///
/// Judged from each change's own operations and metadata, not from the visible
/// result: operations that cancel out (a put then a delete), an empty change or
/// one carrying a commit message, and event JSON with fields this build does not
/// know are all refused, although none of them would show in the document. The
/// cost is proportional to the new changes, not to the document.
pub fn admit(
    doc: &mut CustomerDoc,
    before: &[ChangeHash],
    sender: &Sender,
    directory: &impl Directory,
    catalog: &ResultCatalog,
) -> Result<Vec<CallEvent>, AdmissionError> {
    let new_changes = doc.automerge_mut().get_changes(before);
    if new_changes.is_empty() {
        return Ok(Vec::new());
    }
    if new_changes.len() > MAX_NEW_CHANGES {
        return Err(AdmissionError::TooLarge {
            what: "changes in one message",
            limit: MAX_NEW_CHANGES,
        });
    }
    for change in &new_changes {
        if !directory.actor_is_bound_to(change.actor_id(), &sender.device) {
            return Err(AdmissionError::ForeignActor {
                actor: change.actor_id().to_hex_string(),
            });
        }
    }
    // The buckets as they were before these changes (they never change after).
    doc.buckets_at(Some(before))?;
    let written = new_entries(doc, &new_changes)?;
    let mut entries = Vec::with_capacity(written.entries.len());
    for entry in written.entries {
        let event = parse_event(&entry.key, &entry.json)?;
        let key = match &entry.place {
            Written::Flat => entry.key,
            Written::CallMap(map) => {
                // A call's events go in that call's own map, and nowhere else.
                check_call_map(doc, &event.call, map, &entry.key)?;
                format!("{}/{}", event.call, entry.key)
            }
        };
        if key != format!("{}/{}", event.call, event.id) {
            return Err(AdmissionError::MalformedEvent { key });
        }
        entries.push((key, entry.place, entry.new_map, event));
    }
    check_new_places(doc, before, &mut entries, &written.new_maps)?;
    let mut events = Vec::with_capacity(entries.len());
    let mut keys = Vec::with_capacity(entries.len());
    for (key, _, _, event) in entries {
        check_stamp(&key, &event, sender)?;
        events.push(event);
        keys.push(key);
    }
    // Every operation of the new changes is one of these new entries (checked
    // above), so the document's kept derivation learns them as they are, parsed
    // once here, instead of scanning every event for what changed.
    doc.learn_new_entries(
        before,
        keys.into_iter().zip(events.iter().cloned().map(Some)),
    );
    for event in &events {
        check_reference(doc, event, sender, directory, catalog)?;
    }
    Ok(events)
}

/// Parses an event's JSON, refusing any field this build does not know (it would
/// be stored and forwarded while nothing reads it).
fn parse_event(key: &str, json: &str) -> Result<CallEvent, AdmissionError> {
    let malformed = || AdmissionError::MalformedEvent {
        key: key.to_owned(),
    };
    if json.len() > MAX_EVENT_BYTES {
        return Err(AdmissionError::TooLarge {
            what: "event bytes",
            limit: MAX_EVENT_BYTES,
        });
    }
    let raw: serde_json::Value = serde_json::from_str(json).map_err(|_| malformed())?;
    let event: CallEvent = serde_json::from_value(raw.clone()).map_err(|_| malformed())?;
    let known = serde_json::to_value(&event).map_err(|_| malformed())?;
    if let Some(field) = unknown_field(&raw, &known, "") {
        return Err(AdmissionError::UnknownField {
            key: key.to_owned(),
            field,
        });
    }
    // Exactly as this build writes it: no padding, no duplicate keys, no other
    // spelling of the same event (each would be stored and forwarded unread).
    if serde_json::to_string(&event).map_err(|_| malformed())? != json {
        return Err(malformed());
    }
    Ok(event)
}

/// The first field of `raw` (by path) that the typed event, written back, does
/// not have. A field written back without a `null` it was given is not unknown.
fn unknown_field(raw: &serde_json::Value, known: &serde_json::Value, path: &str) -> Option<String> {
    use serde_json::Value;
    match (raw, known) {
        (Value::Object(raw), Value::Object(known)) => raw.iter().find_map(|(name, value)| {
            let here = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            match known.get(name) {
                Some(k) => unknown_field(value, k, &here),
                None if value.is_null() => None,
                None => Some(here),
            }
        }),
        (Value::Array(raw), Value::Array(known)) => raw
            .iter()
            .zip(known)
            .enumerate()
            .find_map(|(i, (r, k))| unknown_field(r, k, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// An object id as a change names it: counter and actor.
type RawObj = (u64, ActorId);

/// Where a new entry was written.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Written {
    /// Schema 1's flat `events` map, under `<call>/<event>`.
    Flat,
    /// A call's map, under `<event>`.
    CallMap(RawObj),
}

/// One new entry, as a change's operation wrote it.
struct NewEntry {
    /// The operation's key: `<call>/<event>` (flat) or `<event>` (a call's map).
    key: String,
    json: String,
    place: Written,
    /// Whether the map it was written into was created by the same changes.
    new_map: bool,
}

/// A call's map created by the new changes.
struct NewMap {
    call: CallId,
    bucket: String,
    obj: RawObj,
}

struct WrittenEntries {
    entries: Vec<NewEntry>,
    new_maps: Vec<NewMap>,
}

fn raw_obj(obj: &automerge::ObjId) -> Option<RawObj> {
    match obj {
        automerge::ObjId::Id(counter, actor, _) => Some((*counter, actor.clone())),
        automerge::ObjId::Root => None,
    }
}

/// Every entry the new changes add and every call map they create, read from
/// the changes' own operations. A device may only:
/// - put a string into schema 1's flat `events` map, under a new key;
/// - create a call's map (a new key of the call's bucket, schema 2);
/// - put a string into a call's map (checked to be that call's by the caller).
///
/// None with a predecessor (nothing overwritten or deleted); anything else is
/// refused.
fn new_entries(
    doc: &mut CustomerDoc,
    new_changes: &[automerge::Change],
) -> Result<WrittenEntries, AdmissionError> {
    use automerge::legacy::{Key, ObjectId, OpType};
    let Some(events_id) = raw_obj(doc.events_object()) else {
        return Err(AdmissionError::ForbiddenEdit {
            what: "the document root".to_owned(),
        });
    };
    // The buckets (schema 2), by object id.
    let mut buckets: Vec<(RawObj, String)> = Vec::new();
    let mut calls_map = None;
    if let Some(read) = doc.buckets()? {
        for (bucket, key) in read.buckets.iter().zip(BUCKET_KEYS) {
            if let Some(id) = raw_obj(bucket) {
                buckets.push((id, key.to_owned()));
            }
        }
        calls_map = raw_obj(&read.calls);
    }
    let mut written = WrittenEntries {
        entries: Vec::new(),
        new_maps: Vec::new(),
    };
    for change in new_changes {
        if change.message().is_some_and(|m| !m.is_empty()) {
            return Err(AdmissionError::ForbiddenEdit {
                what: "a commit message".to_owned(),
            });
        }
        if !change.extra_bytes().is_empty() {
            return Err(AdmissionError::ForbiddenEdit {
                what: "extra bytes in a change".to_owned(),
            });
        }
        if change.is_empty() {
            return Err(AdmissionError::ForbiddenEdit {
                what: "an empty change".to_owned(),
            });
        }
        if change.len() > MAX_OPS_PER_CHANGE {
            return Err(AdmissionError::TooLarge {
                what: "operations in one change",
                limit: MAX_OPS_PER_CHANGE,
            });
        }
        if change.raw_bytes().len() > MAX_CHANGE_BYTES {
            return Err(AdmissionError::TooLarge {
                what: "bytes in one change",
                limit: MAX_CHANGE_BYTES,
            });
        }
        let start_op = change.start_op().get();
        let actor = change.actor_id().clone();
        for (i, op) in change.decode().operations.into_iter().enumerate() {
            let obj: Option<RawObj> = match &op.obj {
                ObjectId::Root => None,
                ObjectId::Id(id) => Some((id.counter(), id.actor().clone())),
            };
            let bucket = obj
                .as_ref()
                .and_then(|o| buckets.iter().find(|(b, _)| b == o))
                .map(|(_, key)| key.clone());
            let place = match (&obj, &bucket) {
                (None, _) => "the document root",
                (Some(o), _) if *o == events_id => "the events map",
                (Some(o), _) if Some(o) == calls_map.as_ref() => "the calls map",
                (_, Some(_)) => "a calls bucket",
                (Some(_), None) => "an object",
            };
            let key = match &op.key {
                Key::Map(key) => key.to_string(),
                Key::Seq(_) => "a list position".to_owned(),
            };
            if op.insert || !op.pred.is_empty() || matches!(op.key, Key::Seq(_)) {
                return Err(AdmissionError::ForbiddenEdit {
                    what: if op.pred.is_empty() {
                        format!("{key} in {place}")
                    } else {
                        format!("the existing entry {key} in {place}")
                    },
                });
            }
            match (&op.action, place, &bucket) {
                (OpType::Make(automerge::ObjType::Map), "a calls bucket", Some(bucket)) => {
                    let Ok(call) = CallId::new(key.clone()) else {
                        return Err(AdmissionError::MalformedEvent { key });
                    };
                    if call_bucket(&call) != bucket {
                        return Err(AdmissionError::ForbiddenEdit {
                            what: format!("call {key}'s map in bucket {bucket}"),
                        });
                    }
                    written.new_maps.push(NewMap {
                        call,
                        bucket: bucket.clone(),
                        obj: (start_op + i as u64, actor.clone()),
                    });
                }
                (OpType::Put(automerge::ScalarValue::Str(json)), "the events map", _) => {
                    written.entries.push(NewEntry {
                        key,
                        json: json.to_string(),
                        place: Written::Flat,
                        new_map: false,
                    });
                }
                (OpType::Put(automerge::ScalarValue::Str(json)), "an object", _) => {
                    let Some(obj) = obj else {
                        return Err(AdmissionError::ForbiddenEdit {
                            what: format!("{key} in {place}"),
                        });
                    };
                    let new_map = written.new_maps.iter().any(|m| m.obj == obj);
                    written.entries.push(NewEntry {
                        key,
                        json: json.to_string(),
                        place: Written::CallMap(obj),
                        new_map,
                    });
                }
                (OpType::Put(_), "the events map" | "an object", _) => {
                    return Err(AdmissionError::MalformedEvent { key });
                }
                _ => {
                    return Err(AdmissionError::ForbiddenEdit {
                        what: format!("{key} in {place}"),
                    });
                }
            }
        }
    }
    Ok(written)
}

/// Checks that `map` is the one map of `call` (in its bucket, with no rival: a
/// second map created concurrently would hide the first, or be hidden by it).
fn check_call_map(
    doc: &CustomerDoc,
    call: &CallId,
    map: &RawObj,
    key: &str,
) -> Result<(), AdmissionError> {
    let am = doc.automerge();
    let maps = match doc.bucket_map(call)? {
        Some(bucket) => am
            .get_all(&bucket, call.as_str())
            .map_err(CoreError::from)?,
        None => Vec::new(),
    };
    match maps.as_slice() {
        [(automerge::Value::Object(automerge::ObjType::Map), id)]
            if raw_obj(id).as_ref() == Some(map) =>
        {
            Ok(())
        }
        [_, _, ..] => Err(AdmissionError::ForbiddenEdit {
            what: format!("a second map of call {call}"),
        }),
        _ => Err(AdmissionError::ForbiddenEdit {
            what: format!("{key} in a map that is not call {call}'s"),
        }),
    }
}

/// The checks on where the new entries landed, against the document before and
/// after the changes: no key written twice or written before, a call's map
/// created once, only for a call not already kept in the flat map and only with
/// events of its own, and no flat entry for a call that has a map.
fn check_new_places(
    doc: &CustomerDoc,
    before: &[ChangeHash],
    entries: &mut [(String, Written, bool, CallEvent)],
    new_maps: &[NewMap],
) -> Result<(), AdmissionError> {
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for pair in entries.windows(2) {
        if pair[0].0 == pair[1].0 {
            return Err(AdmissionError::ForbiddenEdit {
                what: format!("the entry {} twice", pair[0].0),
            });
        }
    }
    let am = doc.automerge();
    let events_obj = doc.events_object();
    let has_buckets = doc.buckets()?.is_some();
    for map in new_maps {
        let call = &map.call;
        let Some(bucket) = doc.bucket_map(call)? else {
            return Err(AdmissionError::ForbiddenEdit {
                what: format!("call {call}'s map"),
            });
        };
        let existed = am
            .get_at(&bucket, call.as_str(), before)
            .map_err(CoreError::from)?
            .is_some();
        let versions = am
            .get_all(&bucket, call.as_str())
            .map_err(CoreError::from)?
            .len();
        if existed || versions != 1 || map.bucket != call_bucket(call) {
            return Err(AdmissionError::ForbiddenEdit {
                what: format!("the existing map of call {call}"),
            });
        }
        if has_flat_entries(doc, call) {
            return Err(AdmissionError::ForbiddenEdit {
                what: format!("a map for call {call}, whose events are in the events map"),
            });
        }
        if !entries
            .iter()
            .any(|(_, place, _, _)| *place == Written::CallMap(map.obj.clone()))
        {
            return Err(AdmissionError::ForbiddenEdit {
                what: format!("an empty map for call {call}"),
            });
        }
    }
    for (key, place, new_map, event) in entries.iter() {
        let (obj, prop) = match place {
            Written::Flat => {
                if has_buckets && doc.call_map(&event.call)?.is_some() {
                    return Err(AdmissionError::ForbiddenEdit {
                        what: format!(
                            "{key} in the events map: call {} has its own map",
                            event.call
                        ),
                    });
                }
                (events_obj.clone(), key.as_str())
            }
            Written::CallMap(_) => {
                let Some(map) = doc.call_map(&event.call)? else {
                    return Err(AdmissionError::ForbiddenEdit {
                        what: format!("{key} outside call {}'s map", event.call),
                    });
                };
                (map, event.id.as_str())
            }
        };
        // A map created by these changes had no entries before them.
        let existed = !new_map
            && am
                .get_at(&obj, prop, before)
                .map_err(CoreError::from)?
                .is_some();
        let versions = am.get_all(&obj, prop).map_err(CoreError::from)?.len();
        if existed || versions != 1 {
            return Err(AdmissionError::ForbiddenEdit {
                what: format!("the existing event {key}"),
            });
        }
    }
    Ok(())
}

/// Whether schema 1's flat map holds events of `call`.
fn has_flat_entries(doc: &CustomerDoc, call: &CallId) -> bool {
    // Keys are "<call>/<event>"; '0' is the character after '/'.
    let (from, to) = (format!("{call}/"), format!("{call}0"));
    doc.automerge()
        .map_range(doc.events_object(), from..to)
        .next()
        .is_some()
}

fn check_stamp(key: &str, event: &CallEvent, sender: &Sender) -> Result<(), AdmissionError> {
    let forged = |field| AdmissionError::ForgedStamp {
        key: key.to_owned(),
        field,
    };
    if event.stamp.device != sender.device {
        return Err(forged("device"));
    }
    if event.stamp.device_kind != sender.kind {
        return Err(forged("device kind"));
    }
    if event.stamp.user != sender.user {
        return Err(forged("user"));
    }
    if !event.kind.recorded_by().contains(&sender.kind) {
        return Err(CoreError::WrongDeviceKind {
            event: event.kind.name(),
            device_kind: sender.kind.as_str(),
        }
        .into());
    }
    Ok(())
}

/// The checks that hold whatever the interleaving: who may act on the call, and
/// the event's own fields.
fn check_reference(
    doc: &CustomerDoc,
    event: &CallEvent,
    sender: &Sender,
    directory: &impl Directory,
    catalog: &ResultCatalog,
) -> Result<(), AdmissionError> {
    match &event.kind {
        EventKind::Requested {
            destination,
            origin,
            ..
        } => {
            if !directory.is_phone_of(origin, &sender.user) {
                return Err(AdmissionError::NotYourPhone {
                    device: origin.clone(),
                });
            }
            // The numbers only: deriving the whole customer here would cost a read
            // of every call for each request admitted.
            if !doc
                .phones()?
                .iter()
                .any(|p| p.number.same_line(destination))
            {
                return Err(CoreError::NumberNotOnCustomer {
                    number: destination.clone(),
                }
                .into());
            }
            Ok(())
        }
        EventKind::ManualCall { .. } => Ok(()),
        kind => {
            let origin = doc
                .call_events(&event.call)
                .into_iter()
                .find(|e| {
                    matches!(
                        e.kind,
                        EventKind::Requested { .. } | EventKind::ManualCall { .. }
                    )
                })
                .ok_or_else(|| CoreError::UnknownCall {
                    call: event.call.clone(),
                })?;
            match kind {
                EventKind::Started | EventKind::PhoneEnded { .. } => match &origin.kind {
                    EventKind::Requested { origin, .. } if origin == &sender.device => Ok(()),
                    _ => Err(CoreError::NotOriginPhone {
                        call: event.call.clone(),
                        origin: match &origin.kind {
                            EventKind::Requested { origin, .. } => origin.to_string(),
                            _ => "(manual call)".to_owned(),
                        },
                    }
                    .into()),
                },
                EventKind::RecordingDeleted => {
                    let needed = kind.role_needed();
                    if sender.role >= needed {
                        Ok(())
                    } else {
                        Err(AdmissionError::RoleRequired {
                            event: kind.name(),
                            needed: needed.as_str(),
                        })
                    }
                }
                EventKind::ResultSaved(fields) => {
                    mine(&origin, event, sender)?;
                    let spec = catalog.get(&fields.result_type).ok_or_else(|| {
                        CoreError::UnknownResultType {
                            result_type: fields.result_type.clone(),
                        }
                    })?;
                    if !spec.options.contains(&fields.option.kind()) {
                        return Err(CoreError::OptionNotAllowed {
                            result_type: fields.result_type.clone(),
                            option: fields.option.kind(),
                        }
                        .into());
                    }
                    check_option_time(&fields.option, event.stamp.at)?;
                    if fields.memo.chars().count() > MAX_MEMO_CHARS {
                        return Err(CoreError::FieldTooLong {
                            field: "memo",
                            max: MAX_MEMO_CHARS,
                        }
                        .into());
                    }
                    Ok(())
                }
                _ => mine(&origin, event, sender),
            }
        }
    }
}

/// A desk acts only on its own user's calls.
fn mine(origin: &CallEvent, event: &CallEvent, sender: &Sender) -> Result<(), AdmissionError> {
    if origin.stamp.user == sender.user {
        Ok(())
    } else {
        Err(AdmissionError::NotYourCall {
            call: event.call.clone(),
        })
    }
}
