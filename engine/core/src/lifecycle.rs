//! Call state derived from a call's set of events.
//!
//! Owns: [`derive_call`], a pure function from a set of events to a [`CallView`]
//! (phase, flags, the result in force, anomalies). The answer never depends on the
//! order events arrived in, on duplicates, or on the time of asking; the only
//! question that needs `now` is [`CallView::is_past_start_limit`].
//! Does not own: refusing events before they are recorded (see [`crate::rules`]).
//!
//! An event that should never have been recorded (a `started` from a device other
//! than the origin phone, a result on a call that never started, …) can still arrive
//! from a misbehaving replica. It is kept out of derivation and reported as an
//! [`Anomaly`], so every replica derives the same state and nobody panics.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::event::{CallEvent, EventKind, RecordingRef, SavedResultFields, Stamp};
use crate::id::{CallId, DeviceId, EventId, UserId};
use crate::phone_number::PhoneNumber;
use crate::time::Timestamp;

/// Where a call stands. Exactly one at a time; first match wins in the order below.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// A result was saved.
    Completed,
    /// Started, ended on the phone and in the browser: a result is due.
    AwaitingResult,
    /// Started and ended on the phone; the browser has not ended yet.
    PhoneEnded,
    /// Started and ended in the browser; the phone has not ended yet.
    BrowserEnded,
    /// Started; neither side has ended.
    InCall,
    /// Cancelled and never started.
    Cancelled,
    /// Expired (the start limit passed) and never started.
    Expired,
    /// Requested only.
    AwaitingStart,
}

impl Phase {
    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::AwaitingResult => "awaiting-result",
            Self::PhoneEnded => "phone-ended",
            Self::BrowserEnded => "browser-ended",
            Self::InCall => "in-call",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::AwaitingStart => "awaiting-start",
        }
    }

    /// Every phase, in the order of a call's life.
    pub const ALL: [Self; 8] = [
        Self::AwaitingStart,
        Self::InCall,
        Self::PhoneEnded,
        Self::BrowserEnded,
        Self::AwaitingResult,
        Self::Completed,
        Self::Cancelled,
        Self::Expired,
    ];

    /// Parses [`Phase::as_str`] back.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// Whether the call is still open: requested and waiting, in progress, or
    /// waiting for its result. An open call of the user's blocks a new request
    /// (see `rules::blocking_call`); the page shows it on the call tab.
    pub fn is_open(self) -> bool {
        !matches!(self, Self::Completed | Self::Cancelled | Self::Expired)
    }

    /// The phase in the rep's words: `(English, Japanese)`. Every screen (the
    /// page, the CLI, refusals) says these.
    pub fn words(self) -> (&'static str, &'static str) {
        match self {
            Self::AwaitingStart => ("Waiting for the phone to start", "発信開始待ち"),
            Self::InCall => ("In call", "通話中"),
            Self::PhoneEnded => ("Ended on the phone", "スマートフォンで終話"),
            Self::BrowserEnded => ("Ended in the browser", "ブラウザで終話"),
            Self::AwaitingResult => ("Awaiting the result", "コール結果待ち"),
            Self::Completed => ("Completed", "完了"),
            Self::Cancelled => ("Cancelled", "キャンセル"),
            Self::Expired => (
                "Expired: not started in time",
                "期限切れ（開始されずにキャンセル）",
            ),
        }
    }

    /// What the desk should do in this phase, if anything: `(English, Japanese)`.
    pub fn advice(self) -> Option<(&'static str, &'static str)> {
        match self {
            Self::PhoneEnded => Some(("End the call here too.", "ブラウザでも終了してください。")),
            Self::BrowserEnded => Some((
                "End the call on the phone too.",
                "スマートフォンでも終了してください。",
            )),
            _ => None,
        }
    }

    /// Whether the call really took place and still lacks its (mandatory) result.
    pub fn result_due(self) -> bool {
        matches!(
            self,
            Self::AwaitingResult | Self::PhoneEnded | Self::BrowserEnded | Self::InCall
        )
    }
}

/// The state of a call's recording.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordingState {
    /// The call is not recorded, or has not started.
    None,
    /// Recorded; the upload has not reached the server yet.
    Pending,
    /// The server holds the recording.
    Stored,
    /// A manager deleted it.
    Deleted,
}

/// A named race or condition, kept in the call's history for ever.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flag {
    /// Cancelled in the browser, but the phone started anyway: end it on the phone;
    /// a result is still required.
    StartedAfterCancel,
    /// The server expired the request, but the phone started it (by its own clock,
    /// in time).
    StartedAfterExpiry,
    /// The browser ended the call before the phone did.
    BrowserEndedFirst,
    /// More than one result was saved; all are kept, the latest is in force.
    ConcurrentResults,
    /// The recording waits on the phone for upload.
    RecordingPending,
    /// The server holds the recording.
    RecordingStored,
    /// The recording was deleted.
    RecordingDeleted,
}

impl Flag {
    /// Every flag, in derivation order.
    pub const ALL: [Flag; 7] = [
        Self::StartedAfterCancel,
        Self::StartedAfterExpiry,
        Self::BrowserEndedFirst,
        Self::ConcurrentResults,
        Self::RecordingPending,
        Self::RecordingStored,
        Self::RecordingDeleted,
    ];

    /// The flag named `name` (its kebab-case name).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == name)
    }

    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StartedAfterCancel => "started-after-cancel",
            Self::StartedAfterExpiry => "started-after-expiry",
            Self::BrowserEndedFirst => "browser-ended-first",
            Self::ConcurrentResults => "concurrent-results",
            Self::RecordingPending => "recording-pending",
            Self::RecordingStored => "recording-stored",
            Self::RecordingDeleted => "recording-deleted",
        }
    }

    /// What a race asks of the rep, in their words: `(English, Japanese)`. `None`
    /// for conditions that need nothing done. The page and the phone say the same.
    pub fn advice(self) -> Option<(&'static str, &'static str)> {
        match self {
            Self::StartedAfterCancel => Some((
                "The phone started the call after you cancelled: end it on the phone.",
                "キャンセルした後にスマートフォンでコールが開始されました。スマートフォンで通話を終了してください。",
            )),
            Self::StartedAfterExpiry => Some((
                "The phone started the call after the start limit passed: end it on the phone.",
                "開始期限を過ぎてからスマートフォンでコールが開始されました。スマートフォンで通話を終了してください。",
            )),
            Self::BrowserEndedFirst => Some((
                "The call was ended in the browser before the phone: end it on the phone too.",
                "ブラウザで先に終話しました。スマートフォンでも通話を終了してください。",
            )),
            Self::ConcurrentResults
            | Self::RecordingPending
            | Self::RecordingStored
            | Self::RecordingDeleted => None,
        }
    }
}

/// An event kept out of derivation, and why.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Anomaly {
    /// The event.
    pub event: EventId,
    /// Why it was ignored.
    pub reason: AnomalyReason,
}

/// Why an event was kept out of derivation.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnomalyReason {
    /// The call has no `requested` or `manual-call` event.
    NoOrigin,
    /// A second `requested`/`manual-call` on the same call; the earliest counts.
    SecondOrigin,
    /// Recorded by a kind of device that may not record it.
    WrongDeviceKind,
    /// `started`/`phone-ended` from a device other than the origin phone.
    NotOriginPhone,
    /// A phone event on a manual call.
    PhoneEventOnManualCall,
    /// A result, end or recording on a call that never started.
    NeverStarted,
    /// A result on a dialed call the browser had not ended.
    ResultBeforeBrowserEnded,
    /// A recording attached to a call requested with recording off.
    NotRecorded,
}

impl AnomalyReason {
    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoOrigin => "no-origin",
            Self::SecondOrigin => "second-origin",
            Self::WrongDeviceKind => "wrong-device-kind",
            Self::NotOriginPhone => "not-origin-phone",
            Self::PhoneEventOnManualCall => "phone-event-on-manual-call",
            Self::NeverStarted => "never-started",
            Self::ResultBeforeBrowserEnded => "result-before-browser-ended",
            Self::NotRecorded => "not-recorded",
        }
    }
}

/// How the call came to be.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum CallOrigin {
    /// Requested from the desk, dialed by a phone.
    Dialed {
        /// The number to dial.
        destination: PhoneNumber,
        /// The phone asked to dial.
        origin: DeviceId,
        /// Whether the call is recorded.
        recording: bool,
    },
    /// Logged by hand: a call made outside the system.
    Manual {
        /// The number the call was with.
        number: PhoneNumber,
    },
}

/// One saved result, as shown in the call's history.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SavedResult {
    /// The event that saved it.
    pub event: EventId,
    /// Who saved it, where and when.
    pub stamp: Stamp,
    /// The form's fields.
    #[serde(flatten)]
    pub fields: SavedResultFields,
}

impl SavedResult {
    /// The order that decides which result is in force: latest time, ties broken by
    /// device id, then event id, so every replica picks the same one.
    fn precedence(&self) -> (Timestamp, &DeviceId, &EventId) {
        (self.stamp.at, &self.stamp.device, &self.event)
    }
}

/// Everything derived about one call.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallView {
    /// The call.
    pub call: CallId,
    /// Who requested (or logged) it, where and when.
    pub origin_stamp: Stamp,
    /// Dialed or manual, with what that carries.
    pub origin: CallOrigin,
    /// Where the call stands.
    pub phase: Phase,
    /// Named races and conditions, in a fixed order.
    pub flags: Vec<Flag>,
    /// When the origin phone started it (earliest `started`).
    pub started_at: Option<Timestamp>,
    /// When the phone ended it, and the duration it reported.
    pub phone_ended: Option<(Timestamp, u32)>,
    /// When the browser ended it.
    pub browser_ended_at: Option<Timestamp>,
    /// When it was cancelled.
    pub cancelled_at: Option<Timestamp>,
    /// When the server expired it.
    pub expired_at: Option<Timestamp>,
    /// Every saved result, oldest first by precedence.
    pub results: Vec<SavedResult>,
    /// The recording, as the server last attached it.
    pub recording: Option<RecordingRef>,
    /// The recording's state.
    pub recording_state: RecordingState,
    /// Events kept out of derivation.
    pub anomalies: Vec<Anomaly>,
}

impl CallView {
    /// The result in force: the latest by time, ties broken by device id.
    pub fn result_in_force(&self) -> Option<&SavedResult> {
        self.results.last()
    }

    /// The user who requested or logged the call.
    pub fn owner(&self) -> &UserId {
        &self.origin_stamp.user
    }

    /// Whether the call is a request still waiting for *Start call* after the limit
    /// (measured from the request's time). The server records `expired` when this
    /// turns true; until then nobody does.
    pub fn is_past_start_limit(&self, now: Timestamp, start_limit_ms: i64) -> bool {
        self.phase == Phase::AwaitingStart
            && now >= self.origin_stamp.at.plus_millis(start_limit_ms)
    }

    /// Whether the flag is set.
    pub fn has(&self, flag: Flag) -> bool {
        self.flags.contains(&flag)
    }

    /// Whether the call happened (started, or logged by hand).
    pub fn took_place(&self) -> bool {
        self.started_at.is_some() || matches!(self.origin, CallOrigin::Manual { .. })
    }
}

/// Derives the state of one call from its events (any order, duplicates allowed).
/// Returns `None` when no event names how the call began (`requested` or
/// `manual-call`): such a call cannot be shown; its events are reported by
/// [`orphan_anomalies`].
pub fn derive_call<'a>(
    call: &CallId,
    events: impl IntoIterator<Item = &'a CallEvent>,
) -> Option<CallView> {
    // Collapse duplicates by event id. Two different bodies under one id would be a
    // forgery; the canonical pick (smallest encoding) keeps replicas in agreement.
    let mut by_id: BTreeMap<&EventId, &CallEvent> = BTreeMap::new();
    for event in events.into_iter().filter(|e| &e.call == call) {
        by_id
            .entry(&event.id)
            .and_modify(|kept| {
                if canonical_key(event) < canonical_key(kept) {
                    *kept = event;
                }
            })
            .or_insert(event);
    }
    let mut anomalies = Vec::new();
    let mut valid: Vec<&CallEvent> = Vec::with_capacity(by_id.len());
    for event in by_id.values() {
        if event.kind.recorded_by().contains(&event.stamp.device_kind) {
            valid.push(event);
        } else {
            anomalies.push(Anomaly {
                event: event.id.clone(),
                reason: AnomalyReason::WrongDeviceKind,
            });
        }
    }

    // The origin: the earliest requested/manual-call by (time, device, id).
    let mut origins: Vec<&CallEvent> = valid
        .iter()
        .copied()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::Requested { .. } | EventKind::ManualCall { .. }
            )
        })
        .collect();
    origins.sort_by(|a, b| {
        (&a.stamp.at, &a.stamp.device, &a.id).cmp(&(&b.stamp.at, &b.stamp.device, &b.id))
    });
    let first = origins.first().copied()?;
    for extra in &origins[1..] {
        anomalies.push(Anomaly {
            event: extra.id.clone(),
            reason: AnomalyReason::SecondOrigin,
        });
    }
    let origin = match &first.kind {
        EventKind::Requested {
            destination,
            origin,
            recording,
        } => CallOrigin::Dialed {
            destination: destination.clone(),
            origin: origin.clone(),
            recording: *recording,
        },
        EventKind::ManualCall { number } => CallOrigin::Manual {
            number: number.clone(),
        },
        _ => return None,
    };
    let origin_phone = match &origin {
        CallOrigin::Dialed { origin, .. } => Some(origin),
        CallOrigin::Manual { .. } => None,
    };

    // Phone events count only from the origin phone.
    let mut rest: Vec<&CallEvent> = Vec::with_capacity(valid.len());
    for event in valid.iter().copied().filter(|e| {
        !matches!(
            e.kind,
            EventKind::Requested { .. } | EventKind::ManualCall { .. }
        )
    }) {
        if matches!(
            event.kind,
            EventKind::Started | EventKind::PhoneEnded { .. }
        ) {
            match origin_phone {
                None => {
                    anomalies.push(Anomaly {
                        event: event.id.clone(),
                        reason: AnomalyReason::PhoneEventOnManualCall,
                    });
                    continue;
                }
                Some(phone) if phone != &event.stamp.device => {
                    anomalies.push(Anomaly {
                        event: event.id.clone(),
                        reason: AnomalyReason::NotOriginPhone,
                    });
                    continue;
                }
                Some(_) => {}
            }
        }
        rest.push(event);
    }

    let earliest = |pred: &dyn Fn(&EventKind) -> bool| -> Option<&CallEvent> {
        rest.iter()
            .copied()
            .filter(|e| pred(&e.kind))
            .min_by(|a, b| {
                (&a.stamp.at, &a.stamp.device, &a.id).cmp(&(&b.stamp.at, &b.stamp.device, &b.id))
            })
    };
    let started = earliest(&|k| matches!(k, EventKind::Started));
    let is_manual = origin_phone.is_none();
    let took_place = started.is_some() || is_manual;
    let cancelled = earliest(&|k| matches!(k, EventKind::Cancelled));
    let expired = earliest(&|k| matches!(k, EventKind::Expired));

    let recording_on = matches!(
        origin,
        CallOrigin::Dialed {
            recording: true,
            ..
        }
    );
    // Everything after the start needs a start.
    let mut phone_ended = None;
    let mut browser_ended = None;
    let mut results = Vec::new();
    let mut attached: Option<&CallEvent> = None;
    let mut deleted = false;
    for event in rest.iter().copied() {
        let needs_start = matches!(
            event.kind,
            EventKind::PhoneEnded { .. }
                | EventKind::BrowserEnded
                | EventKind::ResultSaved(_)
                | EventKind::RecordingAttached(_)
                | EventKind::RecordingDeleted
        );
        if needs_start && !took_place {
            anomalies.push(Anomaly {
                event: event.id.clone(),
                reason: AnomalyReason::NeverStarted,
            });
            continue;
        }
        match &event.kind {
            EventKind::PhoneEnded { duration_secs } => {
                phone_ended = earlier(phone_ended, (event, *duration_secs));
            }
            EventKind::BrowserEnded => {
                browser_ended = earlier(browser_ended, (event, ()));
            }
            EventKind::ResultSaved(fields) => results.push((event, fields)),
            EventKind::RecordingAttached(_) if !recording_on => {
                anomalies.push(Anomaly {
                    event: event.id.clone(),
                    reason: AnomalyReason::NotRecorded,
                });
            }
            // The latest attachment by (time, id) describes the stored bytes.
            EventKind::RecordingAttached(_)
                if attached.is_none_or(|a| (&a.stamp.at, &a.id) < (&event.stamp.at, &event.id)) =>
            {
                attached = Some(event);
            }
            EventKind::RecordingDeleted => deleted = true,
            _ => {}
        }
    }
    // A dialed call's result needs the browser's end (the manual's rule). Checked
    // after the loop because the set, not arrival order, decides.
    let results: Vec<SavedResult> = {
        let mut kept = Vec::with_capacity(results.len());
        for (event, fields) in results {
            if !is_manual && browser_ended.is_none() {
                anomalies.push(Anomaly {
                    event: event.id.clone(),
                    reason: AnomalyReason::ResultBeforeBrowserEnded,
                });
                continue;
            }
            kept.push(SavedResult {
                event: event.id.clone(),
                stamp: event.stamp.clone(),
                fields: fields.clone(),
            });
        }
        kept.sort_by(|a, b| a.precedence().cmp(&b.precedence()));
        kept
    };

    let phase = if !results.is_empty() {
        Phase::Completed
    } else if is_manual {
        Phase::AwaitingResult
    } else if started.is_some() {
        match (phone_ended.is_some(), browser_ended.is_some()) {
            (true, true) => Phase::AwaitingResult,
            (true, false) => Phase::PhoneEnded,
            (false, true) => Phase::BrowserEnded,
            (false, false) => Phase::InCall,
        }
    } else if cancelled.is_some() {
        Phase::Cancelled
    } else if expired.is_some() {
        Phase::Expired
    } else {
        Phase::AwaitingStart
    };

    let recording_on = matches!(
        origin,
        CallOrigin::Dialed {
            recording: true,
            ..
        }
    );
    let recording_state = if deleted {
        RecordingState::Deleted
    } else if attached.is_some() {
        RecordingState::Stored
    } else if recording_on && started.is_some() {
        RecordingState::Pending
    } else {
        RecordingState::None
    };

    let mut flags = Vec::new();
    if started.is_some() && cancelled.is_some() {
        flags.push(Flag::StartedAfterCancel);
    }
    if started.is_some() && expired.is_some() {
        flags.push(Flag::StartedAfterExpiry);
    }
    if let Some((browser, ())) = browser_ended {
        let phone_later = phone_ended.is_none_or(|(phone, _)| phone.stamp.at > browser.stamp.at);
        if phone_later {
            flags.push(Flag::BrowserEndedFirst);
        }
    }
    if results.len() > 1 {
        flags.push(Flag::ConcurrentResults);
    }
    match recording_state {
        RecordingState::Pending => flags.push(Flag::RecordingPending),
        RecordingState::Stored => flags.push(Flag::RecordingStored),
        RecordingState::Deleted => flags.push(Flag::RecordingDeleted),
        RecordingState::None => {}
    }
    anomalies.sort();

    Some(CallView {
        call: call.clone(),
        origin_stamp: first.stamp.clone(),
        origin,
        phase,
        flags,
        started_at: started.map(|e| e.stamp.at),
        phone_ended: phone_ended.map(|(e, d)| (e.stamp.at, d)),
        browser_ended_at: browser_ended.map(|(e, ())| e.stamp.at),
        cancelled_at: cancelled.map(|e| e.stamp.at),
        expired_at: expired.map(|e| e.stamp.at),
        results,
        recording: attached.and_then(|e| match &e.kind {
            EventKind::RecordingAttached(r) => Some(r.clone()),
            _ => None,
        }),
        recording_state,
        anomalies,
    })
}

/// The anomalies of a call that has no origin event: every one of its events.
pub fn orphan_anomalies<'a>(
    call: &CallId,
    events: impl IntoIterator<Item = &'a CallEvent>,
) -> Vec<Anomaly> {
    let mut ids: Vec<Anomaly> = events
        .into_iter()
        .filter(|e| &e.call == call)
        .map(|e| Anomaly {
            event: e.id.clone(),
            reason: AnomalyReason::NoOrigin,
        })
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Keeps the earlier of two events by (time, device, id).
fn earlier<'a, T>(
    kept: Option<(&'a CallEvent, T)>,
    new: (&'a CallEvent, T),
) -> Option<(&'a CallEvent, T)> {
    match kept {
        Some(k)
            if (&k.0.stamp.at, &k.0.stamp.device, &k.0.id)
                <= (&new.0.stamp.at, &new.0.stamp.device, &new.0.id) =>
        {
            Some(k)
        }
        _ => Some(new),
    }
}

fn canonical_key(event: &CallEvent) -> String {
    serde_json::to_string(event).unwrap_or_default()
}

#[cfg(test)]
mod vocabulary_tests {
    use super::*;

    #[test]
    fn every_phase_reads_back_and_has_words_and_five_are_open() {
        for phase in Phase::ALL {
            assert_eq!(Phase::parse(phase.as_str()), Some(phase));
            let (en, ja) = phase.words();
            assert!(en.is_ascii() && !en.is_empty(), "{en}");
            assert!(!ja.is_ascii(), "{ja}");
        }
        let open: Vec<&str> = Phase::ALL
            .into_iter()
            .filter(|p| p.is_open())
            .map(Phase::as_str)
            .collect();
        assert_eq!(
            open,
            [
                "awaiting-start",
                "in-call",
                "phone-ended",
                "browser-ended",
                "awaiting-result"
            ]
        );
        // A result is due only in open phases of a call that took place.
        assert!(
            Phase::ALL
                .into_iter()
                .all(|p| !p.result_due() || p.is_open())
        );
    }
}
