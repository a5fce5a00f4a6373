//! Result-rule plugins as the core sees them: who decides, what they are asked,
//! what they answer.
//!
//! Owns: the plain types on both sides of the plugin boundary — [`PluginRef`]
//! (plugin id, version and content hash), [`Pick`] (the result form), [`RuleInputs`]
//! (everything else a rule may depend on), [`Decision`] and [`Refusal`] — and the
//! checks every decision must pass whatever plugin made it ([`check_decision`]).
//! Does not own: running plugins (the `callsync-plugin-host` adapter does, with
//! wasmtime), time-zone data (the host turns a zone name into [`UtcOffset`]s), or
//! hashing (hosts hash; the core carries [`ContentHash`]es).

use std::fmt;
use std::str::FromStr;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::customer::CustomerStatus;
use crate::id::ResultTypeId;
use crate::result_type::{OptionKind, ResultOption, ResultTypeSpec};
use crate::time::Timestamp;

/// The rules API version this engine speaks, as the WIT package names it.
pub const API_PACKAGE: &str = "callsync:rules";
/// The interface a plugin exports.
pub const API_INTERFACE: &str = "result-rules";
/// API versions this engine runs plugins for.
pub const SUPPORTED_API_VERSIONS: &[&str] = &["1.0.0"];

/// How far after the save a decided time may lie: about 400 days, the window the
/// host's UTC offsets cover.
pub const MAX_DECISION_HORIZON_MS: i64 = 400 * 86_400_000;
/// Longest reason accepted from a plugin, in characters.
pub const MAX_REASON_CHARS: usize = 500;
/// Longest status or label accepted from a plugin, in characters.
pub const MAX_LABEL_CHARS: usize = 100;

/// A SHA-256 digest naming content: a plugin component, a rule set.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS), ts(type = "string"))]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContentHash([u8; 32]);

impl ContentHash {
    /// The hash with these digest bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 12 hex digits, for messages.
    pub fn short(&self) -> String {
        self.to_string()[..12].to_owned()
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({self})")
    }
}

/// A string that is not 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a SHA-256 hash (64 lowercase hex digits): {0:?}")]
pub struct BadContentHash(pub String);

impl FromStr for ContentHash {
    type Err = BadContentHash;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadContentHash(s.chars().take(80).collect());
        if s.len() != 64 {
            return Err(bad());
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            let pair = s.get(2 * i..2 * i + 2).ok_or_else(bad)?;
            if pair.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(Self(bytes))
    }
}

impl Serialize for ContentHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ContentHash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Which plugin build made a decision or declared a result type.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PluginRef {
    /// The plugin's id, e.g. `business-hours`.
    pub id: String,
    /// The version it declares, e.g. `1.0.0`.
    pub version: String,
    /// SHA-256 of the component's bytes: the build itself.
    pub hash: ContentHash,
}

impl fmt::Display for PluginRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{} ({})", self.id, self.version, self.hash.short())
    }
}

/// One plugin setting as the admin gave it.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Setting {
    /// The name, e.g. `hours`.
    pub key: String,
    /// The value, e.g. `10:00-12:00,13:00-17:00`.
    pub value: String,
}

/// The tenant's UTC offset from an instant on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UtcOffset {
    /// From when.
    pub since: Timestamp,
    /// East of UTC, in seconds (Japan: 32,400).
    pub offset_seconds: i32,
}

/// What the user picked on the result form.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pick {
    /// The result type.
    pub result_type: ResultTypeId,
    /// The option.
    pub option: OptionKind,
    /// The time picked for a recall or restriction, if any.
    pub at: Option<Timestamp>,
    /// The status picked, if any.
    pub customer_status: Option<CustomerStatus>,
}

/// Everything a rule may depend on besides the pick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleInputs {
    /// When the call ended.
    pub call_ended_at: Timestamp,
    /// When the result is saved.
    pub saved_at: Timestamp,
    /// The tenant's UTC offsets over the window a rule can reach.
    pub zone: Vec<UtcOffset>,
    /// Days off, sorted.
    pub holidays: Vec<NaiveDate>,
    /// The plugin's settings.
    pub settings: Vec<Setting>,
    /// 1 for the first call to the customer that took place, 2 for the second, …
    pub attempt: u32,
}

/// What a saved result decides.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Decision {
    /// The follow-up, with its time.
    pub option: ResultOption,
    /// The customer status to set, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_status: Option<CustomerStatus>,
    /// Why, for an admin.
    pub reason: String,
}

/// Which rules decided a saved result, on what, and how it went: stored in the
/// `result-saved` event beside the decided option and status, so every device can
/// tell which plugin version decided, and the server can run the same rule set on
/// the same inputs and compare.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// The rule set (see [`crate::tenant_config::Ruleset`]).
    pub ruleset: ContentHash,
    /// Its plugin build.
    pub plugin: PluginRef,
    /// The option the user picked.
    pub picked_option: OptionKind,
    /// The time the user picked, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub picked_at: Option<Timestamp>,
    /// The status the user picked, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub picked_status: Option<CustomerStatus>,
    /// When the call ended, as the saving device knew it.
    pub call_ended_at: Timestamp,
    /// Which attempt the call was.
    pub attempt: u32,
    /// The plugin's reason, or why the pick was kept without a decision.
    pub reason: String,
    /// Set when the plugin failed and the pick was kept as made: an admin should
    /// look (the code and message of the failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needs_review: Option<String>,
}

impl DecisionRecord {
    /// The pick this record says the user made, for a result of `result_type`.
    pub fn pick(&self, result_type: &ResultTypeId) -> Pick {
        Pick {
            result_type: result_type.clone(),
            option: self.picked_option,
            at: self.picked_at,
            customer_status: self.picked_status.clone(),
        }
    }
}

/// When a call ended and which attempt it was, as the rules see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallFacts {
    /// The later of the phone's and the browser's end (a manual call: its time).
    pub ended_at: Timestamp,
    /// 1 for the customer's first call that took place, counting by start.
    pub attempt: u32,
}

/// The facts of `call` on `customer`, if it took place.
pub fn call_facts(
    customer: &crate::customer::Customer,
    call: &crate::id::CallId,
) -> Option<CallFacts> {
    let view = customer.call(call)?;
    if !view.took_place() {
        return None;
    }
    let ended_at = [
        view.phone_ended.map(|(at, _)| at),
        view.browser_ended_at,
        view.started_at,
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(view.origin_stamp.at);
    let order = |c: &crate::lifecycle::CallView| {
        (c.started_at.unwrap_or(c.origin_stamp.at), c.call.clone())
    };
    let this = order(view);
    let earlier = customer
        .calls
        .iter()
        .filter(|c| c.took_place() && order(c) < this)
        .count();
    Some(CallFacts {
        ended_at,
        attempt: u32::try_from(earlier + 1).unwrap_or(u32::MAX),
    })
}

/// Why a plugin refused a pick, in both languages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Stable code, e.g. `time-required`.
    pub code: String,
    /// Japanese text.
    pub message_ja: String,
    /// English text.
    pub message_en: String,
}

/// What a plugin declares about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    /// Stable id.
    pub id: String,
    /// Semantic version.
    pub version: String,
    /// The result types, in form order.
    pub result_types: Vec<ResultTypeSpec>,
}

/// Something a plugin answered that no plugin may answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidAnswer {
    /// An id that is not lowercase letters, digits and `-` (1–64 characters).
    #[error("`{0}` is not a valid id (lowercase letters, digits and `-`, 1-64 characters)")]
    BadId(String),
    /// A version that is not `MAJOR.MINOR.PATCH`.
    #[error("`{0}` is not a version (MAJOR.MINOR.PATCH)")]
    BadVersion(String),
    /// No result types at all, or too many.
    #[error("{0} result types declared (1 to 64 allowed)")]
    ResultTypeCount(usize),
    /// Two result types with one id.
    #[error("result type `{0}` is declared twice")]
    DuplicateResultType(String),
    /// A result type with no option, or one option twice.
    #[error("result type `{0}` must offer at least one option, each once")]
    BadOptions(String),
    /// A label or status that is empty or too long.
    #[error("{field} of `{id}` must be 1 to {MAX_LABEL_CHARS} characters")]
    BadLabel {
        /// The result type.
        id: String,
        /// Which text.
        field: &'static str,
    },
    /// A decision for an option the result type does not offer.
    #[error("decided {option:?} for `{result_type}`, which does not offer it")]
    OptionNotOffered {
        /// The result type.
        result_type: String,
        /// The decided option.
        option: OptionKind,
    },
    /// A decided time off the 5-minute step, not after the save, or too far ahead.
    #[error("decided time {at} is not on a 5-minute step after the save and within 400 days")]
    BadTime {
        /// The time.
        at: Timestamp,
    },
    /// A decision whose option and time do not match (a recall without a time…).
    #[error("decided {option:?} with{} a time", if *has_time { "" } else { "out" })]
    OptionTimeMismatch {
        /// The option.
        option: OptionKind,
        /// Whether a time came with it.
        has_time: bool,
    },
    /// A reason that is empty or too long.
    #[error("the reason must be 1 to {MAX_REASON_CHARS} characters")]
    BadReason,
}

/// Whether `id` is a valid plugin or result-type id.
pub fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
}

/// Whether `version` is `MAJOR.MINOR.PATCH` (digits only).
pub fn is_valid_version(version: &str) -> bool {
    let parts: Vec<&str> = version.split('.').collect();
    version.len() <= 32
        && parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

fn check_label(id: &str, field: &'static str, text: &str) -> Result<(), InvalidAnswer> {
    let chars = text.chars().count();
    if chars == 0 || chars > MAX_LABEL_CHARS {
        return Err(InvalidAnswer::BadLabel {
            id: id.to_owned(),
            field,
        });
    }
    Ok(())
}

/// Checks what a plugin declares about itself.
pub fn check_info(info: &PluginInfo) -> Result<(), InvalidAnswer> {
    if !is_valid_id(&info.id) {
        return Err(InvalidAnswer::BadId(info.id.clone()));
    }
    if !is_valid_version(&info.version) {
        return Err(InvalidAnswer::BadVersion(info.version.clone()));
    }
    if !(1..=64).contains(&info.result_types.len()) {
        return Err(InvalidAnswer::ResultTypeCount(info.result_types.len()));
    }
    let mut seen = std::collections::BTreeSet::new();
    for spec in &info.result_types {
        let id = spec.id.as_str();
        if !seen.insert(id) {
            return Err(InvalidAnswer::DuplicateResultType(id.to_owned()));
        }
        let mut options = spec.options.clone();
        options.sort();
        options.dedup();
        if options.is_empty() || options.len() != spec.options.len() {
            return Err(InvalidAnswer::BadOptions(id.to_owned()));
        }
        check_label(id, "label_ja", &spec.label_ja)?;
        check_label(id, "label_en", &spec.label_en)?;
        if let Some(status) = &spec.default_status {
            check_label(id, "default_status", status.as_str())?;
        }
    }
    Ok(())
}

/// Checks a decision against the result type it is for and the save time: the
/// option is offered (or none), its time is on the 5-minute step, after the save and
/// within [`MAX_DECISION_HORIZON_MS`], the texts are within bounds.
pub fn check_decision(
    decision: &Decision,
    spec: &ResultTypeSpec,
    saved_at: Timestamp,
) -> Result<(), InvalidAnswer> {
    let option = decision.option.kind();
    if option != OptionKind::None && !spec.options.contains(&option) {
        return Err(InvalidAnswer::OptionNotOffered {
            result_type: spec.id.as_str().to_owned(),
            option,
        });
    }
    if let Some(at) = decision.option.time()
        && (!at.is_on_option_step()
            || at <= saved_at
            || at.as_millis() > saved_at.as_millis().saturating_add(MAX_DECISION_HORIZON_MS))
    {
        return Err(InvalidAnswer::BadTime { at });
    }
    if let Some(status) = &decision.customer_status {
        check_label(spec.id.as_str(), "customer_status", status.as_str())?;
    }
    let reason = decision.reason.chars().count();
    if reason == 0 || reason > MAX_REASON_CHARS {
        return Err(InvalidAnswer::BadReason);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hashes_round_trip_through_hex_and_refuse_anything_else() {
        let hash = ContentHash::from_bytes([0xab; 32]);
        let text = hash.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<ContentHash>().unwrap(), hash);
        assert!("ab".parse::<ContentHash>().is_err());
        assert!(text.to_uppercase().parse::<ContentHash>().is_err());
        assert!(format!("{}zz", &text[..62]).parse::<ContentHash>().is_err());
    }

    #[test]
    fn ids_and_versions() {
        assert!(is_valid_id("business-hours"));
        assert!(!is_valid_id("Business"));
        assert!(!is_valid_id("-x"));
        assert!(!is_valid_id(""));
        assert!(is_valid_version("1.0.12"));
        assert!(!is_valid_version("1.0"));
        assert!(!is_valid_version("1.0.0-beta"));
    }
}
