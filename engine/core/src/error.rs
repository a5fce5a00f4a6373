//! [`CoreError`]: every refusal and every unreadable document, typed.
//!
//! Owns: the English text ([`std::fmt::Display`]), the Japanese text
//! ([`CoreError::message_ja`]) and a stable machine code ([`CoreError::code`]) for
//! each variant, so UIs and scripts never parse sentences.
//! Does not own: I/O errors (the store and the hosts have their own enums).

use crate::event::DeviceKind;
use crate::id::{CallId, EventId, IdError, ResultTypeId};
use crate::lifecycle::Phase;
use crate::phone_number::{PhoneNumber, PhoneNumberError};
use crate::result_type::OptionKind;
use crate::time::Timestamp;

/// Why the core refused an action or could not read a document. A refused action
/// changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// An id was malformed.
    #[error(transparent)]
    Id(#[from] IdError),
    /// A phone number was not a Japanese number.
    #[error(transparent)]
    PhoneNumber(#[from] PhoneNumberError),
    /// A required text field was empty.
    #[error("{field} must not be empty")]
    EmptyField {
        /// The field's name.
        field: &'static str,
    },
    /// A field was longer than allowed.
    #[error("{field} is longer than {max} characters")]
    FieldTooLong {
        /// The field's name.
        field: &'static str,
        /// The limit.
        max: usize,
    },
    /// A customer needs at least one phone number.
    #[error("a customer needs at least one phone number")]
    NoPhoneNumbers,
    /// The call is not on this customer.
    #[error("no call {call} on this customer")]
    UnknownCall {
        /// The call.
        call: CallId,
    },
    /// A new call reused an existing call id.
    #[error("call {call} already exists")]
    DuplicateCall {
        /// The call.
        call: CallId,
    },
    /// An event reused an existing event id.
    #[error("event {event} was already recorded")]
    DuplicateEvent {
        /// The event.
        event: EventId,
    },
    /// This kind of device may not record this event.
    #[error("a {device_kind} may not record '{event}'")]
    WrongDeviceKind {
        /// The event's name.
        event: &'static str,
        /// The kind of device that tried.
        device_kind: &'static str,
    },
    /// The destination is not one of the customer's numbers.
    #[error("{number} is not one of this customer's numbers")]
    NumberNotOnCustomer {
        /// The number asked for.
        number: PhoneNumber,
    },
    /// The customer is under a call restriction.
    #[error("this customer may not be called until {until} (call restriction)")]
    CustomerRestricted {
        /// When the restriction ends.
        until: Timestamp,
    },
    /// The user has a call whose result is still due.
    #[error("save the result of call {call} before requesting another call")]
    PendingResult {
        /// The call waiting for its result.
        call: CallId,
    },
    /// The user is in a call.
    #[error("call {call} is still in progress: end it before requesting another call")]
    CallInProgress {
        /// The call in progress.
        call: CallId,
    },
    /// The user already has a request waiting for *Start call*.
    #[error("call {call} is still waiting for Start call on the phone: cancel it first")]
    RequestWaiting {
        /// The waiting request.
        call: CallId,
    },
    /// Only the phone the request was sent to may start or end it.
    #[error("only the origin phone {origin} may record this on call {call}")]
    NotOriginPhone {
        /// The call.
        call: CallId,
        /// The origin phone.
        origin: String,
    },
    /// The action needs the call to be waiting for a start.
    #[error("call {call} is {}, not waiting for a start", phase.as_str())]
    NotAwaitingStart {
        /// The call.
        call: CallId,
        /// Where it stands.
        phase: Phase,
    },
    /// The phone tried to start after the start limit passed.
    #[error("call {call} can no longer be started: Start call was not pressed within the limit")]
    StartLimitPassed {
        /// The call.
        call: CallId,
    },
    /// The server tried to expire a request before the limit.
    #[error("call {call} has not reached its start limit yet")]
    NotYetExpired {
        /// The call.
        call: CallId,
    },
    /// The action needs a started call.
    #[error("call {call} has not started")]
    NotStarted {
        /// The call.
        call: CallId,
    },
    /// This side has already ended the call.
    #[error("call {call} was already ended on the {side}")]
    AlreadyEnded {
        /// The call.
        call: CallId,
        /// `phone` or `browser`.
        side: &'static str,
    },
    /// A result was saved before the browser ended the call.
    #[error("end call {call} in the browser before saving its result")]
    ResultBeforeBrowserEnded {
        /// The call.
        call: CallId,
    },
    /// A result was saved for a call that never started.
    #[error("call {call} never started, so it has no result to save")]
    CallNeverStarted {
        /// The call.
        call: CallId,
    },
    /// This device already knows a result for the call.
    #[error("call {call} already has a saved result")]
    ResultAlreadySaved {
        /// The call.
        call: CallId,
    },
    /// The result type is not one of the tenant's.
    #[error("unknown result type {result_type}")]
    UnknownResultType {
        /// The type asked for.
        result_type: ResultTypeId,
    },
    /// The result type does not offer this option.
    #[error("result type {result_type} does not allow the option '{}'", option.as_str())]
    OptionNotAllowed {
        /// The type.
        result_type: ResultTypeId,
        /// The option asked for.
        option: OptionKind,
    },
    /// A recall or restriction with no time, where no rule set picks one.
    #[error("pick a time for the {}", option.as_str())]
    OptionTimeRequired {
        /// The option.
        option: OptionKind,
    },
    /// The option time is not on a 5-minute step.
    #[error("the time {at} is not on a 5-minute step")]
    OptionTimeNotOnStep {
        /// The time given.
        at: Timestamp,
    },
    /// The option time is not in the future.
    #[error("the time {at} is not in the future (now {now})")]
    OptionTimeInPast {
        /// The time given.
        at: Timestamp,
        /// The time of saving.
        now: Timestamp,
    },
    /// The call was not recorded, so it has no recording.
    #[error("call {call} has no recording")]
    NoRecording {
        /// The call.
        call: CallId,
    },
    /// The document is not a customer document this version can read.
    #[error("the customer document is malformed at '{path}': {reason}")]
    MalformedDocument {
        /// Where in the document.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The document was written by a newer version.
    #[error("the customer document has schema version {found}; this build reads up to {supported}")]
    UnsupportedSchema {
        /// The document's version.
        found: u64,
        /// The newest this build reads.
        supported: u64,
    },
    /// Two documents that are not replicas of one customer document.
    #[error("{theirs} is not a replica of the customer document {ours}")]
    DifferentDocument {
        /// This document's tenant/customer.
        ours: String,
        /// The other's.
        theirs: String,
    },
    /// Automerge refused the bytes or the operation.
    #[error("the customer document could not be read or changed: {0}")]
    Automerge(String),
}

impl From<automerge::AutomergeError> for CoreError {
    fn from(e: automerge::AutomergeError) -> Self {
        Self::Automerge(e.to_string())
    }
}

impl CoreError {
    /// A stable kebab-case code for scripts and UIs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Id(_) => "bad-id",
            Self::PhoneNumber(_) => "bad-phone-number",
            Self::EmptyField { .. } => "empty-field",
            Self::FieldTooLong { .. } => "field-too-long",
            Self::NoPhoneNumbers => "no-phone-numbers",
            Self::UnknownCall { .. } => "unknown-call",
            Self::DuplicateCall { .. } => "duplicate-call",
            Self::DuplicateEvent { .. } => "duplicate-event",
            Self::WrongDeviceKind { .. } => "wrong-device-kind",
            Self::NumberNotOnCustomer { .. } => "number-not-on-customer",
            Self::CustomerRestricted { .. } => "customer-restricted",
            Self::PendingResult { .. } => "pending-result",
            Self::CallInProgress { .. } => "call-in-progress",
            Self::RequestWaiting { .. } => "request-waiting",
            Self::NotOriginPhone { .. } => "not-origin-phone",
            Self::NotAwaitingStart { .. } => "not-awaiting-start",
            Self::StartLimitPassed { .. } => "start-limit-passed",
            Self::NotYetExpired { .. } => "not-yet-expired",
            Self::NotStarted { .. } => "not-started",
            Self::AlreadyEnded { .. } => "already-ended",
            Self::ResultBeforeBrowserEnded { .. } => "result-before-browser-ended",
            Self::CallNeverStarted { .. } => "call-never-started",
            Self::ResultAlreadySaved { .. } => "result-already-saved",
            Self::UnknownResultType { .. } => "unknown-result-type",
            Self::OptionNotAllowed { .. } => "option-not-allowed",
            Self::OptionTimeRequired { .. } => "option-time-required",
            Self::OptionTimeNotOnStep { .. } => "option-time-not-on-step",
            Self::OptionTimeInPast { .. } => "option-time-in-past",
            Self::NoRecording { .. } => "no-recording",
            Self::MalformedDocument { .. } => "malformed-document",
            Self::UnsupportedSchema { .. } => "unsupported-schema",
            Self::DifferentDocument { .. } => "different-document",
            Self::Automerge(_) => "document-error",
        }
    }

    /// The message in Japanese, for the UI.
    pub fn message_ja(&self) -> String {
        match self {
            Self::Id(e) => e.message_ja(),
            Self::PhoneNumber(e) => format!("「{}」は日本の電話番号ではありません", e.written),
            Self::EmptyField { field } => format!("{}を入力してください", field_ja(field)),
            Self::FieldTooLong { field, max } => {
                format!("{}は{max}文字以内で入力してください", field_ja(field))
            }
            Self::NoPhoneNumbers => "電話番号を1つ以上登録してください".to_owned(),
            Self::UnknownCall { call } => format!("この顧客にコール {call} はありません"),
            Self::DuplicateCall { call } => format!("コール {call} はすでに存在します"),
            Self::DuplicateEvent { event } => format!("イベント {event} はすでに記録されています"),
            Self::WrongDeviceKind { event, device_kind } => {
                format!(
                    "{} からは「{event}」を記録できません",
                    device_kind_ja(device_kind)
                )
            }
            Self::NumberNotOnCustomer { number } => {
                format!("{number} はこの顧客の電話番号ではありません")
            }
            Self::CustomerRestricted { until } => format!("この顧客は {until} までコール禁止です"),
            Self::PendingResult { call } => {
                format!("コール {call} のコール結果を保存してから、次のコールを発信してください")
            }
            Self::CallInProgress { call } => {
                format!("コール {call} が通話中です。終了してから発信してください")
            }
            Self::RequestWaiting { call } => {
                format!("コール {call} がアプリでの発信開始待ちです。先にキャンセルしてください")
            }
            Self::NotOriginPhone { call, origin } => {
                format!("コール {call} を操作できるのは発信元の端末 {origin} だけです")
            }
            Self::NotAwaitingStart { call, phase } => {
                format!(
                    "コール {call} は発信開始待ちではありません（{}）",
                    phase_ja(*phase)
                )
            }
            Self::StartLimitPassed { call } => {
                format!("コール {call} は、発信開始が押されなかったためキャンセルされました")
            }
            Self::NotYetExpired { call } => format!("コール {call} はまだ発信開始の期限前です"),
            Self::NotStarted { call } => format!("コール {call} はまだ開始されていません"),
            Self::AlreadyEnded { call, side } => {
                let side = if *side == "phone" {
                    "アプリ"
                } else {
                    "ブラウザ"
                };
                format!("コール {call} は{side}で終了済みです")
            }
            Self::ResultBeforeBrowserEnded { call } => {
                format!("コール {call} をブラウザで終了してからコール結果を保存してください")
            }
            Self::CallNeverStarted { call } => {
                format!("コール {call} は開始されていないため、コール結果を保存できません")
            }
            Self::ResultAlreadySaved { call } => {
                format!("コール {call} のコール結果は保存済みです")
            }
            Self::UnknownResultType { result_type } => {
                format!("コール結果「{result_type}」は登録されていません")
            }
            Self::OptionNotAllowed {
                result_type,
                option,
            } => {
                format!(
                    "コール結果「{result_type}」では結果オプション「{}」を選べません",
                    option_ja(*option)
                )
            }
            Self::OptionTimeRequired { .. } => "日時を指定してください".to_owned(),
            Self::OptionTimeNotOnStep { at } => format!("日時 {at} は5分単位で指定してください"),
            Self::OptionTimeInPast { at, .. } => {
                format!("日時 {at} は現在より後を指定してください")
            }
            Self::NoRecording { call } => format!("コール {call} には録音がありません"),
            // The reason is a technical English text: it stays in `message` and
            // the logs; the key path is data, not prose.
            Self::MalformedDocument { path, .. } => {
                format!("顧客データが壊れています（{path}）")
            }
            Self::UnsupportedSchema { found, supported } => format!(
                "顧客データのバージョン {found} はこのバージョン（{supported} まで）では読めません。アップデートしてください"
            ),
            Self::DifferentDocument { ours, theirs } => {
                format!("{theirs} は顧客データ {ours} の複製ではありません")
            }
            Self::Automerge(_) => "顧客データを読み書きできません".to_owned(),
        }
    }
}

/// What each checked field is called in the Japanese UI (the manual's words).
fn field_ja(field: &str) -> &'static str {
    match field {
        "company" => "会社名",
        "contact" => "担当者名",
        "phones" => "電話番号",
        "phone label" => "電話番号のラベル",
        "memo" => "メモ",
        "events" => "コールの記録",
        _ => "入力項目",
    }
}

fn device_kind_ja(kind: &str) -> &'static str {
    match kind {
        k if k == DeviceKind::Phone.as_str() => "モバイルアプリ",
        k if k == DeviceKind::Server.as_str() => "サーバー",
        _ => "ブラウザ",
    }
}

fn option_ja(option: OptionKind) -> &'static str {
    option.words().1
}

/// The phase as the Japanese UI names it (see [`Phase::words`]).
pub fn phase_ja(phase: Phase) -> &'static str {
    phase.words().1
}
