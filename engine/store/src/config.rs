//! The tenant's configuration document and the recall list, in SQLite.
//!
//! Owns: storing a tenant's configuration document (one row per tenant, the whole
//! document: it is small and changes rarely) and reading the recall list from the
//! columns every customer save keeps current, and the call-performance figures
//! from the call index.

use callsync_core::wire::UserCallStats;
use callsync_core::{CustomerId, ResultTypeId, TenantId, Timestamp};
use rusqlite::{OptionalExtension, params};

use crate::{Read, StoreError, WriteTx};

/// A customer due for a call again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecallRow {
    /// The customer.
    pub id: CustomerId,
    /// Company name.
    pub company: String,
    /// Assigned rep.
    pub owner: String,
    /// When to call.
    pub recall_at: Timestamp,
}

/// Reads of the configuration and the recall list, through the store or inside a
/// write.
pub trait ConfigQueries: Read {
    /// The tenant's configuration document, if stored.
    fn tenant_config(&self, tenant: &TenantId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .db()
            .prepare_cached("SELECT bytes FROM tenant_configs WHERE tenant_id = ?1")?
            .query_row(params![tenant.as_str()], |r| r.get(0))
            .optional()?)
    }

    /// The tenant's customers with a recall (only `owner`'s, if given), soonest
    /// first, at most `limit`: filtered and cut in the query (the recall index),
    /// so a tenant with many recalls costs one page, not all of them.
    fn recalls(
        &self,
        tenant: &TenantId,
        owner: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RecallRow>, StoreError> {
        let mut stmt = self.db().prepare_cached(
            "SELECT customer_id, company, owner, recall_at FROM documents
             WHERE tenant_id = ?1 AND recall_at IS NOT NULL AND (?2 IS NULL OR owner = ?2)
             ORDER BY recall_at, customer_id LIMIT ?3",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![tenant.as_str(), owner, limit], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, company, owner, at) = row?;
            out.push(RecallRow {
                id: CustomerId::new(id).map_err(callsync_core::CoreError::from)?,
                company,
                owner,
                recall_at: Timestamp::from_millis(at),
            });
        }
        Ok(out)
    }

    /// Per user, the calls requested in `[from, to)` that took place (anything
    /// but waiting, cancelled or expired), those with a result, and those whose
    /// result is one of `reached`; users by id.
    fn call_stats(
        &self,
        tenant: &TenantId,
        from: Timestamp,
        to: Timestamp,
        reached: &[ResultTypeId],
    ) -> Result<Vec<UserCallStats>, StoreError> {
        let reached: Vec<&str> = reached.iter().map(ResultTypeId::as_str).collect();
        let reached = serde_json::to_string(&reached)
            .map_err(|e| StoreError::Corrupt(format!("result types: {e}")))?;
        let mut stmt = self.db().prepare_cached(
            "SELECT user_id, count(*), count(result_type),
                    coalesce(sum(result_type IN (SELECT value FROM json_each(?4))), 0)
             FROM calls
             WHERE tenant_id = ?1 AND requested_at >= ?2 AND requested_at < ?3
               AND phase NOT IN ('awaiting-start', 'cancelled', 'expired')
             GROUP BY user_id ORDER BY user_id",
        )?;
        let rows = stmt.query_map(
            params![tenant.as_str(), from.as_millis(), to.as_millis(), reached],
            |r| {
                Ok(UserCallStats {
                    user: r.get(0)?,
                    calls: r.get::<_, i64>(1)?.unsigned_abs(),
                    results: r.get::<_, i64>(2)?.unsigned_abs(),
                    reached: r.get::<_, i64>(3)?.unsigned_abs(),
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl<R: Read + ?Sized> ConfigQueries for R {}

impl WriteTx<'_> {
    /// Stores the tenant's configuration document, replacing what was stored.
    pub fn put_tenant_config(&mut self, tenant: &TenantId, bytes: &[u8]) -> Result<(), StoreError> {
        self.writer()?
            .prepare_cached(
                "INSERT INTO tenant_configs (tenant_id, bytes) VALUES (?1, ?2)
                 ON CONFLICT (tenant_id) DO UPDATE SET bytes = excluded.bytes",
            )?
            .execute(params![tenant.as_str(), bytes])?;
        Ok(())
    }

    /// Forgets the tenant's configuration document (a device whose copy diverged
    /// from the server's syncs it again from nothing).
    pub fn delete_tenant_config(&mut self, tenant: &TenantId) -> Result<(), StoreError> {
        self.writer()?
            .prepare_cached("DELETE FROM tenant_configs WHERE tenant_id = ?1")?
            .execute(params![tenant.as_str()])?;
        Ok(())
    }
}
