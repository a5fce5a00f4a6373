//! Between the core's plugin types and the WIT bindings' types.
//!
//! Owns: the one place that knows both shapes. Plugin answers are untrusted: ids
//! and option/time pairs that do not fit the core's types become
//! [`InvalidAnswer`]s, never panics.

use callsync_core::Timestamp;
use callsync_core::customer::CustomerStatus;
use callsync_core::id::ResultTypeId;
use callsync_core::plugin::{
    Decision, InvalidAnswer, Pick, PluginInfo, Refusal, RuleInputs, Setting,
};
use callsync_core::result_type::{OptionKind, ResultOption, ResultTypeSpec, TimeEntry};
use chrono::Datelike;

use crate::wit;

pub(crate) fn settings(settings: &[Setting]) -> Vec<wit::Setting> {
    settings
        .iter()
        .map(|s| wit::Setting {
            key: s.key.clone(),
            value: s.value.clone(),
        })
        .collect()
}

fn option_to_wit(option: OptionKind) -> wit::OptionKind {
    match option {
        OptionKind::None => wit::OptionKind::None,
        OptionKind::Recall => wit::OptionKind::Recall,
        OptionKind::Restriction => wit::OptionKind::Restriction,
    }
}

fn option_from_wit(option: wit::OptionKind) -> OptionKind {
    match option {
        wit::OptionKind::None => OptionKind::None,
        wit::OptionKind::Recall => OptionKind::Recall,
        wit::OptionKind::Restriction => OptionKind::Restriction,
    }
}

pub(crate) fn pick(pick: &Pick) -> wit::Pick {
    wit::Pick {
        result_type: pick.result_type.as_str().to_owned(),
        option: option_to_wit(pick.option),
        at: pick.at.map(Timestamp::as_millis),
        customer_status: pick.customer_status.as_ref().map(|s| s.as_str().to_owned()),
    }
}

pub(crate) fn context(inputs: &RuleInputs) -> wit::Context {
    wit::Context {
        call_ended_at: inputs.call_ended_at.as_millis(),
        saved_at: inputs.saved_at.as_millis(),
        zone: inputs
            .zone
            .iter()
            .map(|o| wit::UtcOffset {
                since: o.since.as_millis(),
                offset_seconds: o.offset_seconds,
            })
            .collect(),
        holidays: inputs
            .holidays
            .iter()
            .map(|d| wit::Date {
                year: d.year(),
                month: d.month() as u8,
                day: d.day() as u8,
            })
            .collect(),
        settings: settings(&inputs.settings),
        attempt: inputs.attempt,
    }
}

pub(crate) fn refusal(refusal: wit::Refusal) -> Refusal {
    Refusal {
        code: refusal.code,
        message_ja: refusal.message_ja,
        message_en: refusal.message_en,
    }
}

pub(crate) fn plugin_info(info: wit::PluginInfo) -> Result<PluginInfo, InvalidAnswer> {
    let result_types = info
        .result_types
        .into_iter()
        .map(|t| {
            let id = ResultTypeId::new(t.id.clone()).map_err(|_| InvalidAnswer::BadId(t.id))?;
            Ok(ResultTypeSpec {
                id,
                label_ja: t.label_ja,
                label_en: t.label_en,
                options: t.options.into_iter().map(option_from_wit).collect(),
                time_entry: match t.time_entry {
                    wit::TimeEntry::Computed => TimeEntry::Computed,
                    wit::TimeEntry::Optional => TimeEntry::Optional,
                    wit::TimeEntry::Required => TimeEntry::Required,
                },
                default_status: t.default_status.map(CustomerStatus::new),
                reached_person: t.reached_person,
            })
        })
        .collect::<Result<Vec<_>, InvalidAnswer>>()?;
    Ok(PluginInfo {
        id: info.id,
        version: info.version,
        result_types,
    })
}

pub(crate) fn decision(decision: wit::Decision) -> Result<Decision, InvalidAnswer> {
    let option = match (decision.option, decision.at) {
        (wit::OptionKind::None, None) => ResultOption::None,
        (wit::OptionKind::Recall, Some(at)) => ResultOption::Recall {
            at: Timestamp::from_millis(at),
        },
        (wit::OptionKind::Restriction, Some(until)) => ResultOption::Restriction {
            until: Timestamp::from_millis(until),
        },
        (option, at) => {
            return Err(InvalidAnswer::OptionTimeMismatch {
                option: option_from_wit(option),
                has_time: at.is_some(),
            });
        }
    };
    Ok(Decision {
        option,
        customer_status: decision.customer_status.map(CustomerStatus::new),
        reason: decision.reason,
    })
}
