//! The plugin author's guide's example (README): the standard result types, and a
//! recall lands two days after the call.

use callsync_plugin_sdk::*;

/// The plugin.
pub struct TwoDaysLater;

impl Rules for TwoDaysLater {
    fn describe(_settings: Vec<Setting>) -> Result<PluginInfo, Refusal> {
        Ok(PluginInfo::new(
            "two-days-later",
            env!("CARGO_PKG_VERSION"),
            standard_result_types(),
        ))
    }

    fn validate(pick: Pick, context: Context) -> Result<(), Refusal> {
        check_pick(&standard_result_types(), &pick, &context)
    }

    fn evaluate(pick: Pick, context: Context) -> Decision {
        let types = standard_result_types();
        let status = status_for(&types, &pick);
        match pick.option {
            OptionKind::Recall => {
                let at = round_up_to_step(context.call_ended_at + 2 * DAY_MS)
                    .max(round_up_to_step(context.saved_at + 1));
                Decision::recall(at, status, "two days after the call")
            }
            _ => Decision::as_picked(&types, &pick, "as picked"),
        }
    }
}

export_plugin!(TwoDaysLater);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recall_lands_two_days_after_the_call() {
        let context = Context {
            call_ended_at: 1_000,
            saved_at: 2_000,
            zone: Vec::new(),
            holidays: Vec::new(),
            settings: Vec::new(),
            attempt: 1,
        };
        let pick = Pick {
            result_type: "no-answer".to_owned(),
            option: OptionKind::Recall,
            at: None,
            customer_status: None,
        };
        let decision = TwoDaysLater::evaluate(pick, context);
        assert_eq!(decision.at, Some(round_up_to_step(1_000 + 2 * DAY_MS)));
    }
}
