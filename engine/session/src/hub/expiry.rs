//! The start limit: a requested call that no phone started in time is expired
//! by the server, as a wake-up of the hub, and the expiry pushed to devices.

use callsync_core::{
    CallEvent, DeviceKind, EventId, EventKind, Phase, ResultCatalog, RuleContext, Stamp,
};

use super::{Batch, HubSession};
use crate::storage::{HubStore, LoadedDoc, StorageError};

impl<D: LoadedDoc> HubSession<D> {
    /// Records `expired` on every call whose start limit has passed without a
    /// start the server knows of, and pushes it.
    pub(super) fn expire_due<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        batch: &mut Batch<'_>,
    ) -> Result<(), StorageError> {
        if !self.expiry_blocked && self.next_expiry.is_some_and(|due| due > self.now) {
            return Ok(());
        }
        let now = self.now;
        let cutoff = now.plus_millis(-self.settings.start_limit_ms);
        self.expiry_blocked = false;
        for (customer, call) in store.awaiting_start_before(&self.tenant, cutoff)? {
            if !self.load(store, &customer)? {
                self.expiry_blocked = true;
                continue;
            }
            let Some(cached) = self.docs.get_mut(&customer) else {
                continue;
            };
            if cached.doc().call(&call).map(|v| v.phase) != Some(Phase::AwaitingStart) {
                continue;
            }
            let event = CallEvent {
                id: match EventId::new(format!("expired-{call}")) {
                    Ok(id) => id,
                    Err(_) => continue,
                },
                call: call.clone(),
                stamp: Stamp {
                    at: now,
                    device: self.settings.server_device.clone(),
                    device_kind: DeviceKind::Server,
                    user: self.settings.server_user.clone(),
                    device_at: None,
                },
                kind: EventKind::Expired,
            };
            let catalog = ResultCatalog::new(Vec::new());
            let ctx = RuleContext {
                // Expiry reads no result types.
                catalog: &catalog,
                start_limit_ms: self.settings.start_limit_ms,
                other_open_calls: &[],
            };
            if let Err(e) = cached.doc_mut().record(event, &ctx) {
                tracing::warn!(call = %call, error = %e, "could not record expiry");
                self.docs.remove(&customer);
                continue;
            }
            match store.save(cached, None) {
                Ok(()) => {}
                Err(e) if e.is_failure() => return Err(e),
                Err(e) => {
                    tracing::warn!(call = %call, error = %e, "could not save expiry");
                    self.docs.remove(&customer);
                    continue;
                }
            }
            tracing::info!(call = %call, "call expired: start limit passed");
            self.fan_out(store, batch, &customer, None)?;
        }
        Ok(())
    }
}
