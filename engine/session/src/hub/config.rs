//! The hub's side of the tenant configuration: the configuration document (created
//! with the standard rule set the first time the tenant needs it), its sync to
//! every device of the tenant (read-only for them), publishing plugin installs
//! (checked and compiled off the hub before they get here) and the result
//! catalog for admission. Re-running a received result's decision is the
//! `verification` module's.

use std::sync::Arc;

use automerge::sync::{self, SyncDoc};
use callsync_core::tenant_config::{PreparedInstall, TenantConfigDoc};
use callsync_core::wire::{ErrorBody, InstalledSummary, Refusal, RpcResult};
use callsync_core::{CoreError, ResultCatalog, ResultTypeSpec};

use super::{Batch, HubSession, PendingSync, SyncTarget, contained, unreadable_config};
use crate::storage::{HubStore, LoadedDoc, StorageError};
use crate::{Authenticated, ConnId};

/// The refusal of a device that tries to change the configuration.
fn config_read_only() -> ErrorBody {
    Refusal::ConfigReadOnly.body()
}

/// The refusal of an install by a member below admin.
pub fn install_needs_admin() -> ErrorBody {
    Refusal::RoleRequired {
        needed: callsync_core::Role::Admin,
    }
    .body()
}

/// Largest configuration document (with every component ever installed) the
/// server publishes: a device's first sync of it travels in one frame of at most
/// `wire::MAX_FRAME_BYTES` (8 MiB).
const MAX_CONFIG_BYTES: usize = 6 << 20;

/// Bytes a connection's queue must have free before the hub generates a sync
/// message of the configuration for it (see `SYNC_ROOM_BYTES`).
pub(super) const CONFIG_SYNC_ROOM_BYTES: usize = MAX_CONFIG_BYTES + (256 << 10);

/// Most recalls one `recall-list` answers (the soonest): who to call next, not
/// an archive, and always within one frame.
const MAX_RECALLS: usize = 1_000;

fn core_failure(e: CoreError) -> StorageError {
    StorageError::Unreadable(e.to_string())
}

impl<D: LoadedDoc> HubSession<D> {
    /// The tenant's configuration document: cached, else stored, else created with
    /// the standard rule set, so a new tenant works at once.
    pub(super) fn config<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
    ) -> Result<&mut TenantConfigDoc, StorageError> {
        if self.config_doc.is_none() {
            let doc = match store.tenant_config(&self.tenant)? {
                Some(bytes) => TenantConfigDoc::load(&bytes, self.settings.server_actor.clone())
                    .map_err(core_failure)?,
                None => self.create_config(store)?,
            };
            self.config_doc = Some(doc);
        }
        self.config_doc
            .as_mut()
            .ok_or_else(|| StorageError::Unreadable("configuration cache".to_owned()))
    }

    fn create_config<S: HubStore<Doc = D>>(
        &self,
        store: &mut S,
    ) -> Result<TenantConfigDoc, StorageError> {
        let now = self.now;
        let mut doc =
            TenantConfigDoc::create(&self.tenant, now, self.settings.server_actor.clone())
                .map_err(core_failure)?;
        match self.rules.standard_install(&self.tenant, now) {
            Ok(prepared) => {
                prepared
                    .publish(&mut doc, &self.settings.server_user, now)
                    .map_err(core_failure)?;
                tracing::info!(tenant = %self.tenant, plugin = %prepared.ruleset.plugin, "installed the standard plugin");
            }
            // The shipped plugin is tested; if it ever failed here the tenant would
            // have no rules until an admin installs some, and results say so.
            Err(err) => {
                tracing::error!(tenant = %self.tenant, error = %err, "could not install the standard plugin")
            }
        }
        store.put_tenant_config(&self.tenant, &doc.save())?;
        Ok(doc)
    }

    /// The heads of the configuration, as `peer` announces them.
    pub(super) fn config_heads<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
    ) -> Result<Vec<String>, StorageError> {
        Ok(self
            .config(store)?
            .heads()
            .iter()
            .map(|h| h.to_string())
            .collect())
    }

    /// A `config-sync` from a device: answer it; a device that tries to change the
    /// configuration is disconnected (only the server writes it).
    pub(super) fn config_sync<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        batch: &mut Batch<'_>,
        conn: ConnId,
        data: &[u8],
    ) -> Result<(), StorageError> {
        let message = match sync::Message::decode(data) {
            Ok(message) => message,
            Err(e) => {
                batch.close(
                    conn,
                    Refusal::MalformedSync {
                        detail: e.to_string(),
                    }
                    .body(),
                );
                return Ok(());
            }
        };
        if !message.changes.is_empty() {
            // Devices never write the configuration: refuse any change before it
            // touches the document (a change with missing dependencies would not
            // move the heads, but would wait in the document's queue).
            batch.close(conn, config_read_only());
            return Ok(());
        }
        // What is left is the summary (heads, needs, bloom filters): screened too.
        if let Err(e) = callsync_core::screen::screen_message(
            &message,
            &callsync_core::screen::ScreenLimits::default(),
        ) {
            batch.close(conn, Refusal::Screen(e).body());
            return Ok(());
        }
        if let Err(e) = contained(self.config(store).map(|_| ()))? {
            batch.close(conn, unreadable_config(&e));
            return Ok(());
        }
        let (Some(c), Some(doc)) = (self.conns.get_mut(&conn), self.config_doc.as_mut()) else {
            return Ok(());
        };
        if super::asks_for_everything(&message) {
            c.resets.insert(SyncTarget::Config);
        }
        let before = doc.heads();
        let received = doc
            .automerge_mut()
            .sync()
            .receive_sync_message(&mut c.config_state, message);
        if received.is_err() || doc.heads() != before {
            // Forget whatever was applied: reload from what is stored.
            self.config_doc = None;
            self.catalog = None;
            self.rule_source = None;
            batch.close(conn, config_read_only());
            return Ok(());
        }
        self.send_sync(batch, conn, &SyncTarget::Config, PendingSync::default());
        Ok(())
    }

    /// Sends every connection what it lacks of the configuration.
    fn push_config(&mut self, batch: &mut Batch<'_>) {
        let mut conns: Vec<ConnId> = self.conns.keys().copied().collect();
        conns.sort_unstable();
        for conn in conns {
            self.send_sync(batch, conn, &SyncTarget::Config, PendingSync::default());
        }
    }

    /// Publishes a checked install: the rule set becomes the tenant's active one
    /// and every connected device of the tenant hears of it.
    pub(super) fn publish_plugin<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        batch: &mut Batch<'_>,
        conn: ConnId,
        prepared: &PreparedInstall,
    ) -> Result<RpcResult, StorageError> {
        let Some(member) = self.conns.get(&conn).map(|c| c.member.clone()) else {
            return Ok(RpcResult::Done);
        };
        if !member.role.is_admin() {
            return Ok(RpcResult::Refused(install_needs_admin()));
        }
        let now = self.now;
        let doc = match contained(self.config(store))? {
            Ok(doc) => doc,
            Err(e) => return Ok(RpcResult::Refused(unreadable_config(&e))),
        };
        let already_held = doc
            .component(&prepared.ruleset.plugin.hash)
            .map_err(core_failure)?
            .is_some();
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
        prepared
            .publish(doc, &member.user, now)
            .map_err(core_failure)?;
        let bytes = doc.save();
        store.put_tenant_config(&self.tenant, &bytes)?;
        self.catalog = None;
        self.rule_source = None;
        batch.config_changed = true;
        tracing::info!(tenant = %self.tenant, user = %member.user, plugin = %prepared.ruleset.plugin, "plugin installed");
        self.push_config(batch);
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
    /// first) with every option any of them offers, so a result decided offline
    /// under an earlier rule set still passes admission; its decision is then
    /// checked against its own rule set by a [`super::Verification`].
    pub(super) fn catalog<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
    ) -> Result<Arc<ResultCatalog>, StorageError> {
        if let Some(catalog) = &self.catalog {
            return Ok(catalog.clone());
        }
        let config = self.config(store)?.config().map_err(core_failure)?;
        let mut types: Vec<ResultTypeSpec> = config.catalog().types().to_vec();
        for ruleset in config.rulesets.values() {
            for spec in &ruleset.result_types {
                match types.iter_mut().find(|t| t.id == spec.id) {
                    // A type another rule set declared too: any option either
                    // offers passes here; the decision's own rule set is checked
                    // by a `Verification`.
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
        let catalog = Arc::new(ResultCatalog::new(types));
        self.catalog = Some(catalog.clone());
        Ok(catalog)
    }

    /// `recall-list`: the tenant's recalls the member may see.
    pub(super) fn recalls<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        member: &Authenticated,
    ) -> Result<RpcResult, StorageError> {
        let restricted = member.role.is_limited_by_assignee_visibility()
            && store.assignee_visibility(&self.tenant)?;
        // The soonest first, and at most a frame's worth, chosen by the query.
        let owner = restricted.then_some(member.user.as_str());
        Ok(RpcResult::Recalls(store.recalls(
            &self.tenant,
            owner,
            MAX_RECALLS,
        )?))
    }
}
