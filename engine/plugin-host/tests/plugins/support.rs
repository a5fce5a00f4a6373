//! What every plugin test needs: a host, a plugin installed from its file, inputs
//! in a tenant's zone, picks.

use std::sync::{Arc, OnceLock};

use callsync_core::Timestamp;
use callsync_core::customer::CustomerStatus;
use callsync_core::id::ResultTypeId;
use callsync_core::plugin::{Pick, PluginInfo, RuleInputs, Setting};
use callsync_core::result_type::{OptionKind, ResultTypeSpec};
use callsync_plugin_host::{
    Inspected, Limits, LoadedPlugin, PluginError, PluginHost, holidays, zone,
};
use chrono::TimeZone;
use chrono_tz::Tz;

/// A host without a disk cache.
pub(crate) fn host() -> PluginHost {
    PluginHost::new(Limits::default(), None).unwrap()
}

/// One host for the whole test binary: unoptimized test builds take seconds to
/// compile a plugin, and a host compiles each build once.
pub(crate) fn shared_host() -> &'static PluginHost {
    static HOST: OnceLock<PluginHost> = OnceLock::new();
    HOST.get_or_init(host)
}

/// Inputs for a call that ended at `ended` and is saved at `saved`, in `tz`, with
/// the Japanese holiday table.
pub(crate) fn inputs(
    tz: Tz,
    ended: Timestamp,
    saved: Timestamp,
    settings: &[Setting],
) -> RuleInputs {
    RuleInputs {
        call_ended_at: ended,
        saved_at: saved,
        zone: zone::utc_offsets(tz, ended),
        holidays: holidays::japan(),
        settings: settings.to_vec(),
        attempt: 1,
    }
}

/// `host.inspect` of `file` with `settings` for a tenant in Tokyo, on 2026-11-24.
pub(crate) fn inspect_in_tokyo(
    host: &PluginHost,
    file: &[u8],
    settings: &[Setting],
) -> Result<Inspected, PluginError> {
    let for_inputs = settings.to_vec();
    host.inspect(
        file,
        settings,
        |at| inputs(chrono_tz::Asia::Tokyo, at, at, &for_inputs),
        tokyo("2026-11-24 09:00"),
    )
}

/// A plugin installed from `file` with `settings`, its description, and the host.
pub(crate) fn installed(
    file: &[u8],
    settings: &[Setting],
) -> (&'static PluginHost, Arc<LoadedPlugin>, PluginInfo) {
    let host = shared_host();
    let inspected = inspect_in_tokyo(host, file, settings).unwrap();
    let plugin = host.load(inspected.hash, &inspected.component).unwrap();
    (host, plugin, inspected.info)
}

/// `text` (`YYYY-MM-DD HH:MM`) in `tz`, as a timestamp.
pub(crate) fn local(tz: Tz, text: &str) -> Timestamp {
    let naive = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S"))
        .unwrap();
    Timestamp::from_millis(
        tz.from_local_datetime(&naive)
            .earliest()
            .unwrap()
            .timestamp_millis(),
    )
}

/// `text` in Asia/Tokyo.
pub(crate) fn tokyo(text: &str) -> Timestamp {
    local(chrono_tz::Asia::Tokyo, text)
}

/// A timestamp shown in `tz` as `YYYY-MM-DD HH:MM` (for readable assertions).
pub(crate) fn show(tz: Tz, at: Timestamp) -> String {
    tz.timestamp_millis_opt(at.as_millis())
        .unwrap()
        .format("%Y-%m-%d %H:%M")
        .to_string()
}

/// A pick of `result_type` with `option`, at `at` if given.
pub(crate) fn pick(result_type: &str, option: OptionKind, at: Option<Timestamp>) -> Pick {
    Pick {
        result_type: ResultTypeId::new(result_type).unwrap(),
        option,
        at,
        customer_status: None,
    }
}

/// The same pick with a customer status.
pub(crate) fn with_status(mut pick: Pick, status: &str) -> Pick {
    pick.customer_status = Some(CustomerStatus::new(status));
    pick
}

/// The declared type with this id.
pub(crate) fn spec<'a>(info: &'a PluginInfo, id: &str) -> &'a ResultTypeSpec {
    info.result_types
        .iter()
        .find(|t| t.id.as_str() == id)
        .unwrap()
}

/// Settings from `key=value` pairs.
pub(crate) fn settings(pairs: &[(&str, &str)]) -> Vec<Setting> {
    pairs
        .iter()
        .map(|(key, value)| Setting {
            key: (*key).to_owned(),
            value: (*value).to_owned(),
        })
        .collect()
}
