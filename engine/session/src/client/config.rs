//! The device's side of the tenant configuration document: catch up when the
//! server's heads (announced in `peer`) differ from ours, apply what the server
//! sends (initially and when an admin installs a plugin), and keep it in local
//! storage so rules run offline. A device never writes the configuration.

use automerge::sync::{self, SyncDoc};
use automerge::{AutoCommit, ReadDoc};
use callsync_core::tenant_config::TenantConfigDoc;
use callsync_core::wire::Message;

use super::{ClientEvent, ClientFailure, ClientOutput, ClientSession, ClientStore, Outcome};
use crate::storage::LoadedDoc;

/// The configuration as this device holds it, synced or not yet readable (an
/// empty document before the first sync).
pub(super) struct LocalConfig {
    doc: AutoCommit,
    state: sync::State,
    /// The heads the server announced at join.
    target: Vec<automerge::ChangeHash>,
}

impl<D: LoadedDoc> ClientSession<D> {
    fn local_config<S: ClientStore<Doc = D>>(
        &mut self,
        store: &mut S,
    ) -> Result<&mut LocalConfig, ClientFailure> {
        if self.config.is_none() {
            let doc = match store.config(&self.device.tenant)? {
                Some(bytes) => AutoCommit::load(&bytes)
                    .map_err(|e| ClientFailure::Protocol(format!("stored configuration: {e}")))?,
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
            .ok_or_else(|| ClientFailure::Protocol("configuration".to_owned()))
    }

    /// After `peer`: starts the configuration's sync if the server holds other
    /// heads than this device.
    pub(super) fn start_config_sync<S: ClientStore<Doc = D>>(
        &mut self,
        store: &mut S,
        announced: &[String],
        out: &mut ClientOutput,
    ) -> Outcome {
        let target: Vec<automerge::ChangeHash> =
            announced.iter().filter_map(|h| h.parse().ok()).collect();
        let config = self.local_config(store)?;
        config.target = target;
        let mut ours = config.doc.get_heads();
        ours.sort();
        let mut theirs = config.target.clone();
        theirs.sort();
        if ours == theirs {
            return Ok(());
        }
        if let Some(message) = config.doc.sync().generate_sync_message(&mut config.state) {
            out.messages.push(Message::ConfigSync {
                data: message.encode(),
            });
        }
        Ok(())
    }

    /// A `config-sync` from the server: apply, store, answer.
    pub(super) fn on_config_sync<S: ClientStore<Doc = D>>(
        &mut self,
        store: &mut S,
        data: &[u8],
        out: &mut ClientOutput,
    ) -> Outcome {
        let message = sync::Message::decode(data)
            .map_err(|e| ClientFailure::Protocol(format!("bad configuration sync message: {e}")))?;
        let tenant = self.device.tenant.clone();
        let config = self.local_config(store)?;
        let before = config.doc.get_heads();
        config
            .doc
            .sync()
            .receive_sync_message(&mut config.state, message)
            .map_err(|e| ClientFailure::Protocol(format!("configuration sync: {e}")))?;
        let changed = config.doc.get_heads() != before;
        let reply = config.doc.sync().generate_sync_message(&mut config.state);
        if changed {
            let bytes = config.doc.save();
            store.put_config(&tenant, &bytes)?;
            if let Ok(doc) = TenantConfigDoc::load(&bytes, automerge::ActorId::from(&[0u8][..]))
                && let Ok(parsed) = doc.config()
                && let Some((id, ruleset)) = parsed.active_ruleset()
            {
                out.events.push(ClientEvent::ConfigChanged {
                    ruleset: id.to_string(),
                    plugin: ruleset.plugin.to_string(),
                });
            }
        }
        if let Some(reply) = reply {
            out.messages.push(Message::ConfigSync {
                data: reply.encode(),
            });
        }
        Ok(())
    }

    /// The server refused this device's copy of the configuration (it holds changes
    /// the server does not, e.g. after the server was restored from a backup):
    /// forget it, so the next connection syncs it again from nothing.
    pub(super) fn forget_config<S: ClientStore<Doc = D>>(&mut self, store: &mut S) -> Outcome {
        store.delete_config(&self.device.tenant)?;
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
