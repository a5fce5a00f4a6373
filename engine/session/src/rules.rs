//! What the hub asks of the tenant's result-rule plugins, as a small trait the
//! plugin host implements (the session itself runs no WebAssembly).
//!
//! Owns: the two questions — does a saved result's decision hold when re-run with
//! the rule set it names, and what is the standard rule set a new tenant starts
//! with — and the cost of the first, so the hub can budget plugin time per tenant
//! without reading a clock.

use std::time::Duration;

use callsync_core::tenant_config::{PreparedInstall, TenantConfig, TenantConfigDoc};
use callsync_core::{SavedResultFields, TenantId, Timestamp};

/// Why a decision did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleFailure {
    /// The verification's stable code.
    pub code: &'static str,
    /// What did not match (for the device and the log).
    pub detail: String,
}

/// A re-run decision: whether it held, and the plugin time it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// `Ok` when the same rule set decides the same on the recorded inputs.
    pub outcome: Result<(), RuleFailure>,
    /// Time spent running the plugin, charged to the tenant.
    pub spent: Duration,
}

/// The tenant's result rules, as the hub uses them.
pub trait ResultRules: Send + Sync {
    /// Re-runs the decision recorded in `fields` (saved at `saved_at`) with the rule
    /// set it names, from `config` (read from `doc`, which holds the components).
    fn verify(
        &self,
        config: &TenantConfig,
        doc: &TenantConfigDoc,
        fields: &SavedResultFields,
        saved_at: Timestamp,
    ) -> Verified;

    /// The standard rule set a new tenant is given (Japanese holidays,
    /// Asia/Tokyo), checked at `now`.
    fn standard_install(
        &self,
        tenant: &TenantId,
        now: Timestamp,
    ) -> Result<PreparedInstall, String>;
}
