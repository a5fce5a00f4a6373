//! Result rules on this device: the tenant's configuration document as synced from
//! the server (a local data directory with no server installs the standard plugin
//! for itself), the plugin host with its compiled-plugin cache in the data
//! directory, and turning the result form into the fields of a `result-saved`
//! event through the active rule set. Works offline.

use std::path::Path;

use callsync_core::plugin::{CallFacts, Pick, call_facts};
use callsync_core::result_type::{OptionKind, ResultOption};
use callsync_core::rules::check_option_time;
use callsync_core::tenant_config::TenantConfigDoc;
use callsync_core::{
    ActorId, CallId, CustomerStatus, ResultCatalog, ResultTypeId, SavedResultFields,
};
use callsync_plugin_host::decide::decide;
use callsync_plugin_host::install::{InstallRequest, prepare};
use callsync_plugin_host::{Limits, PluginHost, holidays};
use callsync_store::ConfigQueries;

use crate::app::{App, InputError, parse_time};
use crate::args::ResultArgs;

/// Compiled plugins, cached in the data directory (safe to delete).
const PLUGIN_CACHE_DIR: &str = "plugin-cache";

/// The value of `--recall` that asks the rules to pick the time.
pub(crate) const RECALL_AUTO: &str = "auto";

/// The plugin host for a data directory.
pub(crate) fn host(data: &Path) -> anyhow::Result<PluginHost> {
    Ok(PluginHost::new(
        Limits::default(),
        Some(&data.join(PLUGIN_CACHE_DIR)),
    )?)
}

/// The tenant's configuration stored in `app`'s data directory, if any.
pub(crate) fn stored_config(app: &App) -> anyhow::Result<Option<TenantConfigDoc>> {
    Ok(match app.store.tenant_config(&app.tenant)? {
        Some(bytes) => Some(TenantConfigDoc::load(&bytes, ActorId::random())?),
        None => None,
    })
}

/// The result types in force here: the active rule set's, else the standard ones.
pub(crate) fn catalog(app: &App) -> ResultCatalog {
    match stored_config(app) {
        Ok(Some(doc)) => match doc.config() {
            Ok(config) if config.active.is_some() => config.catalog(),
            _ => ResultCatalog::standard(),
        },
        _ => ResultCatalog::standard(),
    }
}

/// The configuration to decide with: as synced; for a local data directory (no
/// server), the standard plugin installed here on first use.
fn config_for_results(app: &mut App, host: &PluginHost) -> anyhow::Result<Option<TenantConfigDoc>> {
    if let Some(doc) = stored_config(app)? {
        return Ok(Some(doc));
    }
    if app.session.is_some() {
        // Synced from a server that has not sent a configuration (yet).
        return Ok(None);
    }
    let mut doc = TenantConfigDoc::create(&app.tenant, app.now, ActorId::random())?;
    let prepared = prepare(
        host,
        InstallRequest {
            file: callsync_shipped_plugins::STANDARD,
            settings: Vec::new(),
            holidays: holidays::japan(),
            time_zone: app.tz.name().to_owned(),
        },
        app.now,
    )?;
    prepared.publish(&mut doc, &app.user, app.now)?;
    let mut tx = app.store.write()?;
    tx.put_tenant_config(&app.tenant, &doc.save())?;
    tx.commit()?;
    Ok(Some(doc))
}

/// The user's pick on the result form.
fn pick(app: &App, args: &ResultArgs) -> anyhow::Result<Pick> {
    let time = |text: &str| -> anyhow::Result<Option<callsync_core::Timestamp>> {
        if text == RECALL_AUTO {
            Ok(None)
        } else {
            Ok(Some(parse_time(text, app.tz)?))
        }
    };
    let (option, at) = match (&args.recall, &args.restrict_until) {
        (Some(at), _) => (OptionKind::Recall, time(at)?),
        (None, Some(until)) => (OptionKind::Restriction, Some(parse_time(until, app.tz)?)),
        (None, None) => (OptionKind::None, None),
    };
    Ok(Pick {
        result_type: ResultTypeId::new(&args.result_type)?,
        option,
        at,
        customer_status: args
            .status
            .as_deref()
            .map(|s| CustomerStatus::new(s.trim())),
    })
}

/// The fields of a result saved now for `call` (its facts given for a call not yet
/// recorded, a manual call), decided by the active rule set's plugin.
pub(crate) fn result_fields(
    app: &mut App,
    call: &CallId,
    facts: Option<CallFacts>,
    args: &ResultArgs,
) -> anyhow::Result<SavedResultFields> {
    let pick = pick(app, args)?;
    // The core's own checks of a picked time come first, with the core's codes,
    // whatever the plugin would say.
    if let Some(at) = pick.at {
        let picked = match pick.option {
            OptionKind::Restriction => ResultOption::Restriction { until: at },
            _ => ResultOption::Recall { at },
        };
        check_option_time(&picked, app.now)?;
    }
    let host = host(&app.data)?;
    let Some(doc) = config_for_results(app, &host)? else {
        // No rules: the pick as made, checked by the core alone.
        let mut fields = app.result_fields(args)?;
        fields.customer_status = pick.customer_status.or(fields.customer_status);
        return Ok(fields);
    };
    let facts = match facts {
        Some(facts) => facts,
        None => {
            let customer = app.store.customer_of_call(&app.tenant, call)?;
            let doc = app.load(&customer)?;
            call_facts(&doc.customer()?, call).ok_or(InputError::CallNeverTookPlace)?
        }
    };
    let decided = decide(&host, &doc, &pick, facts, app.now)?;
    Ok(SavedResultFields {
        result_type: pick.result_type,
        option: decided.option,
        customer_status: decided.customer_status,
        memo: args.memo.clone(),
        decision: Some(Box::new(decided.record)),
        kept_as_picked: None,
    })
}
