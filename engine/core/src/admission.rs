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
use crate::document::CustomerDoc;
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
    let entries = new_entries(doc, &new_changes, before)?;
    let mut events = Vec::with_capacity(entries.len());
    let mut keys = Vec::with_capacity(entries.len());
    for (key, json) in entries {
        let event = parse_event(&key, &json)?;
        if key != format!("{}/{}", event.call, event.id) {
            return Err(AdmissionError::MalformedEvent { key });
        }
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

/// The `(key, json)` of every entry the new changes add, read from the changes'
/// own operations: each must be a put of a string into the `events` map under a
/// key nobody wrote before, with no predecessor; anything else is refused.
fn new_entries(
    doc: &mut CustomerDoc,
    new_changes: &[automerge::Change],
    before: &[ChangeHash],
) -> Result<Vec<(String, String)>, AdmissionError> {
    use automerge::legacy::{Key, ObjectId, OpType};
    let events_obj = doc.events_object().clone();
    let events_id = match &events_obj {
        automerge::ObjId::Id(counter, actor, _) => (*counter, actor.clone()),
        automerge::ObjId::Root => {
            return Err(AdmissionError::ForbiddenEdit {
                what: "the document root".to_owned(),
            });
        }
    };
    let mut entries: Vec<(String, String)> = Vec::new();
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
        for op in change.decode().operations {
            let in_events = matches!(&op.obj, ObjectId::Id(id) if id.counter() == events_id.0 && id.actor() == &events_id.1);
            let place = match &op.obj {
                ObjectId::Root => "the document root",
                _ if in_events => "the events map",
                _ => "the customer profile or numbers",
            };
            let key = match &op.key {
                Key::Map(key) => key.to_string(),
                Key::Seq(_) => "a list position".to_owned(),
            };
            let json = match (&op.action, in_events, op.insert, op.pred.is_empty()) {
                (OpType::Put(automerge::ScalarValue::Str(json)), true, false, true) => json,
                (OpType::Put(_), true, false, true) => {
                    return Err(AdmissionError::MalformedEvent { key });
                }
                (OpType::Delete, ..) | (_, true, false, false) => {
                    return Err(AdmissionError::ForbiddenEdit {
                        what: format!("the existing entry {key} in {place}"),
                    });
                }
                _ => {
                    return Err(AdmissionError::ForbiddenEdit {
                        what: format!("{key} in {place}"),
                    });
                }
            };
            entries.push((key, json.to_string()));
        }
    }
    entries.sort();
    for pair in entries.windows(2) {
        if pair[0].0 == pair[1].0 {
            return Err(AdmissionError::ForbiddenEdit {
                what: format!("the entry {} twice", pair[0].0),
            });
        }
    }
    let am = doc.automerge();
    for (key, _) in &entries {
        let existed = am
            .get_at(&events_obj, key.as_str(), before)
            .map_err(CoreError::from)?
            .is_some();
        let versions = am
            .get_all(&events_obj, key.as_str())
            .map_err(CoreError::from)?
            .len();
        if existed || versions != 1 {
            return Err(AdmissionError::ForbiddenEdit {
                what: format!("the existing event {key}"),
            });
        }
    }
    Ok(entries)
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
