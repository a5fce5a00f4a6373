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
}

/// The fields of a saved call result (the result form).
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
