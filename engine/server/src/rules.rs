//! The hub sessions' result rules ([`ResultRules`]): the plugin host, and the
//! standard plugin shipped with the server for new tenants.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use callsync_core::tenant_config::{PreparedInstall, TenantConfig, TenantConfigDoc};
use callsync_core::{SavedResultFields, TenantId, Timestamp};
use callsync_plugin_host::PluginHost;
use callsync_plugin_host::decide::verify;
use callsync_plugin_host::holidays;
use callsync_plugin_host::install::{InstallRequest, prepare};
use callsync_session::rules::{PluginAllowance, ResultRules, RuleFailure, Verified};

/// The zone a tenant starts in.
const DEFAULT_TIME_ZONE: &str = "Asia/Tokyo";

/// Every tenant's allowance of plugin time, one for its hub's re-checks and the
/// decisions made for its browsers together.
#[derive(Default)]
pub(crate) struct PluginShares(Mutex<HashMap<TenantId, PluginAllowance>>);

impl PluginShares {
    fn shares(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, PluginAllowance>> {
        // Each allowance is consistent at every step; a poisoned lock still works.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `tenant` may spend plugin time at `now`.
    pub(crate) fn has_time(&self, tenant: &TenantId, now: Timestamp) -> bool {
        self.shares()
            .entry(tenant.clone())
            .or_insert_with(|| PluginAllowance::new(now))
            .has_time(now)
    }

    /// Charges plugin time spent for `tenant`.
    pub(crate) fn charge(&self, tenant: &TenantId, spent: Duration) {
        if let Some(allowance) = self.shares().get_mut(tenant) {
            allowance.charge(spent);
        }
    }
}

/// The plugin host, as the hubs use it, and the tenants' shares of its time.
pub(crate) struct HostRules {
    pub(crate) plugins: Arc<PluginHost>,
    pub(crate) shares: Arc<PluginShares>,
}

impl ResultRules for HostRules {
    fn has_time(&self, tenant: &TenantId, now: Timestamp) -> bool {
        self.shares.has_time(tenant, now)
    }

    fn charge(&self, tenant: &TenantId, spent: Duration) {
        self.shares.charge(tenant, spent);
    }

    fn verify(
        &self,
        config: &TenantConfig,
        doc: &TenantConfigDoc,
        fields: &SavedResultFields,
        saved_at: Timestamp,
    ) -> Verified {
        let started = Instant::now();
        let outcome =
            verify(&self.plugins, config, doc, fields, saved_at).map_err(|e| RuleFailure {
                code: e.code(),
                detail: e.to_string(),
            });
        Verified {
            outcome,
            spent: started.elapsed(),
        }
    }

    fn standard_install(
        &self,
        _tenant: &TenantId,
        now: Timestamp,
    ) -> Result<PreparedInstall, String> {
        let request = InstallRequest {
            file: callsync_shipped_plugins::STANDARD,
            settings: Vec::new(),
            holidays: holidays::japan(),
            time_zone: DEFAULT_TIME_ZONE.to_owned(),
        };
        prepare(&self.plugins, request, now).map_err(|e| e.to_string())
    }
}
