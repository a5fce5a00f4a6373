//! In-memory storage for the simulated network: the server's and each device's
//! "disk", implementing the sessions' storage traits with real transactions (a
//! working copy, committed whole or dropped), so a simulated crash loses exactly
//! what was not committed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use automerge::{ActorId, ChangeHash};
use callsync_core::wire::{Cursor, CustomerSummary, RecallSummary, Refusal, UserCallStats};
use callsync_core::{
    CallId, CustomerDoc, CustomerId, DeviceId, DeviceKind, OpenCall, Phase, ResultTypeId, TenantId,
    Timestamp, UserId,
};
use callsync_session::client::ClientStore;
use callsync_session::device::DeviceStore;
use callsync_session::storage::{HubStore, LoadedDoc, StorageError};

/// A document loaded from an in-memory disk, with the heads it was saved at.
#[derive(Debug, Clone)]
pub struct MemDoc {
    doc: CustomerDoc,
    saved_heads: Vec<ChangeHash>,
}

impl LoadedDoc for MemDoc {
    fn doc(&self) -> &CustomerDoc {
        &self.doc
    }

    fn doc_mut(&mut self) -> &mut CustomerDoc {
        &mut self.doc
    }
}

/// One stored document.
#[derive(Debug, Clone)]
struct Row {
    bytes: Vec<u8>,
    heads: Vec<ChangeHash>,
    owner: String,
    company: String,
    contact: String,
    status: String,
    recall_at: Option<Timestamp>,
    seq: u64,
}

fn sorted(mut heads: Vec<ChangeHash>) -> Vec<ChangeHash> {
    heads.sort();
    heads
}

fn refused(e: callsync_core::CoreError) -> StorageError {
    StorageError::Refused(Refusal::Core(e))
}

/// Documents as a store keeps them (shared by the server's and a device's disk).
///
/// Collections sit behind `Arc`s: a transaction's working copy shares them and
/// copies one only when it first writes to it (`Arc::make_mut`), so a batch that
/// changes one document does not copy every other.
#[derive(Debug, Clone, Default)]
struct Docs {
    rows: Arc<BTreeMap<CustomerId, Row>>,
    /// Calls awaiting a start: (customer, call) → requested at.
    awaiting: Arc<BTreeMap<(CustomerId, CallId), Timestamp>>,
    /// Calls that may block a new request: (customer, call) → the call's summary
    /// and its owner.
    open: Arc<BTreeMap<(CustomerId, CallId), (UserId, OpenCall)>>,
    /// Every call's customer.
    calls: Arc<BTreeMap<CallId, CustomerId>>,
    seq: u64,
}

impl Docs {
    /// Writes a document changed outside a session, as an incremental save after
    /// the heads stored for it.
    fn write_changed(&mut self, doc: &CustomerDoc) -> Result<(), StorageError> {
        let saved_heads = self
            .rows
            .get(doc.id())
            .map(|r| r.heads.clone())
            .unwrap_or_default();
        self.write(&mut MemDoc {
            doc: doc.clone(),
            saved_heads,
        })
    }

    fn load(&self, customer: &CustomerId, actor: ActorId) -> Result<Option<MemDoc>, StorageError> {
        let Some(row) = self.rows.get(customer) else {
            return Ok(None);
        };
        let doc = CustomerDoc::load(&row.bytes, actor)
            .map_err(|e| StorageError::Unreadable(e.to_string()))?;
        Ok(Some(MemDoc {
            doc,
            saved_heads: row.heads.clone(),
        }))
    }

    fn write(&mut self, doc: &mut MemDoc) -> Result<(), StorageError> {
        let heads = sorted(doc.doc.heads());
        if heads == doc.saved_heads && self.rows.contains_key(doc.doc.id()) {
            return Ok(());
        }
        let customer = doc.doc.customer().map_err(refused)?;
        self.seq += 1;
        let id = doc.doc.id().clone();
        let awaiting = Arc::make_mut(&mut self.awaiting);
        awaiting.retain(|(c, _), _| c != &id);
        for call in &customer.calls {
            if call.phase == Phase::AwaitingStart {
                awaiting.insert((id.clone(), call.call.clone()), call.origin_stamp.at);
            }
        }
        let open = Arc::make_mut(&mut self.open);
        open.retain(|(c, _), _| c != &id);
        let calls = Arc::make_mut(&mut self.calls);
        for call in &customer.calls {
            calls.insert(call.call.clone(), id.clone());
            if call.phase.is_open() {
                open.insert(
                    (id.clone(), call.call.clone()),
                    (call.owner().clone(), OpenCall::of(call)),
                );
            }
        }
        Arc::make_mut(&mut self.rows).insert(
            id,
            Row {
                bytes: doc.doc.save(),
                heads: heads.clone(),
                owner: customer.owner.to_string(),
                company: customer.company.clone(),
                contact: customer.contact.clone(),
                status: customer.status.as_str().to_owned(),
                recall_at: customer.recall_at,
                seq: self.seq,
            },
        );
        doc.saved_heads = heads;
        Ok(())
    }

    fn insert(&mut self, doc: &mut CustomerDoc) -> Result<MemDoc, StorageError> {
        if self.rows.contains_key(doc.id()) {
            return Err(StorageError::Refused(Refusal::CustomerExists {
                customer: doc.id().to_string(),
            }));
        }
        let mut loaded = MemDoc {
            doc: doc.clone(),
            saved_heads: Vec::new(),
        };
        self.write(&mut loaded)?;
        Ok(loaded)
    }

    fn is_current(&self, doc: &MemDoc) -> bool {
        self.rows
            .get(doc.doc.id())
            .is_some_and(|r| r.heads == doc.saved_heads)
    }
}

/// The server's disk: one tenant's documents and everything replication keeps.
#[derive(Debug, Clone, Default)]
pub struct ServerDisk {
    docs: Docs,
    subscriptions: Arc<BTreeSet<(DeviceId, CustomerId)>>,
    sync_states: Arc<BTreeMap<(DeviceId, CustomerId), Vec<u8>>>,
    actors: Arc<BTreeMap<ActorId, DeviceId>>,
    devices: Arc<BTreeMap<DeviceId, (DeviceKind, UserId)>>,
    config: Option<Vec<u8>>,
    /// Recordings' bytes marked for deletion from the blob store.
    blob_deletions: BTreeSet<String>,
    /// Commits so far (a crash test counts them).
    pub commits: u64,
}

impl ServerDisk {
    /// Registers a device of `user`, writing under `actor`.
    pub fn register(&mut self, device: DeviceId, kind: DeviceKind, user: UserId, actor: ActorId) {
        Arc::make_mut(&mut self.actors).insert(actor, device.clone());
        Arc::make_mut(&mut self.devices).insert(device, (kind, user));
    }

    /// Stores a new document and subscribes nobody to it.
    pub fn insert(&mut self, doc: &mut CustomerDoc) -> Result<(), StorageError> {
        self.docs.insert(doc).map(|_| ())
    }

    /// Subscribes a device to a document.
    pub fn subscribe(&mut self, device: DeviceId, customer: CustomerId) {
        Arc::make_mut(&mut self.subscriptions).insert((device, customer));
    }

    /// Recordings' bytes the hub marked for deletion from the blob store.
    pub fn blob_deletions(&self) -> &BTreeSet<String> {
        &self.blob_deletions
    }

    /// Every stored document's id.
    pub fn customer_ids(&self) -> Vec<CustomerId> {
        self.docs.rows.keys().cloned().collect()
    }

    /// The stored document, loaded afresh.
    pub fn document(&self, customer: &CustomerId) -> Option<CustomerDoc> {
        self.docs
            .load(customer, ActorId::from(b"reader".as_slice()))
            .ok()
            .flatten()
            .map(|d| d.doc)
    }

    /// Writes a document changed outside the hub (the server's own write).
    pub fn save(&mut self, doc: &mut CustomerDoc) -> Result<(), StorageError> {
        self.docs.write_changed(doc)
    }

    /// A transaction over this disk.
    pub fn begin(&mut self) -> ServerTx<'_> {
        ServerTx {
            work: self.clone(),
            disk: self,
            finished: false,
            crashing: false,
        }
    }
}

/// A write on the server's disk: a working copy, committed whole.
pub struct ServerTx<'a> {
    disk: &'a mut ServerDisk,
    work: ServerDisk,
    finished: bool,
    crashing: bool,
}

impl ServerTx<'_> {
    /// Makes the work durable.
    pub fn commit(mut self) {
        // Only a crash set up by `crash_at_commit` fails, and it keeps nothing.
        let _ = HubStore::commit(&mut self);
    }

    /// The server dies as it commits: nothing of the work is kept.
    pub fn crash_at_commit(&mut self) {
        self.crashing = true;
    }
}

impl HubStore for ServerTx<'_> {
    type Doc = MemDoc;

    fn commit(&mut self) -> Result<(), StorageError> {
        if self.crashing {
            return Err(StorageError::Failed(
                "the server died before committing".to_owned(),
            ));
        }
        if !self.finished {
            self.finished = true;
            self.work.commits += 1;
            *self.disk = std::mem::take(&mut self.work);
        }
        Ok(())
    }

    fn load(
        &mut self,
        _tenant: &TenantId,
        customer: &CustomerId,
        actor: ActorId,
    ) -> Result<MemDoc, StorageError> {
        self.work
            .docs
            .load(customer, actor)?
            .ok_or(StorageError::UnknownCustomer)
    }

    fn save(&mut self, doc: &mut MemDoc, max_bytes: Option<u64>) -> Result<(), StorageError> {
        if let Some(max) = max_bytes
            && doc.doc.automerge_mut().save_nocompress().len() as u64 > max
        {
            return Err(StorageError::Refused(Refusal::DocumentTooLarge {
                limit: max,
            }));
        }
        self.work.docs.write(doc)
    }

    fn insert(&mut self, doc: &mut CustomerDoc) -> Result<MemDoc, StorageError> {
        self.work.docs.insert(doc)
    }

    fn owner_of(
        &mut self,
        _tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<Option<String>, StorageError> {
        Ok(self.work.docs.rows.get(customer).map(|r| r.owner.clone()))
    }

    fn assignee_visibility(&mut self, _tenant: &TenantId) -> Result<bool, StorageError> {
        Ok(false)
    }

    fn customer_of_call(
        &mut self,
        _tenant: &TenantId,
        call: &CallId,
    ) -> Result<Option<CustomerId>, StorageError> {
        Ok(self.work.docs.calls.get(call).cloned())
    }

    fn queue_blob_deletion(
        &mut self,
        _tenant: &TenantId,
        sha256: &str,
    ) -> Result<(), StorageError> {
        self.work.blob_deletions.insert(sha256.to_owned());
        Ok(())
    }

    fn customer_count(&mut self, _tenant: &TenantId) -> Result<u64, StorageError> {
        Ok(self.work.docs.rows.len() as u64)
    }

    fn customers_page(
        &mut self,
        _tenant: &TenantId,
        after: Option<&CustomerId>,
        owner: Option<&str>,
        text: Option<&str>,
        limit: u32,
    ) -> Result<Vec<CustomerSummary>, StorageError> {
        let text = text.map(str::to_ascii_lowercase);
        let matches = |id: &CustomerId, r: &Row| {
            text.as_deref().is_none_or(|t| {
                [r.company.as_str(), r.contact.as_str(), id.as_str()]
                    .iter()
                    .any(|f| f.to_ascii_lowercase().contains(t))
            })
        };
        Ok(self
            .work
            .docs
            .rows
            .iter()
            .filter(|(id, _)| after.is_none_or(|a| *id > a))
            .filter(|(_, r)| owner.is_none_or(|o| r.owner == o))
            .filter(|(id, r)| matches(id, r))
            .take(limit as usize)
            .map(|(id, r)| CustomerSummary {
                id: id.clone(),
                company: r.company.clone(),
                contact: r.contact.clone(),
                owner: r.owner.clone(),
                status: r.status.clone(),
            })
            .collect())
    }

    fn call_stats(
        &mut self,
        _tenant: &TenantId,
        from: Timestamp,
        to: Timestamp,
        reached: &[ResultTypeId],
    ) -> Result<Vec<UserCallStats>, StorageError> {
        // The simulation has no call index: every stored document is read.
        let mut per_user: std::collections::BTreeMap<String, UserCallStats> = Default::default();
        for row in self.work.docs.rows.values() {
            let doc = CustomerDoc::load(&row.bytes, ActorId::random()).map_err(refused)?;
            for call in doc.customer().map_err(refused)?.calls {
                let at = call.origin_stamp.at;
                if at < from || at >= to || !call.took_place() {
                    continue;
                }
                let user = call.owner().to_string();
                let stats = per_user.entry(user.clone()).or_insert(UserCallStats {
                    user,
                    calls: 0,
                    results: 0,
                    reached: 0,
                });
                stats.calls += 1;
                if let Some(result) = call.result_in_force() {
                    stats.results += 1;
                    stats.reached += u64::from(reached.contains(&result.fields.result_type));
                }
            }
        }
        Ok(per_user.into_values().collect())
    }

    fn recalls(
        &mut self,
        _tenant: &TenantId,
        owner: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RecallSummary>, StorageError> {
        let mut recalls: Vec<RecallSummary> = self
            .work
            .docs
            .rows
            .iter()
            .filter(|(_, r)| owner.is_none_or(|o| r.owner == o))
            .filter_map(|(id, r)| {
                r.recall_at.map(|at| RecallSummary {
                    id: id.clone(),
                    company: r.company.clone(),
                    owner: r.owner.clone(),
                    recall_at: at,
                })
            })
            .collect();
        recalls.sort_by(|a, b| (a.recall_at, &a.id).cmp(&(b.recall_at, &b.id)));
        recalls.truncate(limit);
        Ok(recalls)
    }

    fn last_change_seq(&mut self) -> Result<u64, StorageError> {
        Ok(self.work.docs.seq)
    }

    fn changed_for(
        &mut self,
        device: &DeviceId,
        _tenant: &TenantId,
        since: Option<u64>,
    ) -> Result<Vec<CustomerId>, StorageError> {
        Ok(self
            .work
            .subscriptions
            .iter()
            .filter(|(d, _)| d == device)
            .filter(|(_, c)| {
                self.work
                    .docs
                    .rows
                    .get(c)
                    .is_some_and(|r| since.is_none_or(|s| r.seq > s))
            })
            .map(|(_, c)| c.clone())
            .collect())
    }

    fn subscribe(
        &mut self,
        device: &DeviceId,
        _tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<(), StorageError> {
        if !self
            .work
            .subscriptions
            .contains(&(device.clone(), customer.clone()))
        {
            Arc::make_mut(&mut self.work.subscriptions).insert((device.clone(), customer.clone()));
        }
        Ok(())
    }

    fn subscribers(
        &mut self,
        _tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<Vec<DeviceId>, StorageError> {
        Ok(self
            .work
            .subscriptions
            .iter()
            .filter(|(_, c)| c == customer)
            .map(|(d, _)| d.clone())
            .collect())
    }

    fn sync_state(
        &mut self,
        device: &DeviceId,
        _tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .work
            .sync_states
            .get(&(device.clone(), customer.clone()))
            .cloned())
    }

    fn set_sync_state(
        &mut self,
        device: &DeviceId,
        _tenant: &TenantId,
        customer: &CustomerId,
        state: &[u8],
    ) -> Result<(), StorageError> {
        Arc::make_mut(&mut self.work.sync_states)
            .insert((device.clone(), customer.clone()), state.to_vec());
        Ok(())
    }

    fn actor_is_bound_to(
        &mut self,
        actor: &ActorId,
        device: &DeviceId,
    ) -> Result<bool, StorageError> {
        Ok(self.work.actors.get(actor) == Some(device))
    }

    fn is_phone_of(&mut self, device: &DeviceId, user: &UserId) -> Result<bool, StorageError> {
        Ok(matches!(self.work.devices.get(device), Some((DeviceKind::Phone, u)) if u == user))
    }

    fn devices_of(&mut self, user: &UserId) -> Result<Vec<(DeviceId, DeviceKind)>, StorageError> {
        Ok(self
            .work
            .devices
            .iter()
            .filter(|(_, (_, u))| u == user)
            .map(|(d, (k, _))| (d.clone(), *k))
            .collect())
    }

    fn awaiting_start_before(
        &mut self,
        _tenant: &TenantId,
        cutoff: Timestamp,
    ) -> Result<Vec<(CustomerId, CallId)>, StorageError> {
        let mut due: Vec<(Timestamp, CustomerId, CallId)> = self
            .work
            .docs
            .awaiting
            .iter()
            .filter(|(_, at)| **at <= cutoff)
            .map(|((c, call), at)| (*at, c.clone(), call.clone()))
            .collect();
        due.sort();
        Ok(due.into_iter().map(|(_, c, call)| (c, call)).collect())
    }

    fn oldest_awaiting_start(
        &mut self,
        _tenant: &TenantId,
    ) -> Result<Option<Timestamp>, StorageError> {
        Ok(self.work.docs.awaiting.values().min().copied())
    }

    fn tenant_config(&mut self, _tenant: &TenantId) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.work.config.clone())
    }

    fn put_tenant_config(&mut self, _tenant: &TenantId, bytes: &[u8]) -> Result<(), StorageError> {
        self.work.config = Some(bytes.to_vec());
        Ok(())
    }
}

/// A device's disk: its replica, the sync states with the server, the outbox,
/// the cursor, the configuration.
#[derive(Debug, Clone, Default)]
pub struct DeviceDisk {
    docs: Docs,
    sync_states: Arc<BTreeMap<CustomerId, Vec<u8>>>,
    outbox: BTreeSet<CustomerId>,
    cursor: Option<Cursor>,
    config: Option<Vec<u8>>,
    settings: BTreeMap<String, Vec<u8>>,
    /// Writes fail from now on (a full disk, a quota): nothing is committed.
    failing: bool,
}

impl DeviceDisk {
    /// Makes every later commit fail (or work again).
    pub fn set_failing(&mut self, failing: bool) {
        self.failing = failing;
    }

    /// Whether commits fail.
    pub fn is_failing(&self) -> bool {
        self.failing
    }

    /// A saved setting.
    pub fn setting(&self, key: &str) -> Option<&[u8]> {
        self.settings.get(key).map(Vec::as_slice)
    }

    /// The stored document, loaded afresh, writing as `actor`.
    pub fn document(&self, customer: &CustomerId, actor: ActorId) -> Option<CustomerDoc> {
        self.docs
            .load(customer, actor)
            .ok()
            .flatten()
            .map(|d| d.doc)
    }

    /// Saves a document changed by a local command and puts it in the outbox.
    pub fn save_local(&mut self, doc: &mut CustomerDoc) -> Result<(), StorageError> {
        self.docs.write_changed(doc)?;
        self.outbox.insert(doc.id().clone());
        Ok(())
    }

    /// Documents with local changes the server has not confirmed.
    pub fn outbox(&self) -> &BTreeSet<CustomerId> {
        &self.outbox
    }

    /// A transaction over this disk.
    pub fn begin(&mut self) -> DeviceTx<'_> {
        DeviceTx {
            work: self.clone(),
            disk: self,
        }
    }
}

/// A write on a device's disk: a working copy, committed whole.
pub struct DeviceTx<'a> {
    disk: &'a mut DeviceDisk,
    work: DeviceDisk,
}

impl DeviceTx<'_> {
    /// Makes the work durable; fails (keeping nothing) on a failing disk.
    pub fn commit(self) -> Result<(), StorageError> {
        if self.disk.failing {
            return Err(StorageError::Failed("the disk is full".to_owned()));
        }
        *self.disk = self.work;
        Ok(())
    }
}

impl DeviceStore for DeviceTx<'_> {
    fn setting(&mut self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.work.settings.get(key).cloned())
    }

    fn set_setting(&mut self, key: &str, value: Option<&[u8]>) -> Result<(), StorageError> {
        match value {
            Some(v) => self.work.settings.insert(key.to_owned(), v.to_vec()),
            None => self.work.settings.remove(key),
        };
        Ok(())
    }

    fn save_local(&mut self, doc: &mut MemDoc) -> Result<(), StorageError> {
        self.work.docs.write(doc)?;
        self.work.outbox.insert(doc.doc.id().clone());
        Ok(())
    }

    fn open_calls(
        &mut self,
        _tenant: &TenantId,
        user: &UserId,
        except: &CustomerId,
    ) -> Result<Vec<OpenCall>, StorageError> {
        Ok(self
            .work
            .docs
            .open
            .iter()
            .filter(|((customer, _), (owner, _))| customer != except && owner == user)
            .map(|(_, (_, call))| call.clone())
            .collect())
    }

    fn customer_of_call(
        &mut self,
        _tenant: &TenantId,
        call: &CallId,
    ) -> Result<Option<CustomerId>, StorageError> {
        Ok(self.work.docs.calls.get(call).cloned())
    }
}

impl ClientStore for DeviceTx<'_> {
    type Doc = MemDoc;

    fn cursor(&mut self) -> Result<Option<Cursor>, StorageError> {
        Ok(self.work.cursor.clone())
    }

    fn set_cursor(&mut self, cursor: &Cursor) -> Result<(), StorageError> {
        self.work.cursor = Some(cursor.clone());
        Ok(())
    }

    fn load(
        &mut self,
        _tenant: &TenantId,
        customer: &CustomerId,
        actor: ActorId,
    ) -> Result<Option<MemDoc>, StorageError> {
        self.work.docs.load(customer, actor)
    }

    fn is_current(&mut self, doc: &MemDoc) -> Result<bool, StorageError> {
        Ok(self.work.docs.is_current(doc))
    }

    fn save(&mut self, doc: &mut MemDoc) -> Result<(), StorageError> {
        self.work.docs.write(doc)
    }

    fn insert(&mut self, doc: &mut CustomerDoc) -> Result<MemDoc, StorageError> {
        self.work.docs.insert(doc)
    }

    fn sync_state(
        &mut self,
        _tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.work.sync_states.get(customer).cloned())
    }

    fn set_sync_state(
        &mut self,
        _tenant: &TenantId,
        customer: &CustomerId,
        state: &[u8],
    ) -> Result<(), StorageError> {
        Arc::make_mut(&mut self.work.sync_states).insert(customer.clone(), state.to_vec());
        Ok(())
    }

    fn outbox(&mut self, _tenant: &TenantId) -> Result<Vec<CustomerId>, StorageError> {
        Ok(self.work.outbox.iter().cloned().collect())
    }

    fn clear_outbox(
        &mut self,
        _tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<(), StorageError> {
        self.work.outbox.remove(customer);
        Ok(())
    }

    fn forget(&mut self, _tenant: &TenantId, customer: &CustomerId) -> Result<(), StorageError> {
        Arc::make_mut(&mut self.work.docs.rows).remove(customer);
        Arc::make_mut(&mut self.work.docs.awaiting).retain(|(c, _), _| c != customer);
        Arc::make_mut(&mut self.work.sync_states).remove(customer);
        self.work.outbox.remove(customer);
        Ok(())
    }

    fn config(&mut self, _tenant: &TenantId) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.work.config.clone())
    }

    fn put_config(&mut self, _tenant: &TenantId, bytes: &[u8]) -> Result<(), StorageError> {
        self.work.config = Some(bytes.to_vec());
        Ok(())
    }

    fn delete_config(&mut self, _tenant: &TenantId) -> Result<(), StorageError> {
        self.work.config = None;
        Ok(())
    }
}
