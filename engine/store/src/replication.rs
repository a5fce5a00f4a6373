//! What replication keeps beside the documents.
//!
//! Owns: the change sequence (every save gives its document the next number, so
//! "what changed since N" is one indexed range read), which device subscribes to
//! which documents, the Automerge sync state per (peer, document), a device's
//! outbox of documents with changes the server has not yet confirmed, and the
//! calls whose start limit is due.
//! Does not own: the sync protocol (the core) or when to call these (the hosts).

use callsync_core::{CallId, CustomerId, DeviceId, TenantId, Timestamp};
use rusqlite::{Connection, OptionalExtension, params};

use crate::{Read, Store, StoreError, WriteTx};

fn customer_ids(
    conn: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<CustomerId>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let ids = stmt
        .query_map(args, |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    ids.into_iter()
        .map(|id| CustomerId::new(id).map_err(|_| StoreError::Corrupt("customer id".to_owned())))
        .collect()
}

fn subscribe(
    conn: &Connection,
    device: &DeviceId,
    tenant: &TenantId,
    customer: &CustomerId,
) -> Result<bool, StoreError> {
    Ok(conn.prepare_cached("INSERT OR IGNORE INTO subscriptions (device_id, tenant_id, customer_id) VALUES (?1, ?2, ?3)")?.execute(params![device.as_str(), tenant.as_str(), customer.as_str()])? > 0)
}

fn set_sync_state(
    conn: &Connection,
    peer: &str,
    tenant: &TenantId,
    customer: &CustomerId,
    state: &[u8],
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO sync_states (peer, tenant_id, customer_id, state) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (peer, tenant_id, customer_id) DO UPDATE SET state = excluded.state",
    )?
    .execute(params![peer, tenant.as_str(), customer.as_str(), state])?;
    Ok(())
}

/// Replication reads, on the store or inside a write.
pub trait ReplicationQueries: Read {
    /// The highest change sequence number given so far (0 on an empty store).
    fn last_change_seq(&self) -> Result<u64, StoreError> {
        let seq: i64 = self
            .db()
            .prepare_cached("SELECT COALESCE(MAX(change_seq), 0) FROM documents")?
            .query_row([], |r| r.get(0))?;
        Ok(seq as u64)
    }

    /// The documents `device` subscribes to in `tenant` that changed after `seq`
    /// (all of them when `seq` is `None`).
    fn changed_for(
        &self,
        device: &DeviceId,
        tenant: &TenantId,
        seq: Option<u64>,
    ) -> Result<Vec<CustomerId>, StoreError> {
        customer_ids(
            self.db(),
            "SELECT d.customer_id FROM documents d
             JOIN subscriptions s
               ON s.tenant_id = d.tenant_id AND s.customer_id = d.customer_id AND s.device_id = ?1
             WHERE d.tenant_id = ?2 AND d.change_seq > ?3
             ORDER BY d.change_seq",
            params![
                device.as_str(),
                tenant.as_str(),
                seq.map_or(-1, |s| s as i64)
            ],
        )
    }

    /// Whether `device` subscribes to the document.
    fn is_subscribed(
        &self,
        device: &DeviceId,
        tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<bool, StoreError> {
        Ok(self
            .db()
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM subscriptions
             WHERE device_id = ?1 AND tenant_id = ?2 AND customer_id = ?3)",
            )?
            .query_row(
                params![device.as_str(), tenant.as_str(), customer.as_str()],
                |r| r.get(0),
            )?)
    }

    /// The devices subscribed to a document.
    fn subscribers(
        &self,
        tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<Vec<DeviceId>, StoreError> {
        let mut stmt = self.db().prepare_cached(
            "SELECT device_id FROM subscriptions WHERE tenant_id = ?1 AND customer_id = ?2",
        )?;
        let ids = stmt
            .query_map(params![tenant.as_str(), customer.as_str()], |r| {
                r.get::<_, String>(0)
            })?
            .collect::<Result<Vec<_>, _>>()?;
        ids.into_iter()
            .map(|id| DeviceId::new(id).map_err(|_| StoreError::Corrupt("device id".to_owned())))
            .collect()
    }

    /// Whether the document exists, and its assigned rep.
    fn owner_of(
        &self,
        tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .db()
            .prepare_cached(
                "SELECT owner FROM documents WHERE tenant_id = ?1 AND customer_id = ?2",
            )?
            .query_row(params![tenant.as_str(), customer.as_str()], |r| r.get(0))
            .optional()?)
    }

    /// The saved sync state with `peer` for a document.
    fn sync_state(
        &self,
        peer: &str,
        tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .db()
            .prepare_cached("SELECT state FROM sync_states WHERE peer = ?1 AND tenant_id = ?2 AND customer_id = ?3")?
            .query_row(
                params![peer, tenant.as_str(), customer.as_str()],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Documents with local changes the server has not confirmed.
    fn outbox(&self, tenant: &TenantId) -> Result<Vec<CustomerId>, StoreError> {
        customer_ids(
            self.db(),
            "SELECT customer_id FROM outbox WHERE tenant_id = ?1 ORDER BY customer_id",
            params![tenant.as_str()],
        )
    }

    /// The tenant's calls still awaiting *Start call* that were requested at or
    /// before `cutoff`: (customer, call), oldest first.
    fn awaiting_start_before(
        &self,
        tenant: &TenantId,
        cutoff: Timestamp,
    ) -> Result<Vec<(CustomerId, CallId)>, StoreError> {
        let mut stmt = self.db().prepare_cached(
            "SELECT customer_id, call_id FROM calls
             WHERE tenant_id = ?1 AND phase = 'awaiting-start' AND requested_at <= ?2
             ORDER BY requested_at",
        )?;
        let rows = stmt
            .query_map(params![tenant.as_str(), cutoff.as_millis()], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let corrupt = |_| StoreError::Corrupt("call index".to_owned());
        rows.into_iter()
            .map(|(c, call)| {
                Ok((
                    CustomerId::new(c).map_err(corrupt)?,
                    CallId::new(call).map_err(corrupt)?,
                ))
            })
            .collect()
    }

    /// When the tenant's oldest call still awaiting *Start call* was requested.
    fn oldest_awaiting_start(&self, tenant: &TenantId) -> Result<Option<Timestamp>, StoreError> {
        let at: Option<i64> = self
            .db()
            .prepare_cached(
                "SELECT MIN(requested_at) FROM calls
                 WHERE tenant_id = ?1 AND phase = 'awaiting-start'",
            )?
            .query_row(params![tenant.as_str()], |r| r.get(0))?;
        Ok(at.map(Timestamp::from_millis))
    }
}

impl<T: Read + ?Sized> ReplicationQueries for T {}

impl Store {
    /// Subscribes `device` to a document (its own small transaction). Returns
    /// whether it was new.
    pub fn subscribe(
        &mut self,
        device: &DeviceId,
        tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<bool, StoreError> {
        subscribe(&self.conn, device, tenant, customer)
    }

    /// Saves the sync state with `peer` for a document (its own small transaction).
    pub fn set_sync_state(
        &mut self,
        peer: &str,
        tenant: &TenantId,
        customer: &CustomerId,
        state: &[u8],
    ) -> Result<(), StoreError> {
        set_sync_state(&self.conn, peer, tenant, customer, state)
    }

    /// Takes a document out of the outbox once the server holds its changes.
    pub fn clear_outbox(
        &mut self,
        tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM outbox WHERE tenant_id = ?1 AND customer_id = ?2")?
            .execute(params![tenant.as_str(), customer.as_str()])?;
        Ok(())
    }
}

impl WriteTx<'_> {
    /// Subscribes `device` to a document. Returns whether it was new.
    pub fn subscribe(
        &mut self,
        device: &DeviceId,
        tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<bool, StoreError> {
        subscribe(self.writer()?, device, tenant, customer)
    }

    /// Saves the sync state with `peer` for a document.
    pub fn set_sync_state(
        &mut self,
        peer: &str,
        tenant: &TenantId,
        customer: &CustomerId,
        state: &[u8],
    ) -> Result<(), StoreError> {
        set_sync_state(self.writer()?, peer, tenant, customer, state)
    }

    /// Takes a document out of the outbox once the server holds its changes.
    pub fn clear_outbox(
        &mut self,
        tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<(), StoreError> {
        self.writer()?
            .prepare_cached("DELETE FROM outbox WHERE tenant_id = ?1 AND customer_id = ?2")?
            .execute(params![tenant.as_str(), customer.as_str()])?;
        Ok(())
    }

    /// Puts a document in the outbox: it has local changes to send.
    pub fn mark_outbox(
        &mut self,
        tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<(), StoreError> {
        self.writer()?
            .prepare_cached(
                "INSERT OR IGNORE INTO outbox (tenant_id, customer_id) VALUES (?1, ?2)",
            )?
            .execute(params![tenant.as_str(), customer.as_str()])?;
        Ok(())
    }
}
