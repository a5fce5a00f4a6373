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

/// Plugin time (re-running and making result decisions) a tenant may use per
/// second, on average …
pub const PLUGIN_MS_PER_SEC: f64 = 250.0;
/// … and in a burst. Past it, a device sending results is asked to come back
/// later (`busy`), so a slow plugin cannot hold the hub or the server's
/// decision permits for everyone.
pub const PLUGIN_BURST_MS: f64 = 2_000.0;

/// A tenant's allowance of plugin time: a token bucket in milliseconds, with the
/// time passed in.
#[derive(Debug, Clone, Copy)]
pub struct PluginAllowance {
    ms: f64,
    at: Timestamp,
}

impl PluginAllowance {
    /// A full allowance at `now`.
    pub fn new(now: Timestamp) -> Self {
        Self {
            ms: PLUGIN_BURST_MS,
            at: now,
        }
    }

    /// Whether any time is left at `now` (what was spent is refilled at
    /// [`PLUGIN_MS_PER_SEC`]). A call may overrun what is left; the next waits.
    pub fn has_time(&mut self, now: Timestamp) -> bool {
        let elapsed_ms = (now.as_millis() - self.at.as_millis()).max(0) as f64;
        self.ms = (self.ms + elapsed_ms / 1_000.0 * PLUGIN_MS_PER_SEC).min(PLUGIN_BURST_MS);
        self.at = self.at.max(now);
        self.ms > 0.0
    }

    /// Charges `spent` to the allowance.
    pub fn charge(&mut self, spent: Duration) {
        self.ms -= spent.as_secs_f64() * 1_000.0;
    }
}

/// The tenant's result rules, as the hub uses them.
pub trait ResultRules: Send + Sync {
    /// Whether `tenant` may spend plugin time at `now`. The host keeps one
    /// [`PluginAllowance`] per tenant for the hub and for decisions it makes
    /// elsewhere (a browser's `decide-result`), so both draw on one share. By
    /// default, no limit.
    fn has_time(&self, _tenant: &TenantId, _now: Timestamp) -> bool {
        true
    }

    /// Charges plugin time spent for `tenant`.
    fn charge(&self, _tenant: &TenantId, _spent: Duration) {}

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
