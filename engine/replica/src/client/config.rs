//! The device's side of the tenant configuration document: catch up when the
//! server's heads (announced in `peer`) differ from ours, apply what the server
//! sends (initially and when an admin installs a plugin), and keep it in the local
//! store so rules run offline. A device never writes the configuration.

use automerge::sync::{self, SyncDoc};
use automerge::{AutoCommit, ReadDoc};
use callsync_core::tenant_config::TenantConfigDoc;
use callsync_core::wire::Message;
use callsync_store::ConfigQueries;

use super::{ClientError, ClientEvent, SyncClient};

/// The configuration as this device holds it, synced or not yet readable (an
/// empty document before the first sync).
pub(super) struct LocalConfig {
    pub(super) doc: AutoCommit,
    pub(super) state: sync::State,
    /// The heads the server announced at join.
    pub(super) target: Vec<automerge::ChangeHash>,
}

impl SyncClient {
    fn local_config(&mut self) -> Result<&mut LocalConfig, ClientError> {
        if self.config.is_none() {
            let doc = match self.store.tenant_config(&self.session.tenant)? {
                Some(bytes) => AutoCommit::load(&bytes)
                    .map_err(|e| ClientError::Protocol(format!("stored configuration: {e}")))?,
                None => AutoCommit::new(),
            };
            self.config = Some(LocalConfig {
                doc,
                state: sync::State::new(),
                target: Vec::new(),
            });
        }
        self.config
            .as_mut()
            .ok_or_else(|| ClientError::Protocol("configuration".to_owned()))
    }

    /// After `peer`: starts the configuration's sync if the server holds other
    /// heads than this device.
    pub(super) async fn start_config_sync(
        &mut self,
        announced: &[String],
    ) -> Result<(), ClientError> {
        let target: Vec<automerge::ChangeHash> =
            announced.iter().filter_map(|h| h.parse().ok()).collect();
        let config = self.local_config()?;
        config.target = target;
        let mut ours = config.doc.get_heads();
        ours.sort();
        let mut theirs = config.target.clone();
        theirs.sort();
        if ours == theirs {
            return Ok(());
        }
        let message = config.doc.sync().generate_sync_message(&mut config.state);
        if let Some(message) = message {
            self.send(&Message::ConfigSync {
                data: message.encode(),
            })
            .await?;
        }
        Ok(())
    }

    /// A `config-sync` from the server: apply, store, answer.
    pub(super) async fn on_config_sync(
        &mut self,
        data: &[u8],
        events: &mut Vec<ClientEvent>,
    ) -> Result<(), ClientError> {
        let message = sync::Message::decode(data)
            .map_err(|e| ClientError::Protocol(format!("bad configuration sync message: {e}")))?;
        let tenant = self.session.tenant.clone();
        let config = self.local_config()?;
        let before = config.doc.get_heads();
        config
            .doc
            .sync()
            .receive_sync_message(&mut config.state, message)
            .map_err(|e| ClientError::Protocol(format!("configuration sync: {e}")))?;
        let changed = config.doc.get_heads() != before;
        let reply = config.doc.sync().generate_sync_message(&mut config.state);
        if changed {
            let bytes = config.doc.save();
            let mut tx = self.store.write()?;
            tx.put_tenant_config(&tenant, &bytes)?;
            tx.commit()?;
            if let Ok(doc) = TenantConfigDoc::load(&bytes, automerge::ActorId::random())
                && let Ok(parsed) = doc.config()
                && let Some((id, ruleset)) = parsed.active_ruleset()
            {
                events.push(ClientEvent::ConfigChanged {
                    ruleset: id.to_string(),
                    plugin: ruleset.plugin.to_string(),
                });
            }
        }
        if let Some(reply) = reply {
            self.send(&Message::ConfigSync {
                data: reply.encode(),
            })
            .await?;
        }
        Ok(())
    }

    /// The server refused this device's copy of the configuration (it holds changes
    /// the server does not, e.g. after the server was restored from a backup): forget
    /// it, so the next connection syncs it again from nothing.
    pub(super) fn forget_config(&mut self) -> Result<(), ClientError> {
        let tenant = self.session.tenant.clone();
        let mut tx = self.store.write()?;
        tx.delete_tenant_config(&tenant)?;
        tx.commit()?;
        self.config = None;
        tracing::warn!("the server refused this device's configuration; it will sync again");
        Ok(())
    }

    /// Whether this device holds every configuration change the server announced.
    pub(super) fn config_settled(&mut self) -> bool {
        self.config.as_mut().is_none_or(|c| {
            let target = c.target.clone();
            target.iter().all(|h| c.doc.get_change_by_hash(h).is_some())
        })
    }
}
