//! The standard result-rule plugin: the manual's result types, recall at the time
//! the rep picked or a fixed delay after the call, restriction until the time picked.
//!
//! Settings:
//! - `recall-after-minutes` (default 60): when a recall has no picked time, call
//!   again this long after the call ended (never earlier than the next step after
//!   the save).
//! - `give-up-after` (default: never): from this attempt on, a `no-answer` result
//!   asks for no recall.

use callsync_plugin_sdk::*;

/// The plugin.
pub struct Standard;

const DEFAULT_RECALL_AFTER_MINUTES: i64 = 60;

struct Settings {
    recall_after_minutes: i64,
    give_up_after: Option<u32>,
}

fn settings(settings: &[Setting]) -> Result<Settings, Refusal> {
    let recall_after_minutes = minutes_setting(
        settings,
        "recall-after-minutes",
        DEFAULT_RECALL_AFTER_MINUTES,
        5..=60 * 24 * 90,
    )?;
    let give_up_after = match setting(settings, "give-up-after") {
        None => None,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                return Err(bad_setting(
                    "give-up-after",
                    v,
                    "an attempt count of 1 or more",
                ));
            }
        },
    };
    only_known_settings(settings, &["recall-after-minutes", "give-up-after"])?;
    Ok(Settings {
        recall_after_minutes,
        give_up_after,
    })
}

impl Rules for Standard {
    fn describe(settings_in: Vec<Setting>) -> Result<PluginInfo, Refusal> {
        settings(&settings_in)?;
        Ok(PluginInfo::new(
            "standard",
            env!("CARGO_PKG_VERSION"),
            standard_result_types(),
        ))
    }

    fn validate(pick: Pick, context: Context) -> Result<(), Refusal> {
        settings(&context.settings)?;
        check_pick(&standard_result_types(), &pick, &context)
    }

    fn evaluate(pick: Pick, context: Context) -> Decision {
        let types = standard_result_types();
        let status = status_for(&types, &pick);
        let Ok(settings) = settings(&context.settings) else {
            return Decision::as_picked(&types, &pick, "settings unreadable: kept the pick");
        };
        match (pick.option, pick.at) {
            (OptionKind::Recall, _)
                if pick.result_type == "no-answer"
                    && settings.give_up_after.is_some_and(|n| context.attempt >= n) =>
            {
                Decision::none(
                    status,
                    format!("no recall: attempt {} reached the limit", context.attempt),
                )
            }
            (OptionKind::Recall, Some(at)) => {
                Decision::recall(at, status, "recall at the time picked")
            }
            (OptionKind::Recall, None) => {
                let after = context.call_ended_at + settings.recall_after_minutes * MINUTE_MS;
                let at = round_up_to_step(after.max(context.saved_at + 1));
                Decision::recall(
                    at,
                    status,
                    format!(
                        "recall {} minutes after the call",
                        settings.recall_after_minutes
                    ),
                )
            }
            (OptionKind::Restriction, Some(until)) => {
                Decision::restriction(until, status, "restricted until the time picked")
            }
            // Validation requires a time for restrictions; without one there is
            // nothing to restrict until.
            (OptionKind::Restriction, None) => Decision::none(status, "restriction without a time"),
            (OptionKind::None, _) => Decision::none(status, "no follow-up"),
        }
    }
}

export_plugin!(Standard);
