//! The hub sessions' result rules ([`ResultRules`]): the plugin host, and the
//! standard plugin shipped with the server for new tenants.

use std::sync::Arc;
use std::time::Instant;

use callsync_core::tenant_config::{PreparedInstall, TenantConfig, TenantConfigDoc};
use callsync_core::{SavedResultFields, TenantId, Timestamp};
use callsync_plugin_host::PluginHost;
use callsync_plugin_host::decide::verify;
use callsync_plugin_host::holidays;
use callsync_plugin_host::install::{InstallRequest, prepare};
use callsync_session::rules::{ResultRules, RuleFailure, Verified};

/// The zone a tenant starts in.
const DEFAULT_TIME_ZONE: &str = "Asia/Tokyo";

/// The plugin host, as the hubs use it.
pub(crate) struct HostRules(pub(crate) Arc<PluginHost>);

impl ResultRules for HostRules {
    fn verify(
        &self,
        config: &TenantConfig,
        doc: &TenantConfigDoc,
        fields: &SavedResultFields,
        saved_at: Timestamp,
    ) -> Verified {
        let started = Instant::now();
        let outcome = verify(&self.0, config, doc, fields, saved_at).map_err(|e| RuleFailure {
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
        prepare(&self.0, request, now).map_err(|e| e.to_string())
    }
}
