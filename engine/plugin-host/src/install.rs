//! Turning a plugin file an admin hands in into a rule set the tenant can publish.
//!
//! Owns: the install checks beyond the plugin itself (a known time zone, the
//! holiday table), and the rule set's id: the hash of its identity, so the same
//! file with the same settings, holidays and zone is the same rule set wherever it
//! is installed.

use callsync_core::Timestamp;
use callsync_core::plugin::{PluginRef, RuleInputs, Setting};
use callsync_core::tenant_config::{PreparedInstall, Ruleset};
use chrono::NaiveDate;

use crate::holidays::MAX_HOLIDAYS;
use crate::{PluginError, PluginHost, content_hash, zone};

/// Most settings one rule set may carry, and the longest key or value.
pub const MAX_SETTINGS: usize = 64;
/// Longest setting key or value, in bytes.
pub const MAX_SETTING_BYTES: usize = 1_024;

/// What an admin installs.
#[derive(Debug, Clone)]
pub struct InstallRequest<'a> {
    /// The plugin file: a component, or a module built with `wit-bindgen`.
    pub file: &'a [u8],
    /// The plugin's settings.
    pub settings: Vec<Setting>,
    /// Days off.
    pub holidays: Vec<NaiveDate>,
    /// IANA zone name, e.g. `Asia/Tokyo`.
    pub time_zone: String,
}

/// Why an install was refused; nothing was published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstallError {
    /// The plugin failed a check.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// Not an IANA time zone.
    #[error("`{0}` is not a time zone name (e.g. Asia/Tokyo)")]
    UnknownTimeZone(String),
    /// Too many holidays, or settings too many or too long.
    #[error("too many or too long: {0}")]
    TooLarge(&'static str),
}

impl InstallError {
    /// A stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Plugin(e) => e.code(),
            Self::UnknownTimeZone(_) => "unknown-time-zone",
            Self::TooLarge(_) => "install-too-large",
        }
    }

    /// The verdict in Japanese, for the admin screen.
    pub fn message_ja(&self) -> String {
        match self {
            Self::Plugin(e) => e.message_ja(),
            Self::UnknownTimeZone(zone) => {
                format!("「{zone}」はタイムゾーン名ではありません（例: Asia/Tokyo）")
            }
            Self::TooLarge("holidays") => "休日が多すぎます".to_owned(),
            Self::TooLarge(_) => "設定が多すぎるか長すぎます".to_owned(),
        }
    }
}

/// A checked install, ready to publish (see [`PreparedInstall`]).
pub type Prepared = PreparedInstall;

/// Checks `request` at `now` (see [`PluginHost::inspect`]) and builds its rule set.
pub fn prepare(
    host: &PluginHost,
    request: InstallRequest<'_>,
    now: Timestamp,
) -> Result<Prepared, InstallError> {
    let tz: chrono_tz::Tz = request
        .time_zone
        .parse()
        .map_err(|_| InstallError::UnknownTimeZone(request.time_zone.chars().take(64).collect()))?;
    if request.holidays.len() > MAX_HOLIDAYS {
        return Err(InstallError::TooLarge("holidays"));
    }
    if request.settings.len() > MAX_SETTINGS
        || request
            .settings
            .iter()
            .any(|s| s.key.len() > MAX_SETTING_BYTES || s.value.len() > MAX_SETTING_BYTES)
    {
        return Err(InstallError::TooLarge("settings"));
    }
    let mut holidays = request.holidays;
    holidays.sort();
    holidays.dedup();
    let inputs_at = |at: Timestamp| RuleInputs {
        call_ended_at: at,
        saved_at: at,
        zone: zone::utc_offsets(tz, at),
        holidays: holidays.clone(),
        settings: request.settings.clone(),
        attempt: 1,
    };
    let inspected = host.inspect(request.file, &request.settings, inputs_at, now)?;
    let ruleset = Ruleset {
        plugin: PluginRef {
            id: inspected.info.id,
            version: inspected.info.version,
            hash: inspected.hash,
        },
        settings: request.settings,
        holidays,
        time_zone: tz.name().to_owned(),
        result_types: inspected.info.result_types,
    };
    Ok(Prepared {
        id: content_hash(&ruleset.identity()),
        ruleset,
        component: inspected.component,
    })
}
