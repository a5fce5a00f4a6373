//! A device's storage for its client session ([`ClientStore`]) over one SQLite
//! write transaction: its replica of the documents, the sync states with the
//! server, the outbox, the catch-up cursor and the configuration document.

use automerge::ActorId;
use callsync_core::wire::Cursor;
use callsync_core::{CallId, OpenCall, UserId};
use callsync_core::{CustomerDoc, CustomerId, TenantId};
use callsync_session::client::ClientStore;
use callsync_session::device::DeviceStore;
use callsync_session::storage::StorageError;

use crate::{ConfigQueries, ReplicationQueries, StoreError, StoredDoc, WriteTx, is_current};

/// Where a device keeps its catch-up cursor (a setting, as JSON).
pub const CURSOR_KEY: &str = "cursor";
/// The sync-state key of the one peer a device syncs with.
pub const SERVER_PEER: &str = "server";

impl ClientStore for WriteTx<'_> {
    type Doc = StoredDoc;

    fn cursor(&mut self) -> Result<Option<Cursor>, StorageError> {
        // An unreadable cursor is as good as none: the server lists everything.
        Ok(self
            .setting(CURSOR_KEY)?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    fn set_cursor(&mut self, cursor: &Cursor) -> Result<(), StorageError> {
        let json = serde_json::to_vec(cursor)
            .map_err(|e| StorageError::Unreadable(format!("cursor: {e}")))?;
        self.set_setting(CURSOR_KEY, &json)?;
        Ok(())
    }

    fn load(
        &mut self,
        tenant: &TenantId,
        customer: &CustomerId,
        actor: ActorId,
    ) -> Result<Option<StoredDoc>, StorageError> {
        match WriteTx::load(self, tenant, customer, actor) {
            Ok(doc) => Ok(Some(doc)),
            Err(StoreError::UnknownCustomer { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn is_current(&mut self, doc: &StoredDoc) -> Result<bool, StorageError> {
        Ok(is_current(self, doc)?)
    }

    fn save(&mut self, doc: &mut StoredDoc) -> Result<(), StorageError> {
        WriteTx::save(self, doc)?;
        Ok(())
    }

    fn insert(&mut self, doc: &mut CustomerDoc) -> Result<StoredDoc, StorageError> {
        Ok(WriteTx::insert(self, doc)?)
    }

    fn sync_state(
        &mut self,
        tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(ReplicationQueries::sync_state(
            self,
            SERVER_PEER,
            tenant,
            customer,
        )?)
    }

    fn set_sync_state(
        &mut self,
        tenant: &TenantId,
        customer: &CustomerId,
        state: &[u8],
    ) -> Result<(), StorageError> {
        WriteTx::set_sync_state(self, SERVER_PEER, tenant, customer, state)?;
        Ok(())
    }

    fn outbox(&mut self, tenant: &TenantId) -> Result<Vec<CustomerId>, StorageError> {
        Ok(ReplicationQueries::outbox(self, tenant)?)
    }

    fn clear_outbox(
        &mut self,
        tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<(), StorageError> {
        WriteTx::clear_outbox(self, tenant, customer)?;
        Ok(())
    }

    fn forget(&mut self, tenant: &TenantId, customer: &CustomerId) -> Result<(), StorageError> {
        self.forget_document(tenant, customer)?;
        Ok(())
    }

    fn config(&mut self, tenant: &TenantId) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(ConfigQueries::tenant_config(self, tenant)?)
    }

    fn put_config(&mut self, tenant: &TenantId, bytes: &[u8]) -> Result<(), StorageError> {
        self.put_tenant_config(tenant, bytes)?;
        Ok(())
    }

    fn delete_config(&mut self, tenant: &TenantId) -> Result<(), StorageError> {
        self.delete_tenant_config(tenant)?;
        Ok(())
    }
}

impl DeviceStore for WriteTx<'_> {
    fn setting(&mut self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(WriteTx::setting(self, key)?)
    }

    fn set_setting(&mut self, key: &str, value: Option<&[u8]>) -> Result<(), StorageError> {
        match value {
            Some(value) => WriteTx::set_setting(self, key, value)?,
            None => self.delete_setting(key)?,
        }
        Ok(())
    }

    fn save_local(&mut self, doc: &mut StoredDoc) -> Result<(), StorageError> {
        let tenant = doc.doc.tenant().clone();
        let customer = doc.doc.id().clone();
        WriteTx::save(self, doc)?;
        self.mark_outbox(&tenant, &customer)?;
        Ok(())
    }

    fn open_calls(
        &mut self,
        tenant: &TenantId,
        user: &UserId,
        except: &CustomerId,
    ) -> Result<Vec<OpenCall>, StorageError> {
        Ok(self.open_calls_of(tenant, user, except)?)
    }

    fn customer_of_call(
        &mut self,
        tenant: &TenantId,
        call: &CallId,
    ) -> Result<Option<CustomerId>, StorageError> {
        Ok(WriteTx::known_customer_of_call(self, tenant, call)?)
    }
}
