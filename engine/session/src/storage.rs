//! What the hub session asks of storage: one typed interface, implemented over a
//! SQLite transaction today and over PostgreSQL in the scale-out.
//!
//! Owns: the questions and writes the hub needs (documents, subscriptions, sync
//! states, the change cursor, the call index's due expiries, the configuration
//! document, actor bindings) and the split of their failures into "storage is
//! down" (the whole batch is abandoned) and "this item is refused" (answered to
//! the one device that asked).
//!
//! Why a trait called synchronously rather than storage work handed back as
//! effects: the hub reads small facts many times per message (who owns the
//! document, which device an actor is bound to, who subscribes) and every read
//! must see the same batch's own writes. One implementation is one write
//! transaction, so a batch reads its writes and commits as a whole; the session
//! itself never decides when a transaction ends. The driver commits, and only
//! then releases the batch's messages (see [`crate::hub`]).

use automerge::ActorId;
use callsync_core::wire::{CustomerSummary, RecallSummary, Refusal, UserCallStats};
use callsync_core::{
    CallId, CustomerDoc, CustomerId, DeviceId, DeviceKind, ResultTypeId, TenantId, Timestamp,
    UserId,
};

/// Why a storage request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// Storage itself failed (I/O, a full disk, a lost database connection). The
    /// batch is abandoned: nothing of it is acknowledged.
    #[error("storage failed: {0}")]
    Failed(String),
    /// No such customer in the tenant.
    #[error("no such customer")]
    UnknownCustomer,
    /// The stored bytes of this item no longer load.
    #[error("the stored item cannot be read: {0}")]
    Unreadable(String),
    /// The write was refused (too large, a duplicate, a call indexed under another
    /// customer); nothing was written.
    #[error("{0}")]
    Refused(Refusal),
}

impl StorageError {
    /// Whether the whole batch must be abandoned.
    pub fn is_failure(&self) -> bool {
        matches!(self, Self::Failed(_))
    }
}

/// A document as storage loaded it: the document, and whatever the store keeps
/// to save only what changed since (saved heads, the call index's phases).
pub trait LoadedDoc {
    /// The document.
    fn doc(&self) -> &CustomerDoc;
    /// The document, to apply changes to.
    fn doc_mut(&mut self) -> &mut CustomerDoc;
}

/// One batch's view of the server's storage: every read sees the batch's own
/// writes, and nothing is durable until the hub commits at the batch's end.
pub trait HubStore {
    /// A loaded document.
    type Doc: LoadedDoc;

    /// Makes the batch's writes durable, at its end: from here on they are
    /// acknowledged. Nothing is written after it. A failure leaves nothing
    /// written (the driver drops the transaction, which rolls it back).
    fn commit(&mut self) -> Result<(), StorageError>;
    /// Loads a customer's document; changes made to it are written by `actor`.
    fn load(
        &mut self,
        tenant: &TenantId,
        customer: &CustomerId,
        actor: ActorId,
    ) -> Result<Self::Doc, StorageError>;
    /// Saves what changed since the document was loaded or last saved, refusing
    /// (and writing nothing) past `max_bytes` of uncompressed changes.
    fn save(&mut self, doc: &mut Self::Doc, max_bytes: Option<u64>) -> Result<(), StorageError>;
    /// Stores a new customer's document.
    fn insert(&mut self, doc: &mut CustomerDoc) -> Result<Self::Doc, StorageError>;

    /// The customer's assigned rep, or `None` if there is no such customer.
    fn owner_of(
        &mut self,
        tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<Option<String>, StorageError>;
    /// Whether the tenant restricts user-role members to their own customers.
    fn assignee_visibility(&mut self, tenant: &TenantId) -> Result<bool, StorageError>;
    /// How many customers the tenant holds.
    fn customer_count(&mut self, tenant: &TenantId) -> Result<u64, StorageError>;
    /// One page of the tenant's customers in id order: after `after`, owned by
    /// `owner` if given, whose company, contact or id contains `text` if given
    /// (ASCII letters in any case), at most `limit`.
    fn customers_page(
        &mut self,
        tenant: &TenantId,
        after: Option<&CustomerId>,
        owner: Option<&str>,
        text: Option<&str>,
        limit: u32,
    ) -> Result<Vec<CustomerSummary>, StorageError>;
    /// The tenant's customers with a recall, soonest first.
    fn recalls(
        &mut self,
        tenant: &TenantId,
        owner: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RecallSummary>, StorageError>;
    /// Per user, the tenant's calls requested in `[from, to)` that took place,
    /// with how many have a result and how many of those are of a `reached` type.
    fn call_stats(
        &mut self,
        tenant: &TenantId,
        from: Timestamp,
        to: Timestamp,
        reached: &[ResultTypeId],
    ) -> Result<Vec<UserCallStats>, StorageError>;

    /// The last change sequence number given (the catch-up cursor's position).
    fn last_change_seq(&mut self) -> Result<u64, StorageError>;
    /// The documents changed since `since` (all with `None`) that `device`
    /// subscribes to.
    fn changed_for(
        &mut self,
        device: &DeviceId,
        tenant: &TenantId,
        since: Option<u64>,
    ) -> Result<Vec<CustomerId>, StorageError>;
    /// Subscribes `device` to a document.
    fn subscribe(
        &mut self,
        device: &DeviceId,
        tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<(), StorageError>;
    /// The devices subscribed to a document.
    fn subscribers(
        &mut self,
        tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<Vec<DeviceId>, StorageError>;
    /// The saved Automerge sync state with `device` for a document.
    fn sync_state(
        &mut self,
        device: &DeviceId,
        tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<Option<Vec<u8>>, StorageError>;
    /// Saves the sync state with `device` for a document.
    fn set_sync_state(
        &mut self,
        device: &DeviceId,
        tenant: &TenantId,
        customer: &CustomerId,
        state: &[u8],
    ) -> Result<(), StorageError>;

    /// Whether the Automerge actor is bound to `device`.
    fn actor_is_bound_to(
        &mut self,
        actor: &ActorId,
        device: &DeviceId,
    ) -> Result<bool, StorageError>;
    /// Whether `device` is a phone registered to `user`.
    fn is_phone_of(&mut self, device: &DeviceId, user: &UserId) -> Result<bool, StorageError>;
    /// The member's registered devices.
    fn devices_of(&mut self, user: &UserId) -> Result<Vec<(DeviceId, DeviceKind)>, StorageError>;

    /// The tenant's calls awaiting *Start call* requested at or before `cutoff`,
    /// oldest first.
    fn awaiting_start_before(
        &mut self,
        tenant: &TenantId,
        cutoff: Timestamp,
    ) -> Result<Vec<(CustomerId, CallId)>, StorageError>;
    /// When the tenant's oldest call awaiting *Start call* was requested.
    fn oldest_awaiting_start(
        &mut self,
        tenant: &TenantId,
    ) -> Result<Option<Timestamp>, StorageError>;

    /// The customer whose document holds `call`, as the call index knows it.
    fn customer_of_call(
        &mut self,
        tenant: &TenantId,
        call: &CallId,
    ) -> Result<Option<CustomerId>, StorageError>;
    /// Marks a recording's bytes to be removed from the blob store once this
    /// batch commits (its call was deleted, or bytes were stored for a call
    /// that cannot take them): durable with the batch, so a crash before the
    /// bytes go only delays it.
    fn queue_blob_deletion(&mut self, tenant: &TenantId, sha256: &str) -> Result<(), StorageError>;

    /// The tenant's configuration document, if stored.
    fn tenant_config(&mut self, tenant: &TenantId) -> Result<Option<Vec<u8>>, StorageError>;
    /// Stores the tenant's configuration document (whole).
    fn put_tenant_config(&mut self, tenant: &TenantId, bytes: &[u8]) -> Result<(), StorageError>;
}
