//! Call-result types: which exist in a tenant and which option each allows.
//!
//! Owns: [`ResultCatalog`], the table the result form and the rules read, and the
//! standard catalog a new tenant starts with.
//! Does not own: computing recall times (result-rule plugins do, see
//! [`crate::plugin`]), or storing the catalog (the tenant's configuration document).

use serde::{Deserialize, Serialize};

use crate::customer::CustomerStatus;
pub use crate::id::ResultTypeId;
use crate::time::Timestamp;

/// The option a saved result carries.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ResultOption {
    /// No follow-up.
    None,
    /// Call the customer again at this time.
    Recall {
        /// When to call again (on a 5-minute step).
        at: Timestamp,
    },
    /// Do not call the customer until this time.
    Restriction {
        /// When the restriction ends (on a 5-minute step).
        until: Timestamp,
    },
}

impl ResultOption {
    /// Which kind of option this is.
    pub fn kind(&self) -> OptionKind {
        match self {
            Self::None => OptionKind::None,
            Self::Recall { .. } => OptionKind::Recall,
            Self::Restriction { .. } => OptionKind::Restriction,
        }
    }

    /// The option's time, if it has one.
    pub fn time(&self) -> Option<Timestamp> {
        match self {
            Self::None => None,
            Self::Recall { at } => Some(*at),
            Self::Restriction { until } => Some(*until),
        }
    }
}

/// The kinds of option, without their times.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptionKind {
    /// No follow-up.
    None,
    /// Recall at a time.
    Recall,
    /// Call restriction until a time.
    Restriction,
}

impl OptionKind {
    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Recall => "recall",
            Self::Restriction => "restriction",
        }
    }

    /// Every kind, in the result form's order.
    pub const ALL: [Self; 3] = [Self::None, Self::Recall, Self::Restriction];

    /// The option in the rep's words (コール結果オプション): `(English, Japanese)`.
    pub fn words(self) -> (&'static str, &'static str) {
        match self {
            Self::None => ("No follow-up", "なし"),
            Self::Recall => ("Recall", "再コール"),
            Self::Restriction => ("Call restriction", "コール禁止"),
        }
    }
}

/// Whether the result form asks the user for the option's time.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimeEntry {
    /// The rule computes the time; the form does not ask.
    Computed,
    /// The user may pick a time; without one the rule computes it.
    #[default]
    Optional,
    /// The user must pick a time.
    Required,
}

/// One result type of the tenant.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultTypeSpec {
    /// Stable id.
    pub id: ResultTypeId,
    /// Label in Japanese.
    pub label_ja: String,
    /// Label in English.
    pub label_en: String,
    /// The options the form offers for this type.
    pub options: Vec<OptionKind>,
    /// Whether the form asks for the option's time.
    #[serde(default)]
    pub time_entry: TimeEntry,
    /// The customer status the form proposes, if any.
    pub default_status: Option<CustomerStatus>,
    /// Whether this result counts as 本人通話 (reached the person).
    pub reached_person: bool,
}

/// The tenant's result types.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultCatalog {
    types: Vec<ResultTypeSpec>,
}

impl ResultCatalog {
    /// A catalog of the given types.
    pub fn new(types: Vec<ResultTypeSpec>) -> Self {
        Self { types }
    }

    /// The result types a new tenant starts with.
    pub fn standard() -> Self {
        use OptionKind::*;
        let spec = |id: &str,
                    ja: &str,
                    en: &str,
                    options: &[OptionKind],
                    status: Option<&str>,
                    reached: bool| ResultTypeSpec {
            // A restriction needs an end the user picks; recalls have a default.
            time_entry: if options.contains(&Restriction) {
                TimeEntry::Required
            } else {
                TimeEntry::Optional
            },
            // The ids below are literals checked by the unit test of this module.
            id: ResultTypeId::new(id).unwrap_or_else(|_| unreachable!("standard ids are valid")),
            label_ja: ja.to_owned(),
            label_en: en.to_owned(),
            options: options.to_vec(),
            default_status: status.map(CustomerStatus::new),
            reached_person: reached,
        };
        Self::new(vec![
            spec(
                "no-answer",
                "不在",
                "No answer",
                &[None, Recall],
                Option::None,
                false,
            ),
            spec(
                "gatekeeper-refused",
                "受付拒否",
                "Refused by the front desk",
                &[None, Recall],
                Option::None,
                false,
            ),
            spec(
                "send-materials",
                "資料送付",
                "Send materials",
                &[None, Recall],
                Some("資料送付済み"),
                true,
            ),
            spec(
                "appointment",
                "アポ獲得",
                "Appointment set",
                &[None, Recall],
                Some("アポ獲得"),
                true,
            ),
            spec(
                "do-not-call",
                "NG・コール禁止",
                "Do not call",
                &[Restriction],
                Some("NG"),
                true,
            ),
        ])
    }

    /// The type with this id.
    pub fn get(&self, id: &ResultTypeId) -> Option<&ResultTypeSpec> {
        self.types.iter().find(|t| &t.id == id)
    }

    /// All types, in the order the form lists them.
    pub fn types(&self) -> &[ResultTypeSpec] {
        &self.types
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_catalog_offers_the_manuals_result_types() {
        let catalog = ResultCatalog::standard();
        let ids: Vec<&str> = catalog.types().iter().map(|t| t.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "no-answer",
                "gatekeeper-refused",
                "send-materials",
                "appointment",
                "do-not-call"
            ]
        );
        let dnc = catalog
            .get(&ResultTypeId::new("do-not-call").unwrap())
            .unwrap();
        assert_eq!(dnc.options, [OptionKind::Restriction]);
    }
}
