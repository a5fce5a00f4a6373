//! Call lifecycle events: what devices record, immutable once written.
//!
//! Owns: the event vocabulary of CALL-LIFECYCLE.md and who may record each kind.
//! Does not own: whether an event is allowed now (see [`crate::rules`]) or what a
//! set of events means (see [`crate::lifecycle`]).

use serde::{Deserialize, Serialize};

use crate::customer::CustomerStatus;
use crate::id::{CallId, DeviceId, EventId, UserId};
use crate::phone_number::PhoneNumber;
use crate::result_type::{ResultOption, ResultTypeId};
use crate::time::Timestamp;

/// The kind of device that recorded an event. Which kinds may record which events
/// is fixed here; the sync layer binds each device to its kind.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceKind {
    /// The CRM in a browser (or the desk client standing in for it).
    Desk,
    /// The rep's phone, which dials and records.
    Phone,
    /// The server.
    Server,
}

impl DeviceKind {
    /// The lowercase name used in documents and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Desk => "desk",
            Self::Phone => "phone",
            Self::Server => "server",
        }
    }
}

/// Who recorded an event, and when, on the server's clock.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// When the event was recorded, on the server's clock: the device's own clock
    /// corrected by the offset it learnt from the server at its last join (see
    /// `callsync_session::device::ServerClock`). Every rule that compares times of
    /// different devices compares these.
    pub at: Timestamp,
    /// The device that recorded it.
    pub device: DeviceId,
    /// What kind of device that is.
    pub device_kind: DeviceKind,
    /// The user signed in on that device.
    pub user: UserId,
    /// The device's own wall-clock time when it recorded the event, uncorrected,
    /// kept for the record (absent when the device knew no offset, or on events
    /// recorded before devices learnt one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_at: Option<Timestamp>,
}

/// One recorded event on one call.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CallEvent {
    /// Unique id; a duplicate delivery carries the same id and collapses.
    pub id: EventId,
    /// The call the event belongs to.
    pub call: CallId,
    /// Who recorded it and when.
    pub stamp: Stamp,
    /// What happened.
    pub kind: EventKind,
}

/// What happened, with what each kind carries.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// The desk asked a phone to dial.
    Requested {
        /// The customer's number to dial.
        destination: PhoneNumber,
        /// The phone that is to dial.
        origin: DeviceId,
        /// Whether the call is to be recorded (on by default in the UI).
        recording: bool,
    },
    /// The desk cancelled the request.
    Cancelled,
    /// The server saw the start limit pass without a start it knew of.
    Expired,
    /// The origin phone started the call.
    Started,
    /// The origin phone ended the call.
    PhoneEnded {
        /// How long the call lasted, by the phone, in seconds.
        duration_secs: u32,
    },
    /// The desk ended the call (the red button).
    BrowserEnded,
    /// A call result was saved.
    ResultSaved(SavedResultFields),
    /// The server verified and stored the recording's bytes.
    RecordingAttached(RecordingRef),
    /// A manager or above deleted the recording.
    RecordingDeleted,
    /// A call made outside the system (e.g. a callback received), logged by the desk.
    ManualCall {
        /// The number the call was with.
        number: PhoneNumber,
    },
}

impl EventKind {
    /// The kebab-case name used in documents, logs and timelines.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Requested { .. } => "requested",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::Started => "started",
            Self::PhoneEnded { .. } => "phone-ended",
            Self::BrowserEnded => "browser-ended",
            Self::ResultSaved(_) => "result-saved",
            Self::RecordingAttached(_) => "recording-attached",
            Self::RecordingDeleted => "recording-deleted",
            Self::ManualCall { .. } => "manual-call",
        }
    }

    /// The event in the rep's words, for timelines: `(English, Japanese)`.
    pub fn words(&self) -> (&'static str, &'static str) {
        kind_words(self.name()).unwrap_or((self.name(), self.name()))
    }

    /// Where the event sits in a call's life, to order events recorded at the same
    /// instant (a timeline shows `browser-ended` before the `result-saved` it allowed).
    pub fn lifecycle_rank(&self) -> u8 {
        match self {
            Self::Requested { .. } | Self::ManualCall { .. } => 0,
            Self::Cancelled | Self::Expired => 1,
            Self::Started => 2,
            Self::PhoneEnded { .. } => 3,
            Self::BrowserEnded => 4,
            Self::ResultSaved(_) => 5,
            Self::RecordingAttached(_) => 6,
            Self::RecordingDeleted => 7,
        }
    }

    /// The device kinds allowed to record this kind of event.
    pub fn recorded_by(&self) -> &'static [DeviceKind] {
        use DeviceKind::*;
        match self {
            Self::Requested { .. }
            | Self::Cancelled
            | Self::BrowserEnded
            | Self::ManualCall { .. } => &[Desk],
            Self::RecordingDeleted => &[Desk],
            Self::Expired | Self::RecordingAttached(_) => &[Server],
            Self::Started | Self::PhoneEnded { .. } => &[Phone],
            Self::ResultSaved(_) => &[Desk, Phone],
        }
    }

    /// The least role whose member may record this kind of event (the server
    /// admits nothing less; a device refuses it before recording).
    pub fn role_needed(&self) -> crate::account::Role {
        match self {
            Self::RecordingDeleted => crate::account::Role::Manager,
            _ => crate::account::Role::User,
        }
    }
}

/// Every event kind's name ([`EventKind::name`]).
pub const KIND_NAMES: [&str; 10] = [
    "requested",
    "cancelled",
    "expired",
    "started",
    "phone-ended",
    "browser-ended",
    "result-saved",
    "recording-attached",
    "recording-deleted",
    "manual-call",
];

/// An event kind in the rep's words, by its name: `(English, Japanese)`. Every
/// screen's timeline says these.
pub fn kind_words(name: &str) -> Option<(&'static str, &'static str)> {
    Some(match name {
        "requested" => ("Call requested", "コールを依頼"),
        "cancelled" => ("Call cancelled", "コールをキャンセル"),
        "expired" => ("Not started in time", "開始されずに期限切れ"),
        "started" => ("Call started on the phone", "スマートフォンで通話開始"),
        "phone-ended" => ("Call ended on the phone", "スマートフォンで終話"),
        "browser-ended" => ("Call ended in the browser", "ブラウザで終話"),
        "result-saved" => ("Call result saved", "コール結果を保存"),
        "recording-attached" => ("Recording stored", "録音を保存"),
        "recording-deleted" => ("Recording deleted", "録音を削除"),
        "manual-call" => ("Manual call logged", "手動コールを記録"),
        _ => return None,
    })
}

/// The fields of a saved call result (the result form).
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SavedResultFields {
    /// One of the tenant's result types.
    pub result_type: ResultTypeId,
    /// None, recall at a time, or call restriction until a time.
    pub option: ResultOption,
    /// The customer status picked on the form, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_status: Option<CustomerStatus>,
    /// Free memo.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub memo: String,
    /// The rules that decided `option` and `customer_status` from the user's pick
    /// (see [`crate::plugin::DecisionRecord`]); absent on results saved without a
    /// rule set. Boxed: most events are not results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Box<crate::plugin::DecisionRecord>>,
    /// Set when the pick was saved as made because the tenant's rules could not be
    /// asked (the device was offline, the server busy or silent): why, as a code
    /// (see `callsync_session::device::KeptReason`). The hub re-checks nothing it
    /// did not decide; the recall list and the dashboard show the pick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_as_picked: Option<String>,
}

/// A reference to a recording the server holds.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RecordingRef {
    /// Lowercase hex SHA-256 of the bytes.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Length in milliseconds.
    pub duration_ms: u64,
    /// Container and codec, e.g. `wav/pcm16`.
    pub format: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_japanese(text: &str) -> bool {
        text.chars()
            .any(|c| matches!(c, '\u{3040}'..='\u{30ff}' | '\u{4e00}'..='\u{9fff}'))
    }

    #[test]
    fn every_event_kind_has_words_in_both_languages() {
        let fields = SavedResultFields {
            result_type: ResultTypeId::new("appointment").unwrap(),
            option: ResultOption::None,
            customer_status: None,
            memo: String::new(),
            decision: None,
            kept_as_picked: None,
        };
        let number = PhoneNumber::parse("03-1234-5678").unwrap();
        let kinds = [
            EventKind::Requested {
                destination: number.clone(),
                origin: DeviceId::new("phone-1").unwrap(),
                recording: true,
            },
            EventKind::Cancelled,
            EventKind::Expired,
            EventKind::Started,
            EventKind::PhoneEnded { duration_secs: 1 },
            EventKind::BrowserEnded,
            EventKind::ResultSaved(fields),
            EventKind::RecordingAttached(RecordingRef {
                sha256: String::new(),
                size: 0,
                duration_ms: 0,
                format: String::new(),
            }),
            EventKind::RecordingDeleted,
            EventKind::ManualCall { number },
        ];
        let names: Vec<&str> = kinds.iter().map(EventKind::name).collect();
        assert_eq!(names, KIND_NAMES);
        for kind in &kinds {
            let (en, ja) = kind.words();
            assert!(!en.is_empty() && !is_japanese(en), "{en}");
            assert!(is_japanese(ja), "{ja}");
        }
        assert_eq!(kind_words("no-such-kind"), None);
    }
}
