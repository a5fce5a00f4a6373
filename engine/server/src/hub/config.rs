//! The hub's side of the tenant configuration: the configuration document (created
//! with the standard plugin the first time a tenant needs it), its sync to every
//! device of the tenant (read-only for them), publishing plugin installs (checked
//! and compiled on the connection task before they get here), the tenant's result
//! catalog for admission, and re-evaluating every received result decision.

use automerge::sync::{self, SyncDoc};
use callsync_core::event::{CallEvent, EventKind};
use callsync_core::tenant_config::TenantConfigDoc;
use callsync_core::wire::{ErrorBody, InstalledSummary, Message, RecallSummary, RpcResult};
use callsync_core::{ResultCatalog, ResultTypeSpec, TenantId};
use callsync_plugin_host::decide::verify;
use callsync_plugin_host::holidays;
use callsync_plugin_host::install::{InstallRequest, Prepared, prepare};
use callsync_store::{ConfigQueries, StoreError, WriteTx};

use super::{Batch, ConnId, HubState};
use crate::accounts::Session;
use crate::clock;
use callsync_core::wire::Refusal;

/// Why re-running a message's decisions did not pass.
pub(super) enum Verdict {
    /// A decision does not hold: the changes are refused.
    Refused(ErrorBody),
    /// The tenant's plugin time ran out: the device should send again later.
    Busy,
}

/// The refusal of a device that tries to change the configuration.
fn config_read_only() -> ErrorBody {
    Refusal::ConfigReadOnly.body()
}

/// The refusal of an install by a member below admin.
pub(crate) fn install_needs_admin() -> ErrorBody {
    Refusal::RoleRequired {
        needed: callsync_core::Role::Admin,
    }
    .body()
}

/// Largest configuration document (with every component ever installed) the
/// server publishes: a device's first sync of it travels in one frame of at most
/// `wire::MAX_FRAME_BYTES` (8 MiB).
const MAX_CONFIG_BYTES: usize = 6 << 20;

/// Most recalls one `recall-list` answers (the soonest): who to call next, not
/// an archive, and always within one frame.
const MAX_RECALLS: usize = 1_000;

/// The zone a tenant starts in.
const DEFAULT_TIME_ZONE: &str = "Asia/Tokyo";

impl HubState {
    /// The tenant's configuration document: cached, else stored, else created with
    /// the standard plugin (Japanese holidays, Asia/Tokyo), so a new tenant works
    /// at once.
    pub(super) fn config(
        &mut self,
        tx: &mut WriteTx<'_>,
        tenant: &TenantId,
    ) -> Result<&mut TenantConfigDoc, StoreError> {
        if !self.configs.contains_key(tenant) {
            let doc = match tx.tenant_config(tenant)? {
                Some(bytes) => TenantConfigDoc::load(&bytes, self.config.server_actor.clone())?,
                None => self.create_config(tx, tenant)?,
            };
            self.configs.insert(tenant.clone(), doc);
        }
        self.configs.get_mut(tenant).ok_or_else(|| {
            StoreError::Core(callsync_core::CoreError::Automerge(
                "configuration cache".into(),
            ))
        })
    }

    fn create_config(
        &self,
        tx: &mut WriteTx<'_>,
        tenant: &TenantId,
    ) -> Result<TenantConfigDoc, StoreError> {
        let now = clock::now();
        let mut doc = TenantConfigDoc::create(tenant, now, self.config.server_actor.clone())?;
        let request = InstallRequest {
            file: callsync_shipped_plugins::STANDARD,
            settings: Vec::new(),
            holidays: holidays::japan(),
            time_zone: DEFAULT_TIME_ZONE.to_owned(),
        };
        match prepare(&self.config.plugins, request, now) {
            Ok(prepared) => {
                prepared.publish(&mut doc, &self.config.server_user, now)?;
                tracing::info!(tenant = %tenant, plugin = %prepared.ruleset.plugin, "installed the standard plugin");
            }
            // The shipped plugin is tested; if it ever failed here the tenant would
            // have no rules until an admin installs some, and results say so.
            Err(err) => {
                tracing::error!(tenant = %tenant, error = %err, "could not install the standard plugin")
            }
        }
        tx.put_tenant_config(tenant, &doc.save())?;
        Ok(doc)
    }

    /// The heads of the tenant's configuration, as `peer` announces them.
    pub(super) fn config_heads(
        &mut self,
        tx: &mut WriteTx<'_>,
        tenant: &TenantId,
    ) -> Result<Vec<String>, StoreError> {
        Ok(self
            .config(tx, tenant)?
            .heads()
            .iter()
            .map(|h| h.to_string())
            .collect())
    }

    /// A `config-sync` from a device: answer it; a device that tries to change the
    /// configuration is disconnected (only the server writes it).
    pub(super) fn config_sync(
        &mut self,
        tx: &mut WriteTx<'_>,
        batch: &mut Batch,
        conn: ConnId,
        data: &[u8],
    ) -> Result<(), StoreError> {
        let Some(tenant) = self.conns.get(&conn).map(|c| c.session.tenant.clone()) else {
            return Ok(());
        };
        let message = match sync::Message::decode(data) {
            Ok(message) => message,
            Err(e) => {
                batch.closes.push((
                    conn,
                    Refusal::MalformedSync {
                        detail: e.to_string(),
                    }
                    .body(),
                ));
                return Ok(());
            }
        };
        if !message.changes.is_empty() {
            // Devices never write the configuration: refuse any change before it
            // touches the document (a change with missing dependencies would not
            // move the heads, but would wait in the document's queue).
            batch.closes.push((conn, config_read_only()));
            return Ok(());
        }
        // What is left is the summary (heads, needs, bloom filters): screened too.
        if let Err(e) = callsync_core::screen::screen_message(
            &message,
            &callsync_core::screen::ScreenLimits::default(),
        ) {
            batch.closes.push((conn, Refusal::Screen(e).body()));
            return Ok(());
        }
        if let Err(e) = super::contained(self.config(tx, &tenant).map(|_| ()))? {
            batch.closes.push((conn, super::unreadable_config(&e)));
            return Ok(());
        }
        let (Some(c), Some(doc)) = (self.conns.get_mut(&conn), self.configs.get_mut(&tenant))
        else {
            return Ok(());
        };
        let before = doc.heads();
        let received = doc
            .automerge_mut()
            .sync()
            .receive_sync_message(&mut c.config_state, message);
        if received.is_err() || doc.heads() != before {
            // Forget whatever was applied: reload from what is stored.
            self.configs.remove(&tenant);
            self.catalogs.remove(&tenant);
            batch.closes.push((conn, config_read_only()));
            return Ok(());
        }
        if let Some(reply) = doc
            .automerge_mut()
            .sync()
            .generate_sync_message(&mut c.config_state)
        {
            batch.send(
                conn,
                Message::ConfigSync {
                    data: reply.encode(),
                },
            );
        }
        Ok(())
    }

    /// Sends every connection of the tenant what it lacks of the configuration.
    fn push_config(&mut self, batch: &mut Batch, tenant: &TenantId) {
        let Some(doc) = self.configs.get_mut(tenant) else {
            return;
        };
        for (id, c) in self
            .conns
            .iter_mut()
            .filter(|(_, c)| &c.session.tenant == tenant)
        {
            if let Some(message) = doc
                .automerge_mut()
                .sync()
                .generate_sync_message(&mut c.config_state)
            {
                batch.send(
                    *id,
                    Message::ConfigSync {
                        data: message.encode(),
                    },
                );
            }
        }
    }

    /// Publishes a checked install (see `connection`): the rule set becomes the
    /// tenant's active one and every connected device of the tenant hears of it.
    pub(super) fn publish_plugin(
        &mut self,
        tx: &mut WriteTx<'_>,
        batch: &mut Batch,
        conn: ConnId,
        prepared: &Prepared,
    ) -> Result<RpcResult, StoreError> {
        let Some(session) = self.conns.get(&conn).map(|c| c.session.clone()) else {
            return Ok(RpcResult::Done);
        };
        if !session.role.is_admin() {
            return Ok(RpcResult::Refused(install_needs_admin()));
        }
        let now = clock::now();
        let doc = match super::contained(self.config(tx, &session.tenant))? {
            Ok(doc) => doc,
            Err(e) => return Ok(RpcResult::Refused(super::unreadable_config(&e))),
        };
        let already_held = doc.component(&prepared.ruleset.plugin.hash)?.is_some();
        let grows_by = if already_held {
            0
        } else {
            prepared.component.len()
        };
        if doc.save().len() + grows_by > MAX_CONFIG_BYTES {
            // A device's first sync of the configuration must fit in one frame.
            return Ok(RpcResult::Refused(
                Refusal::ConfigTooLarge {
                    max: MAX_CONFIG_BYTES,
                }
                .body(),
            ));
        }
        prepared.publish(doc, &session.user, now)?;
        let bytes = doc.save();
        tx.put_tenant_config(&session.tenant, &bytes)?;
        self.catalogs.remove(&session.tenant);
        tracing::info!(tenant = %session.tenant, user = %session.user, plugin = %prepared.ruleset.plugin, "plugin installed");
        self.push_config(batch, &session.tenant);
        Ok(RpcResult::PluginInstalled(InstalledSummary {
            ruleset: prepared.id,
            plugin: prepared.ruleset.plugin.clone(),
            result_types: prepared
                .ruleset
                .result_types
                .iter()
                .map(|t| t.id.as_str().to_owned())
                .collect(),
        }))
    }

    /// Every result type any of the tenant's rule sets declares (the active set's
    /// first) with every option any of them offers, so a result decided offline under
    /// an earlier rule set still passes admission; its decision is then checked
    /// against its own rule set by [`Self::verify_results`].
    pub(super) fn catalog(
        &mut self,
        tx: &mut WriteTx<'_>,
        tenant: &TenantId,
    ) -> Result<std::sync::Arc<ResultCatalog>, StoreError> {
        if let Some(catalog) = self.catalogs.get(tenant) {
            return Ok(catalog.clone());
        }
        let config = self.config(tx, tenant)?.config()?;
        let mut types: Vec<ResultTypeSpec> = config.catalog().types().to_vec();
        for ruleset in config.rulesets.values() {
            for spec in &ruleset.result_types {
                match types.iter_mut().find(|t| t.id == spec.id) {
                    // A type another rule set declared too: any option either
                    // offers passes here; the decision's own rule set is checked
                    // by `verify_results`.
                    Some(known) => {
                        for option in &spec.options {
                            if !known.options.contains(option) {
                                known.options.push(*option);
                            }
                        }
                    }
                    None => types.push(spec.clone()),
                }
            }
        }
        let catalog = std::sync::Arc::new(ResultCatalog::new(types));
        self.catalogs.insert(tenant.clone(), catalog.clone());
        Ok(catalog)
    }

    /// Re-runs the decision of every result among `events` with the rule set it
    /// names, on the inputs it records: the same plugin version must decide the same.
    /// Each re-run is charged to the tenant's plugin time; when it runs out
    /// midway, the answer is [`Verdict::Busy`].
    pub(super) fn verify_results(
        &mut self,
        tx: &mut WriteTx<'_>,
        tenant: &TenantId,
        events: &[CallEvent],
    ) -> Result<Result<(), Verdict>, StoreError> {
        let plugins = self.config.plugins.clone();
        let config = self.config(tx, tenant)?.config()?;
        for event in events {
            let EventKind::ResultSaved(fields) = &event.kind else {
                continue;
            };
            let started = std::time::Instant::now();
            if !self.plugin_time_left(tenant, started) {
                return Ok(Err(Verdict::Busy));
            }
            let doc = self.config(tx, tenant)?;
            let verified = verify(&plugins, &config, doc, fields, event.stamp.at);
            self.spend_plugin_time(tenant, started.elapsed());
            if let Err(err) = verified {
                return Ok(Err(Verdict::Refused(
                    Refusal::ResultNotVerified {
                        call: event.call.to_string(),
                        code: err.code(),
                        detail: err.to_string(),
                    }
                    .body(),
                )));
            }
        }
        Ok(Ok(()))
    }

    /// `recall-list`: the tenant's recalls the session may see.
    pub(super) fn recalls(
        &mut self,
        tx: &mut WriteTx<'_>,
        session: &Session,
    ) -> Result<RpcResult, StoreError> {
        use callsync_store::AccountQueries;
        let restricted = session.role.is_limited_by_assignee_visibility()
            && tx.assignee_visibility(&session.tenant)?;
        Ok(RpcResult::Recalls(
            tx.recalls(&session.tenant)?
                .into_iter()
                .filter(|r| !restricted || r.owner == session.user.as_str())
                // The soonest first, and at most a frame's worth.
                .take(MAX_RECALLS)
                .map(|r| RecallSummary {
                    id: r.id,
                    company: r.company,
                    owner: r.owner,
                    recall_at: r.recall_at,
                })
                .collect(),
        ))
    }
}
