//! The hub session's storage ([`HubStore`]) over one SQLite write transaction.
//!
//! Owns: answering the hub's questions and writes with this crate's queries, and
//! sorting [`StoreError`]s into the session's kinds: a database error abandons the
//! batch, a refused write is answered to the device, an unreadable row is that
//! item's problem.

use automerge::ActorId;
use callsync_core::wire::{CustomerSummary, RecallSummary, Refusal, UserCallStats};
use callsync_core::{
    CallId, CustomerDoc, CustomerId, DeviceId, DeviceKind, ResultTypeId, TenantId, Timestamp,
    UserId,
};
use callsync_session::storage::{HubStore, LoadedDoc, StorageError};

use crate::{
    AccountQueries, ConfigQueries, ReplicationQueries, StoreError, StoredDoc, WriteTx,
    customer_count, customers_page,
};

impl From<StoreError> for StorageError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Sqlite(e) => StorageError::Failed(e.to_string()),
            StoreError::UnknownCustomer { .. } => StorageError::UnknownCustomer,
            StoreError::Corrupt(what) => StorageError::Unreadable(what),
            StoreError::Core(core) => StorageError::Refused(Refusal::Core(core)),
            StoreError::DocumentTooLarge { limit } => {
                StorageError::Refused(Refusal::DocumentTooLarge { limit })
            }
            StoreError::CustomerExists { customer } => {
                StorageError::Refused(Refusal::CustomerExists {
                    customer: customer.to_string(),
                })
            }
            StoreError::CallOnAnotherCustomer { call, .. } => {
                StorageError::Refused(Refusal::CallOnAnotherCustomer {
                    call: call.to_string(),
                })
            }
            other => {
                tracing::warn!(error = %other, "a store refusal");
                StorageError::Refused(Refusal::StoreRefused)
            }
        }
    }
}

impl LoadedDoc for StoredDoc {
    fn doc(&self) -> &CustomerDoc {
        &self.doc
    }

    fn doc_mut(&mut self) -> &mut CustomerDoc {
        &mut self.doc
    }
}

impl HubStore for WriteTx<'_> {
    type Doc = StoredDoc;

    fn commit(&mut self) -> Result<(), StorageError> {
        self.commit_in_place()?;
        Ok(())
    }

    fn load(
        &mut self,
        tenant: &TenantId,
        customer: &CustomerId,
        actor: ActorId,
    ) -> Result<StoredDoc, StorageError> {
        match WriteTx::load(self, tenant, customer, actor) {
            Ok(doc) => Ok(doc),
            // A document whose stored bytes do not load is that document's problem.
            Err(StoreError::Core(e)) => Err(StorageError::Unreadable(e.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    fn save(&mut self, doc: &mut StoredDoc, max_bytes: Option<u64>) -> Result<(), StorageError> {
        self.save_appending(doc, max_bytes)?;
        Ok(())
    }

    fn insert(&mut self, doc: &mut CustomerDoc) -> Result<StoredDoc, StorageError> {
        Ok(WriteTx::insert(self, doc)?)
    }

    fn owner_of(
        &mut self,
        tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<Option<String>, StorageError> {
        Ok(ReplicationQueries::owner_of(self, tenant, customer)?)
    }

    fn assignee_visibility(&mut self, tenant: &TenantId) -> Result<bool, StorageError> {
        Ok(AccountQueries::assignee_visibility(self, tenant)?)
    }

    fn customer_count(&mut self, tenant: &TenantId) -> Result<u64, StorageError> {
        Ok(customer_count(self, tenant)?)
    }

    fn customers_page(
        &mut self,
        tenant: &TenantId,
        after: Option<&CustomerId>,
        owner: Option<&str>,
        text: Option<&str>,
        limit: u32,
    ) -> Result<Vec<CustomerSummary>, StorageError> {
        Ok(customers_page(self, tenant, after, owner, text, limit)?
            .into_iter()
            .map(|r| CustomerSummary {
                id: r.id,
                company: r.company,
                contact: r.contact,
                owner: r.owner,
                status: r.status,
            })
            .collect())
    }

    fn call_stats(
        &mut self,
        tenant: &TenantId,
        from: Timestamp,
        to: Timestamp,
        reached: &[ResultTypeId],
    ) -> Result<Vec<UserCallStats>, StorageError> {
        Ok(ConfigQueries::call_stats(self, tenant, from, to, reached)?)
    }

    fn recalls(
        &mut self,
        tenant: &TenantId,
        owner: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RecallSummary>, StorageError> {
        Ok(ConfigQueries::recalls(self, tenant, owner, limit)?
            .into_iter()
            .map(|r| RecallSummary {
                id: r.id,
                company: r.company,
                owner: r.owner,
                recall_at: r.recall_at,
            })
            .collect())
    }

    fn last_change_seq(&mut self) -> Result<u64, StorageError> {
        Ok(ReplicationQueries::last_change_seq(self)?)
    }

    fn changed_for(
        &mut self,
        device: &DeviceId,
        tenant: &TenantId,
        since: Option<u64>,
    ) -> Result<Vec<CustomerId>, StorageError> {
        Ok(ReplicationQueries::changed_for(
            self, device, tenant, since,
        )?)
    }

    fn subscribe(
        &mut self,
        device: &DeviceId,
        tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<(), StorageError> {
        WriteTx::subscribe(self, device, tenant, customer)?;
        Ok(())
    }

    fn subscribers(
        &mut self,
        tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<Vec<DeviceId>, StorageError> {
        Ok(ReplicationQueries::subscribers(self, tenant, customer)?)
    }

    fn sync_state(
        &mut self,
        device: &DeviceId,
        tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(ReplicationQueries::sync_state(
            self,
            device.as_str(),
            tenant,
            customer,
        )?)
    }

    fn set_sync_state(
        &mut self,
        device: &DeviceId,
        tenant: &TenantId,
        customer: &CustomerId,
        state: &[u8],
    ) -> Result<(), StorageError> {
        WriteTx::set_sync_state(self, device.as_str(), tenant, customer, state)?;
        Ok(())
    }

    fn actor_is_bound_to(
        &mut self,
        actor: &ActorId,
        device: &DeviceId,
    ) -> Result<bool, StorageError> {
        Ok(self.device_of_actor(&actor.to_hex_string())?.as_ref() == Some(device))
    }

    fn is_phone_of(&mut self, device: &DeviceId, user: &UserId) -> Result<bool, StorageError> {
        Ok(
            matches!(self.device(device)?, Some(d) if d.kind == DeviceKind::Phone && &d.email == user),
        )
    }

    fn devices_of(&mut self, user: &UserId) -> Result<Vec<(DeviceId, DeviceKind)>, StorageError> {
        Ok(AccountQueries::devices_of(self, user)?
            .into_iter()
            .map(|d| (d.id, d.kind))
            .collect())
    }

    fn awaiting_start_before(
        &mut self,
        tenant: &TenantId,
        cutoff: Timestamp,
    ) -> Result<Vec<(CustomerId, CallId)>, StorageError> {
        Ok(ReplicationQueries::awaiting_start_before(
            self, tenant, cutoff,
        )?)
    }

    fn oldest_awaiting_start(
        &mut self,
        tenant: &TenantId,
    ) -> Result<Option<Timestamp>, StorageError> {
        Ok(ReplicationQueries::oldest_awaiting_start(self, tenant)?)
    }

    fn customer_of_call(
        &mut self,
        tenant: &TenantId,
        call: &CallId,
    ) -> Result<Option<CustomerId>, StorageError> {
        Ok(WriteTx::known_customer_of_call(self, tenant, call)?)
    }

    fn queue_blob_deletion(&mut self, tenant: &TenantId, sha256: &str) -> Result<(), StorageError> {
        WriteTx::queue_blob_deletion(self, tenant, sha256)?;
        Ok(())
    }

    fn tenant_config(&mut self, tenant: &TenantId) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(ConfigQueries::tenant_config(self, tenant)?)
    }

    fn put_tenant_config(&mut self, tenant: &TenantId, bytes: &[u8]) -> Result<(), StorageError> {
        WriteTx::put_tenant_config(self, tenant, bytes)?;
        Ok(())
    }
}
