//! The page's storage as the client session sees it: a working set in memory,
//! mirrored to IndexedDB by the page.
//!
//! Owns: the key layout (one IndexedDB object store, keys below), the rule that
//! a call's writes stay pending until the call succeeds ([`PageStore::commit`])
//! or are dropped ([`PageStore::rollback`]), and the queue of committed writes
//! the page persists before it releases the call's messages
//! ([`PageStore::take_flush`]). That ordering is what makes "acknowledged" true:
//! nothing reaches the server, and nothing is shown as saved, before IndexedDB
//! holds it.
//! Does not own: IndexedDB itself (the page's TypeScript), or what the records
//! mean (the session and the replica).
//!
//! Keys: `doc:<customer>` (the document, whole), `sync:<customer>` (the sync
//! state with the server), `outbox:<customer>` (present while the server lacks a
//! local change), `cursor`, `config` (the tenant configuration document),
//! `customers` (the last customer list, JSON, for offline use), `setting:<key>`
//! (the device session's identity, clock and unsent ledger).
//!
//! Writes reach IndexedDB in numbered batches ([`PageStore::take_flush`]); the
//! page reports each as written or failed ([`PageStore::written`]), and a
//! failure puts the working set back to what IndexedDB holds.

use std::collections::{BTreeMap, HashMap};

use automerge::ActorId;
use callsync_core::wire::Cursor;
use callsync_core::{CallId, CustomerDoc, CustomerId, OpenCall, TenantId, UserId};
use callsync_session::client::ClientStore;
use callsync_session::device::DeviceStore;
use callsync_session::storage::{LoadedDoc, StorageError};

/// A document as the session holds it, with the generation it was loaded at.
#[derive(Debug)]
pub struct PageDoc {
    doc: CustomerDoc,
    generation: u64,
}

impl LoadedDoc for PageDoc {
    fn doc(&self) -> &CustomerDoc {
        &self.doc
    }

    fn doc_mut(&mut self) -> &mut CustomerDoc {
        &mut self.doc
    }
}

/// The working set: what IndexedDB holds, plus the current call's pending writes.
#[derive(Debug, Default)]
pub struct PageStore {
    records: BTreeMap<String, Vec<u8>>,
    /// The current call's writes (`None`: delete), read through.
    pending: BTreeMap<String, Option<Vec<u8>>>,
    /// Committed writes the page has not been handed yet, in order.
    flush: BTreeMap<String, Option<Vec<u8>>>,
    /// What IndexedDB held before each batch handed to the page and not yet
    /// confirmed written, by ticket: put back if the write fails.
    unconfirmed: BTreeMap<u64, BTreeMap<String, Option<Vec<u8>>>>,
    /// Before-images of the writes in `flush`.
    undo: BTreeMap<String, Option<Vec<u8>>>,
    /// The last batch ticket handed out, and the last one confirmed written.
    handed: u64,
    written: u64,
    /// Bumped on every save of a document, so a copy the session kept can be
    /// checked against the page's own writes.
    generations: HashMap<CustomerId, u64>,
    next_generation: u64,
}

pub(crate) fn doc_key(customer: &CustomerId) -> String {
    format!("doc:{customer}")
}
fn sync_key(customer: &CustomerId) -> String {
    format!("sync:{customer}")
}
fn outbox_key(customer: &CustomerId) -> String {
    format!("outbox:{customer}")
}
const CURSOR_KEY: &str = "cursor";
/// The tenant configuration document.
pub(crate) const CONFIG_KEY: &str = "config";
/// The last customer list, JSON.
pub(crate) const CUSTOMERS_KEY: &str = "customers";

fn unreadable(e: impl std::fmt::Display) -> StorageError {
    StorageError::Unreadable(e.to_string())
}

impl PageStore {
    /// Puts back a record the page read from IndexedDB at start-up.
    pub fn restore(&mut self, key: String, value: Vec<u8>) {
        self.records.insert(key, value);
    }

    /// A record, as the current call sees it.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        match self.pending.get(key) {
            Some(value) => value.as_deref(),
            None => self.records.get(key).map(Vec::as_slice),
        }
    }

    /// Writes a record in the current call.
    pub fn put(&mut self, key: String, value: Vec<u8>) {
        self.pending.insert(key, Some(value));
    }

    fn delete(&mut self, key: String) {
        self.pending.insert(key, None);
    }

    /// Keys with `prefix`, as the current call sees them.
    fn keys_with(&self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .records
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .filter(|k| !matches!(self.pending.get(k), Some(None)))
            .collect();
        for (key, value) in self
            .pending
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
        {
            if value.is_some() && !self.records.contains_key(key) {
                keys.push(key.clone());
            }
        }
        keys.sort();
        keys
    }

    /// The current call succeeded: its writes become the working set and are
    /// queued for IndexedDB. Returns the documents it wrote (for the screens).
    pub fn commit(&mut self) -> Vec<CustomerId> {
        let mut written = Vec::new();
        for (key, value) in std::mem::take(&mut self.pending) {
            if let Some(customer) = key.strip_prefix("doc:")
                && let Ok(customer) = CustomerId::new(customer)
            {
                written.push(customer);
            }
            let before = match &value {
                Some(bytes) => self.records.insert(key.clone(), bytes.clone()),
                None => self.records.remove(&key),
            };
            self.undo.entry(key.clone()).or_insert(before);
            self.flush.insert(key, value);
        }
        written
    }

    /// The current call failed: its writes are dropped. Documents it saved are
    /// marked changed, so no copy kept from the failed call is trusted.
    pub fn rollback(&mut self) {
        for key in std::mem::take(&mut self.pending).into_keys() {
            if let Some(customer) = key.strip_prefix("doc:")
                && let Ok(customer) = CustomerId::new(customer)
            {
                self.next_generation += 1;
                self.generations.insert(customer, self.next_generation);
            }
        }
    }

    /// The committed writes IndexedDB does not hold yet (`None`: delete), as one
    /// batch with its ticket (none if nothing is waiting); the page writes them
    /// in one transaction and reports the ticket to [`Self::written`].
    pub fn take_flush(&mut self) -> Option<Batch> {
        if self.flush.is_empty() {
            return None;
        }
        self.handed += 1;
        self.unconfirmed
            .insert(self.handed, std::mem::take(&mut self.undo));
        Some((
            self.handed,
            std::mem::take(&mut self.flush).into_iter().collect(),
        ))
    }

    /// The ticket every write so far belongs to: what was committed goes out in
    /// the next batch (the next ticket), or went out already.
    pub fn ticket(&self) -> u64 {
        if self.flush.is_empty() {
            self.handed
        } else {
            self.handed + 1
        }
    }

    /// The last ticket IndexedDB confirmed written (all before it too).
    pub fn written_up_to(&self) -> u64 {
        self.written
    }

    /// IndexedDB wrote batch `ticket` (`ok`), or failed to: then that batch and
    /// every later one are undone in the working set, which again equals what
    /// IndexedDB holds; the documents they touched are marked changed. Returns
    /// whether the report was news.
    pub fn written(&mut self, ticket: u64, ok: bool) -> bool {
        if ticket <= self.written || !self.unconfirmed.contains_key(&ticket) {
            return false;
        }
        if ok {
            self.written = ticket;
            self.unconfirmed.retain(|t, _| *t > ticket);
            return true;
        }
        let mut undone: Vec<_> = self.unconfirmed.split_off(&ticket).into_iter().collect();
        // The writes not handed out yet go too: they came after the failure.
        undone.push((u64::MAX, std::mem::take(&mut self.undo)));
        self.flush.clear();
        for (_, batch) in undone.into_iter().rev() {
            for (key, before) in batch {
                if let Some(customer) = key.strip_prefix("doc:")
                    && let Ok(customer) = CustomerId::new(customer)
                {
                    self.bump(&customer);
                }
                match before {
                    Some(bytes) => self.records.insert(key, bytes),
                    None => self.records.remove(&key),
                };
            }
        }
        // Every ticket handed out so far is settled (written, or undone): steps
        // queued from now on wait only for batches still to come.
        self.handed = self.handed.max(ticket);
        self.written = self.handed;
        true
    }

    /// Documents held, by id.
    pub fn customers_held(&self) -> Vec<CustomerId> {
        self.keys_with("doc:")
            .iter()
            .filter_map(|k| k.strip_prefix("doc:"))
            .filter_map(|id| CustomerId::new(id).ok())
            .collect()
    }

    /// A document, parsed, to act on as `actor`.
    pub fn load_doc(
        &self,
        customer: &CustomerId,
        actor: ActorId,
    ) -> Result<Option<CustomerDoc>, StorageError> {
        self.get(&doc_key(customer))
            .map(|bytes| CustomerDoc::load(bytes, actor).map_err(unreadable))
            .transpose()
    }

    fn bump(&mut self, customer: &CustomerId) -> u64 {
        self.next_generation += 1;
        self.generations
            .insert(customer.clone(), self.next_generation);
        self.next_generation
    }

    fn generation(&self, customer: &CustomerId) -> u64 {
        self.generations.get(customer).copied().unwrap_or(0)
    }
}

/// A batch of writes for IndexedDB: its ticket and records (`None`: delete).
pub type Batch = (u64, Vec<(String, Option<Vec<u8>>)>);

fn setting_key(key: &str) -> String {
    format!("setting:{key}")
}

impl DeviceStore for PageStore {
    fn setting(&mut self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.get(&setting_key(key)).map(<[u8]>::to_vec))
    }

    fn set_setting(&mut self, key: &str, value: Option<&[u8]>) -> Result<(), StorageError> {
        match value {
            Some(v) => self.put(setting_key(key), v.to_vec()),
            None => self.delete(setting_key(key)),
        }
        Ok(())
    }

    fn save_local(&mut self, doc: &mut PageDoc) -> Result<(), StorageError> {
        self.save(doc)?;
        self.put(outbox_key(doc.doc.id()), Vec::new());
        Ok(())
    }

    fn open_calls(
        &mut self,
        _tenant: &TenantId,
        user: &UserId,
        except: &CustomerId,
    ) -> Result<Vec<OpenCall>, StorageError> {
        // A page holds the few customers its rep opened: a scan is cheap.
        let mut open = Vec::new();
        for held in self.customers_held() {
            if &held == except {
                continue;
            }
            if let Some(doc) = self.load_doc(&held, ActorId::random())?
                && let Ok(customer) = doc.customer()
            {
                open.extend(callsync_core::rules::open_calls_of(&customer, user));
            }
        }
        Ok(open)
    }

    fn customer_of_call(
        &mut self,
        _tenant: &TenantId,
        call: &CallId,
    ) -> Result<Option<CustomerId>, StorageError> {
        for held in self.customers_held() {
            if let Some(doc) = self.load_doc(&held, ActorId::random())?
                && doc.call(call).is_some()
            {
                return Ok(Some(held));
            }
        }
        Ok(None)
    }
}

impl ClientStore for PageStore {
    type Doc = PageDoc;

    fn cursor(&mut self) -> Result<Option<Cursor>, StorageError> {
        self.get(CURSOR_KEY)
            .map(|bytes| serde_json::from_slice(bytes).map_err(unreadable))
            .transpose()
    }

    fn set_cursor(&mut self, cursor: &Cursor) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(cursor).map_err(|e| StorageError::Failed(e.to_string()))?;
        self.put(CURSOR_KEY.to_owned(), bytes);
        Ok(())
    }

    fn load(
        &mut self,
        _tenant: &TenantId,
        customer: &CustomerId,
        actor: ActorId,
    ) -> Result<Option<PageDoc>, StorageError> {
        Ok(self.load_doc(customer, actor)?.map(|doc| PageDoc {
            doc,
            generation: self.generation(customer),
        }))
    }

    fn is_current(&mut self, doc: &PageDoc) -> Result<bool, StorageError> {
        Ok(doc.generation == self.generation(doc.doc.id()))
    }

    fn save(&mut self, doc: &mut PageDoc) -> Result<(), StorageError> {
        let customer = doc.doc.id().clone();
        self.put(doc_key(&customer), doc.doc.save());
        doc.generation = self.bump(&customer);
        Ok(())
    }

    fn insert(&mut self, doc: &mut CustomerDoc) -> Result<PageDoc, StorageError> {
        let customer = doc.id().clone();
        let bytes = doc.save();
        let actor = doc.automerge().get_actor().clone();
        self.put(doc_key(&customer), bytes.clone());
        let generation = self.bump(&customer);
        Ok(PageDoc {
            doc: CustomerDoc::load(&bytes, actor).map_err(unreadable)?,
            generation,
        })
    }

    fn sync_state(
        &mut self,
        _tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.get(&sync_key(customer)).map(<[u8]>::to_vec))
    }

    fn set_sync_state(
        &mut self,
        _tenant: &TenantId,
        customer: &CustomerId,
        state: &[u8],
    ) -> Result<(), StorageError> {
        self.put(sync_key(customer), state.to_vec());
        Ok(())
    }

    fn outbox(&mut self, _tenant: &TenantId) -> Result<Vec<CustomerId>, StorageError> {
        Ok(self
            .keys_with("outbox:")
            .iter()
            .filter_map(|k| k.strip_prefix("outbox:"))
            .filter_map(|id| CustomerId::new(id).ok())
            .collect())
    }

    fn clear_outbox(
        &mut self,
        _tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<(), StorageError> {
        self.delete(outbox_key(customer));
        Ok(())
    }

    fn forget(&mut self, _tenant: &TenantId, customer: &CustomerId) -> Result<(), StorageError> {
        self.delete(doc_key(customer));
        self.delete(sync_key(customer));
        self.delete(outbox_key(customer));
        self.bump(customer);
        Ok(())
    }

    fn config(&mut self, _tenant: &TenantId) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.get(CONFIG_KEY).map(<[u8]>::to_vec))
    }

    fn put_config(&mut self, _tenant: &TenantId, bytes: &[u8]) -> Result<(), StorageError> {
        self.put(CONFIG_KEY.to_owned(), bytes.to_vec());
        Ok(())
    }

    fn delete_config(&mut self, _tenant: &TenantId) -> Result<(), StorageError> {
        self.delete(CONFIG_KEY.to_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantId {
        TenantId::new("acme").unwrap()
    }

    #[test]
    fn a_calls_writes_are_seen_by_it_and_reach_indexeddb_only_after_commit() {
        let mut store = PageStore::default();
        store.restore("cursor".to_owned(), b"{\"epoch\":\"e\",\"seq\":3}".to_vec());
        let customer = CustomerId::new("cus-1").unwrap();
        store
            .set_sync_state(&tenant(), &customer, b"state")
            .unwrap();
        assert_eq!(
            store.sync_state(&tenant(), &customer).unwrap().as_deref(),
            Some(&b"state"[..])
        );
        assert!(store.take_flush().is_none(), "nothing before the commit");
        store.commit();
        assert_eq!(
            store.take_flush(),
            Some((1, vec![("sync:cus-1".to_owned(), Some(b"state".to_vec()))]))
        );
        assert_eq!(store.cursor().unwrap().unwrap().seq, 3);
    }

    #[test]
    fn a_batch_indexeddb_failed_to_write_is_undone_with_every_later_one() {
        let mut store = PageStore::default();
        store.restore("cursor".to_owned(), b"old".to_vec());
        store.put("cursor".to_owned(), b"one".to_vec());
        store.commit();
        let (first, _) = store.take_flush().unwrap();
        store.put("cursor".to_owned(), b"two".to_vec());
        store.put("outbox:cus-1".to_owned(), Vec::new());
        store.commit();
        let (second, _) = store.take_flush().unwrap();
        store.put("sync:cus-1".to_owned(), b"three".to_vec());
        store.commit();
        assert!(store.written(first, true));
        assert_eq!(store.written_up_to(), first);
        // The second batch failed: it and the one not handed out yet are undone.
        assert!(store.written(second, false));
        assert_eq!(store.get("cursor"), Some(&b"one"[..]));
        assert_eq!(store.get("outbox:cus-1"), None);
        assert_eq!(store.get("sync:cus-1"), None);
        assert!(store.take_flush().is_none());
        // A stale or repeated report changes nothing.
        assert!(!store.written(first, true));
        assert!(!store.written(second, true));
    }

    #[test]
    fn a_failed_call_leaves_nothing_and_no_kept_copy_is_trusted() {
        let mut store = PageStore::default();
        let customer = CustomerId::new("cus-1").unwrap();
        store.put(outbox_key(&customer), Vec::new());
        store.commit();
        store.take_flush();
        let kept = PageDoc {
            doc: CustomerDoc::create(
                &callsync_core::NewCustomer {
                    tenant: tenant(),
                    id: customer.clone(),
                    company: "株式会社さくら物産".to_owned(),
                    contact: "佐藤".to_owned(),
                    owner: callsync_core::UserId::new("rep@acme.example").unwrap(),
                    phones: vec![callsync_core::PhoneEntry {
                        label: "代表".to_owned(),
                        number: callsync_core::PhoneNumber::parse("03-1234-5678").unwrap(),
                    }],
                },
                callsync_core::Timestamp::from_millis(0),
                ActorId::random(),
            )
            .unwrap(),
            generation: 0,
        };
        assert!(store.is_current(&kept).unwrap());
        store.clear_outbox(&tenant(), &customer).unwrap();
        store.put(doc_key(&customer), b"half-written".to_vec());
        assert!(store.outbox(&tenant()).unwrap().is_empty());
        store.rollback();
        assert_eq!(store.outbox(&tenant()).unwrap(), vec![customer.clone()]);
        assert!(store.get(&doc_key(&customer)).is_none());
        assert_eq!(store.take_flush().map(|(_, r)| r), None);
        assert!(!store.is_current(&kept).unwrap());
    }
}
