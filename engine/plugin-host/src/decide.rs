//! Deciding a saved result with the tenant's rules, and checking a decision another
//! device made.
//!
//! Owns: the path every native engine (server, phone, desk) takes from a user's pick
//! to the fields of a `result-saved` event — the active rule set, its plugin loaded
//! from the configuration document, the inputs (UTC offsets of the tenant's zone,
//! holidays, settings, the call's end and attempt), validate, evaluate — and the
//! fallback when the plugin fails: the pick is kept as made and the decision is
//! marked for an admin's look, so a broken plugin never loses a result. And the
//! server's check of a received decision: the same rule set on the same inputs must
//! give the same decision.

use std::sync::Arc;

use callsync_core::customer::CustomerStatus;
use callsync_core::event::SavedResultFields;
use callsync_core::plugin::{CallFacts, ContentHash, DecisionRecord, Pick, Refusal, RuleInputs};
use callsync_core::result_type::{OptionKind, ResultOption, ResultTypeSpec};
use callsync_core::tenant_config::{Ruleset, TenantConfig, TenantConfigDoc};
use callsync_core::{CoreError, ResultTypeId, Timestamp};

use crate::{LoadedPlugin, PluginError, PluginHost, zone};

/// Why a pick could not be decided; nothing was saved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    /// The tenant has no rule set installed.
    #[error("no result rules are installed in this tenant")]
    NoRules,
    /// The active rule set has no such result type.
    #[error("there is no result type {0}")]
    UnknownResultType(ResultTypeId),
    /// The plugin refused the pick (its words).
    #[error("{} ({})", .0.message_en, .0.code)]
    Refused(Refusal),
    /// The configuration document could not be read.
    #[error(transparent)]
    Config(#[from] CoreError),
}

impl DecideError {
    /// A stable code.
    pub fn code(&self) -> String {
        match self {
            Self::NoRules => "no-rules".to_owned(),
            Self::UnknownResultType(_) => "unknown-result-type".to_owned(),
            Self::Refused(refusal) => refusal.code.clone(),
            Self::Config(e) => e.code().to_owned(),
        }
    }

    /// The message in Japanese.
    pub fn message_ja(&self) -> String {
        match self {
            Self::NoRules => "コール結果のルールが設定されていません".to_owned(),
            Self::UnknownResultType(id) => format!("結果種別「{id}」はありません"),
            Self::Refused(refusal) => refusal.message_ja.clone(),
            Self::Config(e) => e.message_ja(),
        }
    }
}

/// What a result saves: the decided option and status, and the record of who
/// decided on what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    /// The option, with its time.
    pub option: ResultOption,
    /// The customer status.
    pub customer_status: Option<CustomerStatus>,
    /// The record for the event.
    pub record: DecisionRecord,
}

/// The inputs a rule set's plugin gets for a call.
pub fn inputs_for(ruleset: &Ruleset, facts: CallFacts, saved_at: Timestamp) -> RuleInputs {
    // An unknown zone name cannot be installed (see the install check), so UTC
    // here only covers a configuration written by a newer build.
    let tz = ruleset
        .time_zone
        .parse::<chrono_tz::Tz>()
        .unwrap_or(chrono_tz::UTC);
    RuleInputs {
        call_ended_at: facts.ended_at,
        saved_at,
        zone: zone::utc_offsets(tz, facts.ended_at),
        holidays: ruleset.holidays.clone(),
        settings: ruleset.settings.clone(),
        attempt: facts.attempt,
    }
}

/// The plugin of `ruleset`, loaded from the configuration document.
pub fn plugin_of(
    host: &PluginHost,
    doc: &TenantConfigDoc,
    ruleset: &Ruleset,
) -> Result<Arc<LoadedPlugin>, PluginError> {
    let hash = ruleset.plugin.hash;
    if let Some(plugin) = host.loaded(&hash) {
        return Ok(plugin);
    }
    let component = doc.component(&hash).ok().flatten().ok_or_else(|| {
        PluginError::Invalid(format!(
            "component {} is not in the configuration",
            hash.short()
        ))
    })?;
    host.load(hash, &component)
}

/// Decides `pick` for a call with `facts`, saved at `saved_at`, under the tenant's
/// active rule set. A plugin failure is not an error: the pick is kept and marked
/// for review.
pub fn decide(
    host: &PluginHost,
    doc: &TenantConfigDoc,
    pick: &Pick,
    facts: CallFacts,
    saved_at: Timestamp,
) -> Result<Decided, DecideError> {
    let config = doc.config()?;
    let (id, ruleset) = config.active_ruleset().ok_or(DecideError::NoRules)?;
    let spec = ruleset
        .result_types
        .iter()
        .find(|t| t.id == pick.result_type)
        .ok_or_else(|| DecideError::UnknownResultType(pick.result_type.clone()))?;
    // Devices' clocks differ: an end stamped by a phone whose clock runs ahead can
    // lie after this save. The rules see (and the record keeps) the earlier of the two.
    let facts = CallFacts {
        ended_at: facts.ended_at.min(saved_at),
        attempt: facts.attempt,
    };
    let inputs = inputs_for(ruleset, facts, saved_at);
    let record = |reason: String, needs_review: Option<String>| DecisionRecord {
        ruleset: id,
        plugin: ruleset.plugin.clone(),
        picked_option: pick.option,
        picked_at: pick.at,
        picked_status: pick.customer_status.clone(),
        call_ended_at: facts.ended_at,
        attempt: facts.attempt,
        reason,
        needs_review,
    };
    let evaluated =
        plugin_of(host, doc, ruleset).and_then(|plugin| match plugin.validate(pick, &inputs)? {
            Err(refusal) => Ok(Err(refusal)),
            Ok(()) => plugin.evaluate(pick, &inputs, spec).map(Ok),
        });
    match evaluated {
        Ok(Ok(decision)) => Ok(Decided {
            option: decision.option,
            customer_status: decision.customer_status,
            record: record(decision.reason, None),
        }),
        Ok(Err(refusal)) => Err(DecideError::Refused(refusal)),
        Err(err) => {
            tracing::warn!(plugin = %ruleset.plugin, error = %err, "plugin failed; keeping the pick for review");
            let (option, customer_status) = kept_pick(pick, spec);
            Ok(Decided {
                option,
                customer_status,
                record: record(
                    "the rule failed: the pick was kept as made".to_owned(),
                    Some(format!("{}: {err}", err.code())),
                ),
            })
        }
    }
}

/// The pick as made, when no rule could decide: a recall or restriction without a
/// time cannot be kept, so it becomes no option.
fn kept_pick(pick: &Pick, spec: &ResultTypeSpec) -> (ResultOption, Option<CustomerStatus>) {
    let option = match (pick.option, pick.at) {
        (OptionKind::Recall, Some(at)) => ResultOption::Recall { at },
        (OptionKind::Restriction, Some(until)) => ResultOption::Restriction { until },
        _ => ResultOption::None,
    };
    let status = pick
        .customer_status
        .clone()
        .or_else(|| spec.default_status.clone());
    (option, status)
}

/// Why the server would not accept a received decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The decision names a rule set the tenant never installed.
    #[error("the decision names rule set {}, which this tenant never installed", .0.short())]
    UnknownRuleset(ContentHash),
    /// The decision names another plugin build than its rule set's.
    #[error("the decision's plugin is not its rule set's")]
    PluginMismatch,
    /// The rule set has no such result type.
    #[error("rule set has no result type {0}")]
    UnknownResultType(ResultTypeId),
    /// The call ended after the result was saved, or the attempt is 0.
    #[error("the decision's inputs are impossible (call ended after the save, or attempt 0)")]
    ImpossibleInputs,
    /// The same rules on the same inputs decide otherwise.
    #[error("the rules decide {expected} here, the change says {found}")]
    Mismatch {
        /// What the server's evaluation says.
        expected: String,
        /// What the change carries.
        found: String,
    },
    /// The plugin fails deterministically on these inputs, so no device could
    /// have decided with it.
    #[error("the rules fail on these inputs: {0}")]
    Failed(PluginError),
}

impl VerifyError {
    /// A stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownRuleset(_) => "unknown-ruleset",
            Self::PluginMismatch => "plugin-mismatch",
            Self::UnknownResultType(_) => "unknown-result-type",
            Self::ImpossibleInputs => "impossible-decision-inputs",
            Self::Mismatch { .. } => "decision-mismatch",
            Self::Failed(_) => "decision-unverifiable",
        }
    }
}

/// Whether a failure would happen on every device (fuel, traps, invalid answers)
/// rather than depend on this machine's speed or load.
fn deterministic(err: &PluginError) -> bool {
    deterministic_code(err.code())
}

/// Whether a failure with this code happens on every device alike. Not the
/// deadline (wall clock), instantiation (this host's slots) or the stack limit
/// (it counts native stack, which differs between CPU architectures).
fn deterministic_code(code: &str) -> bool {
    !matches!(
        code,
        "plugin-deadline" | "plugin-instantiate" | "plugin-stack-overflow"
    )
}

/// Most time a result may be saved after its call ended, for the server's check.
pub const MAX_SAVE_DELAY_MS: i64 = 400 * 86_400_000;

/// Checks the decision in `fields`, saved at `saved_at`, against the tenant's rules:
/// the named rule set and plugin exist, and the plugin decides the same on the
/// recorded inputs (a decision kept for review must be the pick as made). A result
/// without a decision record passes: nothing claims a rule decided it.
pub fn verify(
    host: &PluginHost,
    config: &TenantConfig,
    doc: &TenantConfigDoc,
    fields: &SavedResultFields,
    saved_at: Timestamp,
) -> Result<(), VerifyError> {
    let Some(record) = &fields.decision else {
        return Ok(());
    };
    let ruleset = config
        .rulesets
        .get(&record.ruleset)
        .ok_or(VerifyError::UnknownRuleset(record.ruleset))?;
    if ruleset.plugin != record.plugin {
        return Err(VerifyError::PluginMismatch);
    }
    let spec = ruleset
        .result_types
        .iter()
        .find(|t| t.id == fields.result_type)
        .ok_or_else(|| VerifyError::UnknownResultType(fields.result_type.clone()))?;
    let earliest_end = saved_at.as_millis().saturating_sub(MAX_SAVE_DELAY_MS);
    if record.call_ended_at > saved_at
        || record.call_ended_at.as_millis() < earliest_end
        || record.attempt == 0
    {
        return Err(VerifyError::ImpossibleInputs);
    }
    let show = |(option, status): &(ResultOption, Option<CustomerStatus>)| {
        format!(
            "{option:?} / {}",
            status.as_ref().map_or("-", |s| s.as_str())
        )
    };
    let option = fields.option.kind();
    if option != OptionKind::None && !spec.options.contains(&option) {
        return Err(VerifyError::Mismatch {
            expected: format!("an option {} offers", spec.id),
            found: format!("{option:?}"),
        });
    }
    let pick = record.pick(&fields.result_type);
    let found = (fields.option, fields.customer_status.clone());
    let facts = CallFacts {
        ended_at: record.call_ended_at,
        attempt: record.attempt,
    };
    let inputs = inputs_for(ruleset, facts, saved_at);
    // The device's path again: validate, then evaluate.
    let evaluated =
        plugin_of(host, doc, ruleset).and_then(|plugin| match plugin.validate(&pick, &inputs)? {
            Err(refusal) => Ok(Err(refusal)),
            Ok(()) => plugin.evaluate(&pick, &inputs, spec).map(Ok),
        });
    if let Some(claimed) = &record.needs_review {
        // Kept for review: the pick as made; and a failure every device would
        // see must be seen here too.
        let kept = kept_pick(&pick, spec);
        if kept != found {
            return Err(VerifyError::Mismatch {
                expected: show(&kept),
                found: show(&found),
            });
        }
        let claimed_code = claimed.split(':').next().unwrap_or_default();
        return match evaluated {
            Ok(Ok(_)) if deterministic_code(claimed_code) => Err(VerifyError::Mismatch {
                expected: "a decision: the rules do not fail on these inputs".to_owned(),
                found: format!("kept for review ({claimed_code})"),
            }),
            _ => Ok(()),
        };
    }
    let decision = match evaluated {
        Ok(Ok(decision)) => decision,
        Ok(Err(refusal)) => {
            return Err(VerifyError::Mismatch {
                expected: format!("the pick refused ({})", refusal.code),
                found: show(&found),
            });
        }
        Err(err) if deterministic(&err) => return Err(VerifyError::Failed(err)),
        Err(err) => {
            tracing::warn!(error = %err, "could not re-evaluate a decision here; accepted as sent");
            return Ok(());
        }
    };
    let expected = (decision.option, decision.customer_status.clone());
    if expected != found || decision.reason != record.reason {
        return Err(VerifyError::Mismatch {
            expected: show(&expected),
            found: show(&found),
        });
    }
    Ok(())
}
