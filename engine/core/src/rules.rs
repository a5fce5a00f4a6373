//! The rules the core enforces before recording an event.
//!
//! Owns: [`check_event`] — given what this replica knows (a [`Customer`]) and the
//! event this device wants to record, refuse it with a typed [`CoreError`] or let
//! it through. Pure: the event's own stamp is "now".
//!
//! These are the rules for recording *locally*, against this replica's state: a
//! phone that already knows of a cancel does not start, a device that already
//! knows a result does not save another. They are deliberately stricter than what
//! a replica must accept from elsewhere: a `started` that raced a cancel, or a
//! second result saved concurrently, is valid history and must be kept (derivation
//! names it). A server re-checking incoming changes must therefore not call
//! [`check_event`] against its own current state; it checks authorship and the
//! rules that hold whatever the interleaving, against the document as of the
//! change's dependencies (the sync step builds that on this module).
//! Does not own: authentication or which user may see which customer (the sync
//! layer), or recording the event (see [`crate::document`]).

use crate::customer::Customer;
use crate::error::CoreError;
use crate::event::{CallEvent, EventKind};
use crate::id::{CallId, UserId};
use crate::lifecycle::{CallOrigin, CallView, Phase, RecordingState};
use crate::result_type::{ResultCatalog, ResultOption};
use crate::time::{DEFAULT_START_LIMIT_MS, Timestamp};

/// Longest memo accepted, in characters.
pub const MAX_MEMO_CHARS: usize = 4_000;

/// What the rules need besides the customer document.
#[derive(Debug, Clone, Copy)]
pub struct RuleContext<'a> {
    /// The tenant's result types.
    pub catalog: &'a ResultCatalog,
    /// How long a phone has to start a requested call, in milliseconds.
    pub start_limit_ms: i64,
    /// The acting user's open calls on *other* customers (the host keeps an index),
    /// so a pending result anywhere blocks a new request.
    pub other_open_calls: &'a [OpenCall],
}

impl<'a> RuleContext<'a> {
    /// A context with the default 1-minute start limit and no calls elsewhere.
    pub fn new(catalog: &'a ResultCatalog) -> Self {
        Self {
            catalog,
            start_limit_ms: DEFAULT_START_LIMIT_MS,
            other_open_calls: &[],
        }
    }
}

/// A call of the acting user that may block a new request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenCall {
    /// The call.
    pub call: CallId,
    /// Its phase.
    pub phase: Phase,
    /// When it was requested (for the start limit).
    pub requested_at: Timestamp,
}

impl OpenCall {
    /// The open-call summary of a call view.
    pub fn of(view: &CallView) -> Self {
        Self {
            call: view.call.clone(),
            phase: view.phase,
            requested_at: view.origin_stamp.at,
        }
    }
}

/// The call of `user` that forbids a new request at `now`, as the error to show:
/// a result still due comes first, then a call in progress, then a request still
/// waiting for *Start call* within its limit.
pub fn blocking_call<'a>(
    calls: impl IntoIterator<Item = &'a OpenCall>,
    now: Timestamp,
    start_limit_ms: i64,
) -> Option<CoreError> {
    let mut in_progress = None;
    let mut waiting = None;
    for call in calls {
        match call.phase {
            Phase::AwaitingResult => {
                return Some(CoreError::PendingResult {
                    call: call.call.clone(),
                });
            }
            Phase::InCall | Phase::PhoneEnded | Phase::BrowserEnded => {
                in_progress.get_or_insert_with(|| call.call.clone());
            }
            Phase::AwaitingStart if now < call.requested_at.plus_millis(start_limit_ms) => {
                waiting.get_or_insert_with(|| call.call.clone());
            }
            _ => {}
        }
    }
    in_progress
        .map(|call| CoreError::CallInProgress { call })
        .or(waiting.map(|call| CoreError::RequestWaiting { call }))
}

/// Refuses `event` if recording it now would break a rule; changes nothing.
pub fn check_event(
    customer: &Customer,
    event: &CallEvent,
    ctx: &RuleContext<'_>,
) -> Result<(), CoreError> {
    let now = event.stamp.at;
    if !event.kind.recorded_by().contains(&event.stamp.device_kind) {
        return Err(CoreError::WrongDeviceKind {
            event: event.kind.name(),
            device_kind: event.stamp.device_kind.as_str(),
        });
    }
    let existing = customer.call(&event.call);
    match &event.kind {
        EventKind::Requested { destination, .. } => {
            if existing.is_some() {
                return Err(CoreError::DuplicateCall {
                    call: event.call.clone(),
                });
            }
            if customer.phone(destination).is_none() {
                return Err(CoreError::NumberNotOnCustomer {
                    number: destination.clone(),
                });
            }
            if let Some(until) = customer.restricted_until(now) {
                return Err(CoreError::CustomerRestricted { until });
            }
            let here = open_calls_of(customer, &event.stamp.user);
            if let Some(err) = blocking_call(
                here.iter().chain(ctx.other_open_calls),
                now,
                ctx.start_limit_ms,
            ) {
                return Err(err);
            }
            Ok(())
        }
        EventKind::ManualCall { .. } => match existing {
            Some(_) => Err(CoreError::DuplicateCall {
                call: event.call.clone(),
            }),
            None => Ok(()),
        },
        kind => {
            let call = existing.ok_or_else(|| CoreError::UnknownCall {
                call: event.call.clone(),
            })?;
            check_on_call(call, event, kind, ctx)
        }
    }
}

fn check_on_call(
    call: &CallView,
    event: &CallEvent,
    kind: &EventKind,
    ctx: &RuleContext<'_>,
) -> Result<(), CoreError> {
    let now = event.stamp.at;
    let id = || call.call.clone();
    let not_waiting = || CoreError::NotAwaitingStart {
        call: id(),
        phase: call.phase,
    };
    match kind {
        EventKind::Cancelled => match call.phase {
            Phase::AwaitingStart => Ok(()),
            _ => Err(not_waiting()),
        },
        EventKind::Expired => match call.phase {
            Phase::AwaitingStart if call.is_past_start_limit(now, ctx.start_limit_ms) => Ok(()),
            Phase::AwaitingStart => Err(CoreError::NotYetExpired { call: id() }),
            _ => Err(not_waiting()),
        },
        EventKind::Started => {
            check_origin_phone(call, event)?;
            match call.phase {
                Phase::AwaitingStart if call.is_past_start_limit(now, ctx.start_limit_ms) => {
                    Err(CoreError::StartLimitPassed { call: id() })
                }
                Phase::AwaitingStart => Ok(()),
                Phase::Expired => Err(CoreError::StartLimitPassed { call: id() }),
                _ => Err(not_waiting()),
            }
        }
        EventKind::PhoneEnded { .. } => {
            check_origin_phone(call, event)?;
            if call.started_at.is_none() {
                return Err(CoreError::NotStarted { call: id() });
            }
            match call.phone_ended {
                Some(_) => Err(CoreError::AlreadyEnded {
                    call: id(),
                    side: "phone",
                }),
                None => Ok(()),
            }
        }
        EventKind::BrowserEnded => {
            if call.started_at.is_none() {
                return Err(CoreError::NotStarted { call: id() });
            }
            match call.browser_ended_at {
                Some(_) => Err(CoreError::AlreadyEnded {
                    call: id(),
                    side: "browser",
                }),
                None => Ok(()),
            }
        }
        EventKind::ResultSaved(fields) => {
            if !call.took_place() {
                return Err(CoreError::CallNeverStarted { call: id() });
            }
            if matches!(call.origin, CallOrigin::Dialed { .. }) && call.browser_ended_at.is_none() {
                return Err(CoreError::ResultBeforeBrowserEnded { call: id() });
            }
            if !call.results.is_empty() {
                return Err(CoreError::ResultAlreadySaved { call: id() });
            }
            let spec = ctx.catalog.get(&fields.result_type).ok_or_else(|| {
                CoreError::UnknownResultType {
                    result_type: fields.result_type.clone(),
                }
            })?;
            let option = fields.option.kind();
            if !spec.options.contains(&option) {
                return Err(CoreError::OptionNotAllowed {
                    result_type: fields.result_type.clone(),
                    option,
                });
            }
            check_option_time(&fields.option, now)?;
            if fields.memo.chars().count() > MAX_MEMO_CHARS {
                return Err(CoreError::FieldTooLong {
                    field: "memo",
                    max: MAX_MEMO_CHARS,
                });
            }
            Ok(())
        }
        EventKind::RecordingAttached(_) => {
            if !matches!(
                call.origin,
                CallOrigin::Dialed {
                    recording: true,
                    ..
                }
            ) {
                return Err(CoreError::NoRecording { call: id() });
            }
            match call.started_at {
                Some(_) => Ok(()),
                None => Err(CoreError::NotStarted { call: id() }),
            }
        }
        EventKind::RecordingDeleted => match call.recording_state {
            RecordingState::Pending | RecordingState::Stored => Ok(()),
            RecordingState::None | RecordingState::Deleted => {
                Err(CoreError::NoRecording { call: id() })
            }
        },
        // Handled by the caller: they create calls rather than act on one.
        EventKind::Requested { .. } | EventKind::ManualCall { .. } => {
            Err(CoreError::DuplicateCall { call: id() })
        }
    }
}

/// Option times sit on a 5-minute step and lie in the future.
pub fn check_option_time(option: &ResultOption, now: Timestamp) -> Result<(), CoreError> {
    let Some(at) = option.time() else {
        return Ok(());
    };
    if !at.is_on_option_step() {
        return Err(CoreError::OptionTimeNotOnStep { at });
    }
    if at <= now {
        return Err(CoreError::OptionTimeInPast { at, now });
    }
    Ok(())
}

fn check_origin_phone(call: &CallView, event: &CallEvent) -> Result<(), CoreError> {
    match &call.origin {
        CallOrigin::Dialed { origin, .. } if origin == &event.stamp.device => Ok(()),
        CallOrigin::Dialed { origin, .. } => Err(CoreError::NotOriginPhone {
            call: call.call.clone(),
            origin: origin.to_string(),
        }),
        CallOrigin::Manual { .. } => Err(CoreError::NotOriginPhone {
            call: call.call.clone(),
            origin: "(manual call)".to_owned(),
        }),
    }
}

/// The user's calls on this customer that may block a new request.
pub fn open_calls_of(customer: &Customer, user: &UserId) -> Vec<OpenCall> {
    customer
        .calls
        .iter()
        .filter(|c| c.owner() == user)
        .map(|c| OpenCall::of(c))
        .collect()
}
