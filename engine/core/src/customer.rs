//! The typed read model of a customer document: [`Customer`].
//!
//! Owns: the profile, the derived customer status, the recall and restriction in
//! force, and the timeline — all computed from the document, never stored twice.
//! Does not own: reading Automerge (see [`crate::document`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::event::{CallEvent, EventKind, Stamp};
use crate::id::{CallId, CustomerId, EventId, TenantId, UserId};
use crate::lifecycle::{Anomaly, AnomalyReason, CallView, SavedResult};
use crate::phone_number::PhoneNumber;
use crate::result_type::ResultOption;
use crate::time::Timestamp;

/// A customer status (tenant-defined words; two are built in).
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CustomerStatus(String);

impl CustomerStatus {
    /// 未対応: not yet contacted. Every new customer starts here.
    pub const NOT_CONTACTED: &'static str = "未対応";
    /// 対応済み: contacted. Set by itself when a call is recorded.
    pub const CONTACTED: &'static str = "対応済み";

    /// A status with this label.
    pub fn new(label: impl Into<String>) -> Self {
        Self(label.into())
    }

    /// The label.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for CustomerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One of the customer's phone numbers.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhoneEntry {
    /// A label such as 代表 (main line) or 携帯 (mobile).
    pub label: String,
    /// The number.
    pub number: PhoneNumber,
}

/// Most phone numbers a new customer's profile may carry while decoding; the
/// document refuses past [`crate::document::MAX_PHONES`] in words.
const MAX_PHONES_DECODED: usize = 256;

/// The editable profile of a new customer.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewCustomer {
    /// The tenant that owns the customer.
    pub tenant: TenantId,
    /// The customer's id.
    pub id: CustomerId,
    /// Company name.
    pub company: String,
    /// Contact person's name.
    pub contact: String,
    /// The assigned rep.
    pub owner: UserId,
    /// Phone numbers, at least one.
    #[serde(deserialize_with = "crate::wire::decode::at_most::<MAX_PHONES_DECODED, _, _>")]
    pub phones: Vec<PhoneEntry>,
}

/// A customer as every reader sees it.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Customer {
    /// The tenant.
    pub tenant: TenantId,
    /// The customer.
    pub id: CustomerId,
    /// Company name.
    pub company: String,
    /// Contact person's name.
    pub contact: String,
    /// The assigned rep.
    pub owner: UserId,
    /// When the customer was created.
    pub created_at: Timestamp,
    /// Phone numbers, ordered by normalized digits.
    pub phones: Vec<PhoneEntry>,
    /// The derived status.
    pub status: CustomerStatus,
    /// When to call again: set when the latest saved result asked for a recall.
    pub recall_at: Option<Timestamp>,
    /// When the call restriction set by the latest restricting result ends (it is in
    /// force while this lies in the future; a later result of another kind does not
    /// lift it).
    pub restriction_until: Option<Timestamp>,
    /// Every call, oldest first. Shared with the document's kept derivation, so
    /// reading a customer does not copy every call.
    pub calls: Vec<Arc<CallView>>,
    /// Events kept out of derivation, across all calls.
    pub anomalies: Vec<Anomaly>,
    /// Keys of event entries that could not be read at all (not an event, or filed
    /// under the wrong key); ignored like anomalies.
    pub unreadable_events: Vec<String>,
}

impl Customer {
    /// The call with this id.
    pub fn call(&self, id: &CallId) -> Option<&CallView> {
        self.calls.iter().find(|c| &c.call == id).map(Arc::as_ref)
    }

    /// Calls that took place and still lack their (mandatory) result.
    pub fn calls_awaiting_result(&self) -> impl Iterator<Item = &CallView> {
        self.calls
            .iter()
            .map(Arc::as_ref)
            .filter(|c| c.phase.result_due())
    }

    /// The number on file that reaches the same line as `number`.
    pub fn phone(&self, number: &PhoneNumber) -> Option<&PhoneEntry> {
        self.phones.iter().find(|p| p.number.same_line(number))
    }

    /// The end of the call restriction in force at `now`, if one is.
    pub fn restricted_until(&self, now: Timestamp) -> Option<Timestamp> {
        self.restriction_until.filter(|until| *until > now)
    }
}

/// What the saved results say about the customer as a whole.
pub(crate) struct FollowUp {
    pub(crate) status: CustomerStatus,
    pub(crate) recall_at: Option<Timestamp>,
    pub(crate) restriction_until: Option<Timestamp>,
}

/// Derives the status, the recall and the call restriction from the calls.
///
/// "Latest" is by time, ties broken by device id then event id, as everywhere.
/// - The status is the one picked on the latest saved result; with none, 未対応
///   until any call took place, then 対応済み.
/// - The recall is the latest result's, if that result asked for one: any later
///   call supersedes it.
/// - The restriction is the latest restricting result's: a later result of another
///   kind (a manual call logged during the restriction, say) does not lift it.
/// - A result whose rules failed and that was kept for review (`needs_review` in
///   its decision record) restricts nothing: its pick was never checked by the
///   rules (a device can claim a failure that depends on the machine, such as a
///   deadline, which the server cannot hold against it), and a restriction stops
///   everyone in the tenant calling the customer. Its recall and status stand:
///   they are what the rep picked on the form, as without rules.
pub(crate) fn derive_follow_up<'a>(calls: impl Iterator<Item = &'a CallView> + Clone) -> FollowUp {
    // Compared by reference: a key that clones the ids would allocate twice per call.
    let precedence = |a: &&SavedResult, b: &&SavedResult| {
        (a.stamp.at, &a.stamp.device, &a.event).cmp(&(b.stamp.at, &b.stamp.device, &b.event))
    };
    let in_force = || calls.clone().filter_map(|c| c.result_in_force());
    let latest = in_force().max_by(precedence);
    let latest_restriction = in_force()
        .filter(|r| matches!(r.fields.option, ResultOption::Restriction { .. }))
        .filter(|r| {
            r.fields
                .decision
                .as_ref()
                .is_none_or(|d| d.needs_review.is_none())
        })
        .max_by(precedence);
    let any_call = calls.clone().any(|c| c.took_place());
    let picked = latest.and_then(|r| r.fields.customer_status.clone());
    let status = match picked {
        Some(status) if status.as_str() != CustomerStatus::NOT_CONTACTED || !any_call => status,
        _ if any_call => CustomerStatus::new(CustomerStatus::CONTACTED),
        _ => CustomerStatus::new(CustomerStatus::NOT_CONTACTED),
    };
    FollowUp {
        status,
        recall_at: latest.and_then(|r| match r.fields.option {
            ResultOption::Recall { at } => Some(at),
            _ => None,
        }),
        restriction_until: latest_restriction.and_then(|r| r.fields.option.time()),
    }
}

/// One line of a customer's timeline: an event, in time order.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelineEntry {
    /// The call.
    pub call: CallId,
    /// The event.
    pub event: EventId,
    /// Who recorded it, where and when.
    pub stamp: Stamp,
    /// What happened.
    pub kind: EventKind,
    /// Set when derivation ignores this event (see [`crate::lifecycle::Anomaly`]):
    /// shown, so nobody mistakes it for something that counted.
    pub ignored: Option<AnomalyReason>,
}

/// The timeline: every event in time order (ties by place in the call's life,
/// then device, then event id).
pub(crate) fn timeline(
    events: &[CallEvent],
    ignored: &std::collections::BTreeMap<EventId, AnomalyReason>,
) -> Vec<TimelineEntry> {
    let mut entries: Vec<TimelineEntry> = events
        .iter()
        .map(|e| TimelineEntry {
            call: e.call.clone(),
            event: e.id.clone(),
            stamp: e.stamp.clone(),
            kind: e.kind.clone(),
            ignored: ignored.get(&e.id).copied(),
        })
        .collect();
    entries.sort_by(|a, b| {
        (
            a.stamp.at,
            a.kind.lifecycle_rank(),
            &a.stamp.device,
            &a.event,
        )
            .cmp(&(
                b.stamp.at,
                b.kind.lifecycle_rank(),
                &b.stamp.device,
                &b.event,
            ))
    });
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{DeviceKind, SavedResultFields};
    use crate::id::DeviceId;
    use crate::result_type::ResultTypeId;

    fn at_same_instant(id: &str, kind: EventKind) -> CallEvent {
        CallEvent {
            id: EventId::new(id).unwrap(),
            call: CallId::new("call-1").unwrap(),
            stamp: Stamp {
                at: Timestamp::from_millis(1_000),
                device: DeviceId::new("desk-1").unwrap(),
                device_kind: DeviceKind::Desk,
                user: UserId::new("rep@a.example").unwrap(),
                device_at: None,
            },
            kind,
        }
    }

    #[test]
    fn events_at_the_same_instant_appear_in_the_order_of_a_calls_life() {
        let result = EventKind::ResultSaved(SavedResultFields {
            result_type: ResultTypeId::new("no-answer").unwrap(),
            option: ResultOption::None,
            customer_status: None,
            memo: String::new(),
            decision: None,
            kept_as_picked: None,
        });
        // Event ids that sort the other way round.
        let events = [
            at_same_instant("a", result),
            at_same_instant("b", EventKind::BrowserEnded),
        ];
        let names: Vec<&str> = timeline(&events, &Default::default())
            .iter()
            .map(|e| e.kind.name())
            .collect();
        assert_eq!(names, ["browser-ended", "result-saved"]);
    }
}
