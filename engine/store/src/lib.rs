//! SQLite adapter: customer documents saved incrementally, and the call index.
//!
//! Owns: the database file (WAL mode, `synchronous=FULL`), its versioned schema
//! ([`MIGRATIONS`], tracked in `PRAGMA user_version`), saving each document as a
//! snapshot plus appended incremental chunks (compacted when the chunks outgrow the
//! snapshot), loading a document in one read, and the derived `calls` index that
//! answers "which calls of this user still need a result" across customers.
//! Does not own: what a document means (the core), or ids and actor ids (hosts).
//!
//! Call order for a write: [`Store::write`] opens a `BEGIN IMMEDIATE` transaction
//! (writers queue here, so load-check-write can never interleave with another
//! process); [`WriteTx::load`] the document; record events through the core;
//! [`WriteTx::save`]; [`WriteTx::commit`]. Nothing is acknowledged before commit;
//! dropping the transaction rolls everything back. A crash at any point leaves the
//! last committed state, which [`Store::load`] reads whole.
#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod accounts;
mod client;
mod config;
mod hub;
mod replication;

pub use accounts::{
    AccountQueries, DeviceRecord, MAX_SESSIONS_PER_MEMBER, MemberRecord, NewSession, SessionRecord,
};
pub use client::{CURSOR_KEY, SERVER_PEER};
pub use config::{ConfigQueries, RecallRow};
pub use replication::ReplicationQueries;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use automerge::{ActorId, ChangeHash};
use callsync_core::{
    CallEvent, CallId, CallView, CoreError, Customer, CustomerDoc, CustomerId, DeviceId, OpenCall,
    Phase, RecordingState, ResultCatalog, RuleContext, SCHEMA_VERSION, TenantId, Timestamp, UserId,
};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

/// Schema migrations, applied in order; `PRAGMA user_version` counts those applied.
/// Append only: never edit a migration that has shipped.
pub const MIGRATIONS: &[&str] = &[
    // 1: documents, their incremental chunks, the derived call index, settings.
    r#"
    CREATE TABLE documents (
        tenant_id         TEXT NOT NULL,
        customer_id       TEXT NOT NULL,
        snapshot_bytes    INTEGER NOT NULL,
        incremental_bytes INTEGER NOT NULL DEFAULT 0,
        next_chunk        INTEGER NOT NULL DEFAULT 0,
        heads             BLOB NOT NULL,
        company           TEXT NOT NULL,
        contact           TEXT NOT NULL,
        owner             TEXT NOT NULL,
        status            TEXT NOT NULL,
        PRIMARY KEY (tenant_id, customer_id)
    );
    -- Kept apart from `documents` so that updating a document's small columns on
    -- every save does not rewrite its snapshot.
    CREATE TABLE snapshots (
        tenant_id   TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        bytes       BLOB NOT NULL,
        PRIMARY KEY (tenant_id, customer_id)
    );
    CREATE TABLE chunks (
        tenant_id   TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        seq         INTEGER NOT NULL,
        bytes       BLOB NOT NULL,
        PRIMARY KEY (tenant_id, customer_id, seq)
    );
    CREATE TABLE calls (
        tenant_id    TEXT NOT NULL,
        call_id      TEXT NOT NULL,
        customer_id  TEXT NOT NULL,
        user_id      TEXT NOT NULL,
        phase        TEXT NOT NULL,
        requested_at INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, call_id)
    );
    CREATE INDEX calls_by_user ON calls (tenant_id, user_id, phase);
    CREATE INDEX calls_by_customer ON calls (tenant_id, customer_id);
    CREATE TABLE settings (
        key   TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    "#,
    // 2: the server's accounts and sessions, and what replication keeps: a change
    // sequence per document, subscriptions, sync states per peer, the device outbox.
    r#"
    ALTER TABLE documents ADD COLUMN change_seq INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX documents_by_change ON documents (change_seq);
    CREATE INDEX calls_by_phase ON calls (phase, requested_at);
    CREATE TABLE tenants (
        tenant_id           TEXT PRIMARY KEY,
        assignee_visibility INTEGER NOT NULL DEFAULT 0,
        created_at          INTEGER NOT NULL
    );
    -- An email signs in to exactly one tenant.
    CREATE TABLE members (
        email         TEXT PRIMARY KEY,
        tenant_id     TEXT NOT NULL REFERENCES tenants (tenant_id),
        password_hash TEXT NOT NULL,
        role          TEXT NOT NULL,
        contract      INTEGER NOT NULL,
        created_at    INTEGER NOT NULL
    );
    CREATE TABLE devices (
        device_id     TEXT PRIMARY KEY,
        tenant_id     TEXT NOT NULL,
        email         TEXT NOT NULL REFERENCES members (email),
        kind          TEXT NOT NULL,
        registered_at INTEGER NOT NULL
    );
    CREATE INDEX devices_by_member ON devices (email);
    -- Actor binding: every Automerge actor a device writes under.
    CREATE TABLE actors (
        actor     TEXT PRIMARY KEY,
        device_id TEXT NOT NULL REFERENCES devices (device_id)
    );
    -- Only a hash of each token is kept.
    CREATE TABLE sessions (
        token_hash BLOB PRIMARY KEY,
        device_id  TEXT NOT NULL REFERENCES devices (device_id),
        email      TEXT NOT NULL REFERENCES members (email),
        expires_at INTEGER NOT NULL
    );
    CREATE INDEX sessions_by_member ON sessions (email);
    CREATE TABLE subscriptions (
        device_id   TEXT NOT NULL,
        tenant_id   TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        PRIMARY KEY (device_id, tenant_id, customer_id)
    );
    CREATE INDEX subscribers ON subscriptions (tenant_id, customer_id);
    CREATE TABLE sync_states (
        peer        TEXT NOT NULL,
        tenant_id   TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        state       BLOB NOT NULL,
        PRIMARY KEY (peer, tenant_id, customer_id)
    );
    -- On a device: documents with local changes the server has not confirmed.
    CREATE TABLE outbox (
        tenant_id   TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        PRIMARY KEY (tenant_id, customer_id)
    );
    "#,
    // 3: each tenant's configuration document (rule sets and their plugins), and
    // the recall and restriction in force on each customer, for the recall list.
    // Existing rows are filled in by `backfill_follow_up` in the same transaction.
    r#"
    CREATE TABLE tenant_configs (
        tenant_id TEXT PRIMARY KEY,
        bytes     BLOB NOT NULL
    );
    ALTER TABLE documents ADD COLUMN recall_at INTEGER;
    ALTER TABLE documents ADD COLUMN restriction_until INTEGER;
    CREATE INDEX documents_by_recall ON documents (tenant_id, recall_at)
        WHERE recall_at IS NOT NULL;
    "#,
    // 4: each document's uncompressed size (every change's bytes, as appended),
    // which the server caps: the snapshot is compressed, so it says little about
    // what a document costs in memory and on the wire. Documents stored before
    // start from their stored size (an underestimate).
    r#"
    ALTER TABLE documents ADD COLUMN raw_bytes INTEGER NOT NULL DEFAULT 0;
    UPDATE documents SET raw_bytes = snapshot_bytes + incremental_bytes;
    "#,
    // 5: each tenant's hub finds its own due expiries (the server runs one hub per
    // tenant), without reading other tenants' calls.
    r#"
    CREATE INDEX calls_by_tenant_phase ON calls (tenant_id, phase, requested_at);
    "#,
    // 6: the result type in force on each call, for the call-performance
    // dashboard (filled in for calls indexed before, from their documents: see
    // `backfill_result_types`), and the period the dashboard reads.
    r#"
    ALTER TABLE calls ADD COLUMN result_type TEXT;
    CREATE INDEX calls_by_tenant_time ON calls (tenant_id, requested_at);
    "#,
    // 7: each call's recording (its state and, once stored, its SHA-256), so
    // uploads, playback and deletion find it without reading the document; and
    // the recordings whose bytes are to leave the blob store, written in the
    // same transaction as the tombstone that deletes them (the server removes
    // the bytes after the commit, and the row once they are gone). Calls indexed
    // before have no recording column until their document is next saved: no
    // build before this one uploaded a recording.
    r#"
    ALTER TABLE calls ADD COLUMN recording TEXT;
    ALTER TABLE calls ADD COLUMN recording_sha256 TEXT;
    CREATE INDEX calls_by_recording ON calls (tenant_id, recording_sha256)
        WHERE recording_sha256 IS NOT NULL;
    CREATE TABLE blob_deletions (
        tenant_id TEXT NOT NULL,
        sha256    TEXT NOT NULL,
        PRIMARY KEY (tenant_id, sha256)
    );
    "#,
    // 8: the documents whose appended chunks outgrew their snapshot, found without
    // a scan: the server compacts them on a thread of its own, off the hub's write
    // turn (`Store::compaction_due`, `Store::compact`).
    r#"
    CREATE INDEX documents_to_compact ON documents (tenant_id, customer_id)
        WHERE incremental_bytes > snapshot_bytes;
    "#,
    // 9: the schema version each document declares, kept with every save, so the
    // server finds the documents it has still to upgrade without loading them
    // all. Every document stored before is schema 1.
    r#"
    ALTER TABLE documents ADD COLUMN schema INTEGER NOT NULL DEFAULT 1;
    "#,
];

/// What one [`Store::checkpoint`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpointed {
    /// Every page of the log is in the database now.
    pub complete: bool,
    /// Pages in the log.
    pub log_pages: u64,
    /// Of them, pages in the database now.
    pub copied_pages: u64,
}

/// Why a store operation failed. A failed write changes nothing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed (I/O, a full disk, a locked database past the timeout, …).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The core refused the action or could not read a stored document.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// No customer with this id in the tenant.
    #[error("no customer {customer} in tenant {tenant}")]
    UnknownCustomer {
        /// The tenant.
        tenant: TenantId,
        /// The customer asked for.
        customer: CustomerId,
    },
    /// A customer with this id exists already.
    #[error("customer {customer} already exists")]
    CustomerExists {
        /// The customer.
        customer: CustomerId,
    },
    /// No call with this id in the tenant.
    #[error("no call {call} in tenant {tenant}")]
    UnknownCall {
        /// The tenant.
        tenant: TenantId,
        /// The call asked for.
        call: CallId,
    },
    /// A call id is already indexed under another customer.
    #[error("call {call} of customer {customer} already belongs to another customer")]
    CallOnAnotherCustomer {
        /// The call.
        call: CallId,
        /// The customer being saved.
        customer: CustomerId,
    },
    /// Saving would take the document past the size the server allows.
    #[error("the document would grow past {limit} bytes")]
    DocumentTooLarge {
        /// The limit, in stored bytes.
        limit: u64,
    },
    /// A stored row does not hold what its column promises (edited by hand, or a
    /// bug): refused rather than guessed.
    #[error("the database holds an unreadable {0}")]
    Corrupt(String),
    /// The tenant exists already.
    #[error("tenant {tenant} already exists")]
    TenantExists {
        /// The tenant.
        tenant: TenantId,
    },
    /// No such tenant.
    #[error("no tenant {tenant}")]
    UnknownTenant {
        /// The tenant.
        tenant: TenantId,
    },
    /// The email is taken (in this or another tenant).
    #[error("{email} is already a member")]
    MemberExists {
        /// The email.
        email: UserId,
    },
    /// The change would leave the tenant with no owner.
    #[error("a tenant keeps at least one owner")]
    LastOwner,
    /// No member with this email in the tenant.
    #[error("no member {email} in this tenant")]
    UnknownMember {
        /// The email.
        email: UserId,
    },
    /// The device id is registered to another member or as another kind.
    #[error("device {device} is registered to someone else")]
    DeviceTaken {
        /// The device.
        device: DeviceId,
    },
    /// The Automerge actor is bound to another device.
    #[error("actor {actor} is bound to another device")]
    ActorTaken {
        /// The actor, in hex.
        actor: String,
    },
    /// The database was written by a newer version.
    #[error("the database has schema version {found}; this build knows up to {supported}")]
    SchemaTooNew {
        /// The database's version.
        found: u32,
        /// The newest this build knows.
        supported: u32,
    },
}

/// What [`Store::upgrade_documents`] did.
#[derive(Debug, Default)]
pub struct Upgraded {
    /// Documents upgraded.
    pub upgraded: usize,
    /// Documents left as they were because they do not load: tenant, customer
    /// and why.
    pub unreadable: Vec<(TenantId, CustomerId, String)>,
}

/// What [`Store::compaction_read`] read: the document's bytes and which chunks
/// they include.
#[derive(Debug)]
pub struct CompactionPlan {
    tenant: TenantId,
    customer: CustomerId,
    bytes: Vec<u8>,
    covered: Covered,
}

impl CompactionPlan {
    /// The new snapshot: the document loaded and saved whole (the expensive step,
    /// run under no lock).
    pub fn snapshot(&self) -> Result<Vec<u8>, StoreError> {
        // A fixed actor: nothing is written to the document.
        let mut doc = CustomerDoc::load(&self.bytes, ActorId::from(b"compactor".as_slice()))?;
        Ok(doc.save())
    }
}

/// The chunks a compaction read, to check they are still there when it writes.
#[derive(Debug, Default)]
struct Covered {
    count: i64,
    bytes: i64,
    last_seq: i64,
}

/// What a save wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveOutcome {
    /// Nothing had changed since the last save.
    Unchanged,
    /// New changes were appended as one chunk of this many bytes.
    Appended(usize),
    /// The chunks outgrew the snapshot, so a new snapshot of this many bytes
    /// replaced snapshot and chunks.
    Compacted(usize),
}

/// A document loaded from the store, with the heads it was saved at (so the next
/// save appends exactly what changed since) and, once saved, the phases the call
/// index holds for it (so the next save writes only the calls that changed).
///
/// A `StoredDoc` describes the database as of its last save. If the transaction of
/// that save is not committed, drop the document and load it again.
#[derive(Debug)]
pub struct StoredDoc {
    /// The document.
    pub doc: CustomerDoc,
    saved_heads: Vec<ChangeHash>,
    indexed: Option<HashMap<CallId, IndexedCall>>,
}

/// What the call index holds of one call: its phase and the result type in force
/// (the dashboard counts results and 本人通話 from it).
#[derive(Debug, Clone, PartialEq, Eq)]
struct IndexedCall {
    phase: Phase,
    result: Option<String>,
    /// The recording's state (`pending`, `stored`, `deleted`; none when the
    /// call is not recorded).
    recording: Option<&'static str>,
    /// The stored recording's SHA-256.
    recording_sha256: Option<String>,
}

/// How the call index spells a recording's state.
fn recording_column(state: RecordingState) -> Option<&'static str> {
    match state {
        RecordingState::None => None,
        RecordingState::Pending => Some("pending"),
        RecordingState::Stored => Some("stored"),
        RecordingState::Deleted => Some("deleted"),
    }
}

impl IndexedCall {
    fn of(call: &CallView) -> Self {
        Self {
            phase: call.phase,
            result: call
                .result_in_force()
                .map(|r| r.fields.result_type.as_str().to_owned()),
            recording: recording_column(call.recording_state),
            recording_sha256: call.recording.as_ref().map(|r| r.sha256.clone()),
        }
    }
}

/// One row of the customer list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerRow {
    /// The customer.
    pub id: CustomerId,
    /// Company name.
    pub company: String,
    /// Contact person.
    pub contact: String,
    /// Assigned rep.
    pub owner: String,
    /// Derived status at the last save.
    pub status: String,
}

/// One row of the call index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRow {
    /// The call.
    pub call: CallId,
    /// Its customer.
    pub customer: CustomerId,
    /// Who requested or logged it.
    pub user: String,
    /// Its phase at the last save.
    pub phase: Phase,
    /// When it was requested.
    pub requested_at: Timestamp,
}

/// What [`Store::record`] checks events against.
#[derive(Debug, Clone, Copy)]
pub struct RuleSettings<'a> {
    /// The tenant.
    pub tenant: &'a TenantId,
    /// The tenant's result types.
    pub catalog: &'a ResultCatalog,
    /// The start limit.
    pub start_limit_ms: i64,
}

/// Creates a data directory (with any missing parents) and makes it readable by
/// this user only: it holds the database, and on a server the certificate key and
/// compiled plugins. A directory that already exists is made private only if it
/// is a data directory already (it holds the database), never some other
/// directory a user pointed at.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let existed = path.exists();
    std::fs::create_dir_all(path)?;
    #[cfg(unix)]
    if !existed || path.join(DB_FILE_NAME).exists() {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    #[cfg(not(unix))]
    let _ = existed;
    Ok(())
}

/// The database file's name in a data directory.
const DB_FILE_NAME: &str = "callsync.sqlite";

/// Best effort: sets `path`'s mode if it exists (unix only).
fn make_private(path: &Path, mode: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if path.exists()
            && let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        {
            tracing::warn!(path = %path.display(), error = %e, "could not make a database file private");
        }
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
}

/// How long a writer waits for another writer before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The SQLite database of one data directory.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and applies pending
    /// migrations.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        // Password and token hashes live here: readable by this user only. SQLite
        // creates the `-wal` and `-shm` files with the database file's mode.
        make_private(path, 0o600);
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Every hot statement is prepared once per connection.
        conn.set_prepared_statement_cache_capacity(64);
        // WAL: readers never block the writer. FULL: a commit survives power loss,
        // not only a process crash — what we acknowledge must never be lost.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        for suffix in ["-wal", "-shm"] {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            make_private(Path::new(&side), 0o600);
        }
        migrate(&mut conn)?;
        Ok(Self { conn })
    }

    /// Leaves checkpointing the write-ahead log to another connection
    /// ([`Self::checkpoint`]): SQLite's default copies the log into the database
    /// inside whichever commit finds it past 1,000 pages, and the server's hubs,
    /// whose commits every device of a tenant waits on, should not be the one.
    pub fn leave_checkpoints_to_others(&self) -> Result<(), StoreError> {
        self.conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        Ok(())
    }

    /// Copies what the write-ahead log holds into the database as far as no
    /// reader still needs it (SQLite's passive checkpoint: it waits on no one and
    /// no writer waits on it), so the next writer can start the log again.
    pub fn checkpoint(&self) -> Result<Checkpointed, StoreError> {
        let (busy, log_pages, copied_pages): (i64, i64, i64) =
            self.conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
        Ok(Checkpointed {
            complete: busy == 0 && log_pages == copied_pages,
            log_pages: log_pages.max(0) as u64,
            copied_pages: copied_pages.max(0) as u64,
        })
    }

    /// A number that changes whenever another connection (another process)
    /// commits to the database: a cheap "did anything change?" poll.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .pragma_query_value(None, "data_version", |r| r.get(0))?)
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// Starts a write. Other writers (threads or processes) wait until it ends.
    pub fn write(&mut self) -> Result<WriteTx<'_>, StoreError> {
        let mut tx = WriteTx {
            conn: &self.conn,
            begun: false,
            finished: false,
            before_write: None,
            held: None,
            commit_took: None,
        };
        tx.writer()?;
        Ok(tx)
    }

    /// A write that begins (`BEGIN IMMEDIATE`, taking SQLite's one write lock)
    /// only when it first writes, after `before_write` (which may wait for a turn
    /// at the lock; what it returns is held until the write ends). Reads before
    /// then run outside any transaction, each on the latest committed state, so
    /// a batch that only reads never holds the lock other writers wait on.
    pub fn write_when_needed<'a>(
        &'a mut self,
        before_write: impl FnOnce() -> Box<dyn Held + 'a> + 'a,
    ) -> WriteTx<'a> {
        WriteTx {
            conn: &self.conn,
            begun: false,
            finished: false,
            before_write: Some(Box::new(before_write)),
            held: None,
            commit_took: None,
        }
    }

    /// Records events on one customer's call as `user`, in one write: the user's
    /// open calls on other customers (which may block a request), the document,
    /// the rules, the save, the outbox (so a device's sync client sends the
    /// change), and the commit. A refusal changes nothing.
    pub fn record(
        &mut self,
        user: &UserId,
        customer: &CustomerId,
        actor: ActorId,
        events: Vec<CallEvent>,
        rules: RuleSettings<'_>,
    ) -> Result<CallView, StoreError> {
        let tenant = rules.tenant;
        let mut tx = self.write()?;
        let others = tx.open_calls_of(tenant, user, customer)?;
        let mut stored = tx.load(tenant, customer, actor)?;
        let ctx = RuleContext {
            catalog: rules.catalog,
            start_limit_ms: rules.start_limit_ms,
            other_open_calls: &others,
        };
        let view = stored.doc.record_all(events, &ctx)?;
        tx.save(&mut stored)?;
        tx.mark_outbox(tenant, customer)?;
        tx.commit()?;
        Ok(view)
    }

    /// Loads a document, to be edited as `actor`, in one read.
    pub fn load(
        &self,
        tenant: &TenantId,
        customer: &CustomerId,
        actor: ActorId,
    ) -> Result<StoredDoc, StoreError> {
        load(&self.conn, tenant, customer, actor)
    }

    /// Upgrades every stored document below [`SCHEMA_VERSION`] to it, as the
    /// server does when a new build first opens its store (see the core's
    /// migration rule: only the server upgrades, with its own actor; devices
    /// never call this). In transactions of up to 64 documents: a crash loses at
    /// most the batch in progress, which the next start does again (a document
    /// already upgraded is only re-marked). A document that does not load is left
    /// as it is and named in the report.
    pub fn upgrade_documents(
        &mut self,
        actor: &ActorId,
        at: Timestamp,
    ) -> Result<Upgraded, StoreError> {
        const BATCH: usize = 64;
        // Listed once (ids only): a document whose column cannot be moved on is
        // not tried again in this run.
        let due: Vec<(String, String)> = {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT tenant_id, customer_id FROM documents WHERE schema < ?1")?;
            let rows = stmt.query_map(params![SCHEMA_VERSION as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let mut report = Upgraded::default();
        for batch in due.chunks(BATCH) {
            let mut tx = self.write()?;
            for (tenant, customer) in batch {
                let tenant = TenantId::new(tenant.as_str()).map_err(CoreError::from)?;
                let customer = CustomerId::new(customer.as_str()).map_err(CoreError::from)?;
                let mut stored = match tx.load(&tenant, &customer, actor.clone()) {
                    Ok(stored) => stored,
                    // A document that does not load is that document's problem,
                    // as everywhere on the server: it stays as it is, and is
                    // tried again at the next start.
                    Err(e @ (StoreError::Core(_) | StoreError::UnknownCustomer { .. })) => {
                        report.unreadable.push((tenant, customer, e.to_string()));
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if stored.doc.upgrade(at)? {
                    tx.save_appending(&mut stored, None)?;
                    report.upgraded += 1;
                } else {
                    // Already schema 2 (by sync): only the column was behind.
                    tx.writer()?
                        .prepare_cached(
                            "UPDATE documents SET schema = ?3 WHERE tenant_id = ?1 AND customer_id = ?2",
                        )?
                        .execute(params![
                            tenant.as_str(),
                            customer.as_str(),
                            stored.doc.schema()? as i64
                        ])?;
                }
            }
            tx.commit()?;
        }
        Ok(report)
    }

    /// Up to `limit` documents whose appended chunks outgrew their snapshot (by
    /// the partial index of migration 8: no scan of every document).
    pub fn compaction_due(&self, limit: usize) -> Result<Vec<(TenantId, CustomerId)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT tenant_id, customer_id FROM documents INDEXED BY documents_to_compact
             WHERE incremental_bytes > snapshot_bytes LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit as i64], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut due = Vec::new();
        for row in rows {
            let (tenant, customer) = row?;
            due.push((
                TenantId::new(tenant).map_err(CoreError::from)?,
                CustomerId::new(customer).map_err(CoreError::from)?,
            ));
        }
        Ok(due)
    }

    /// Replaces a document's snapshot and the chunks appended after it with one
    /// new snapshot. Returns its size, or `None` if there was nothing to compact
    /// or the chunks changed meanwhile (another compaction got there first).
    ///
    /// In three steps, so that the expensive one holds no lock: the snapshot and
    /// chunks are read (one statement, one consistent view); the document is
    /// loaded and saved whole, outside any transaction; then one short write
    /// checks the chunks read are all still there, unchanged in number and size,
    /// writes the snapshot and deletes exactly those chunks. Chunks a writer
    /// appended meanwhile stay, after the new snapshot. A crash at any point
    /// leaves either the old snapshot and every chunk or the new one and the
    /// chunks it does not cover: the document loads the same either way.
    pub fn compact(
        &mut self,
        tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<Option<usize>, StoreError> {
        let Some(plan) = self.compaction_read(tenant, customer)? else {
            return Ok(None);
        };
        let snapshot = plan.snapshot()?;
        self.compaction_write(&plan, &snapshot)
    }

    /// [`Self::compact`]'s first step: the snapshot and chunks, read in one
    /// statement; `None` if the document has no chunks.
    pub fn compaction_read(
        &self,
        tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<Option<CompactionPlan>, StoreError> {
        let (bytes, covered) = read_document_bytes(&self.conn, tenant, customer)?;
        Ok((covered.count > 0).then(|| CompactionPlan {
            tenant: tenant.clone(),
            customer: customer.clone(),
            bytes,
            covered,
        }))
    }

    /// [`Self::compact`]'s last step: one short write that replaces the snapshot
    /// and deletes the chunks `plan` read, if they are all still there.
    pub fn compaction_write(
        &mut self,
        plan: &CompactionPlan,
        snapshot: &[u8],
    ) -> Result<Option<usize>, StoreError> {
        let (tenant, customer, covered) =
            (plan.tenant.as_str(), plan.customer.as_str(), &plan.covered);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let still: (i64, i64) = tx
            .prepare_cached(
                "SELECT count(*), coalesce(sum(length(bytes)), 0) FROM chunks
                 WHERE tenant_id = ?1 AND customer_id = ?2 AND seq <= ?3",
            )?
            .query_row(params![tenant, customer, covered.last_seq], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        if still != (covered.count, covered.bytes) {
            return Ok(None);
        }
        tx.prepare_cached(
            "UPDATE snapshots SET bytes = ?3 WHERE tenant_id = ?1 AND customer_id = ?2",
        )?
        .execute(params![tenant, customer, snapshot])?;
        tx.prepare_cached(
            "DELETE FROM chunks WHERE tenant_id = ?1 AND customer_id = ?2 AND seq <= ?3",
        )?
        .execute(params![tenant, customer, covered.last_seq])?;
        tx.prepare_cached(
            "UPDATE documents SET snapshot_bytes = ?3, incremental_bytes = incremental_bytes - ?4
             WHERE tenant_id = ?1 AND customer_id = ?2",
        )?
        .execute(params![
            tenant,
            customer,
            snapshot.len() as i64,
            covered.bytes
        ])?;
        tx.commit()?;
        Ok(Some(snapshot.len()))
    }

    /// The tenant's customers, by id.
    pub fn customers(&self, tenant: &TenantId) -> Result<Vec<CustomerRow>, StoreError> {
        customers_in(self, tenant)
    }

    /// Calls in the index, newest first, optionally of one customer or one user.
    pub fn calls(
        &self,
        tenant: &TenantId,
        customer: Option<&CustomerId>,
        user: Option<&UserId>,
    ) -> Result<Vec<CallRow>, StoreError> {
        call_rows(&self.conn, tenant, customer, user)
    }

    /// The customer a call belongs to.
    pub fn customer_of_call(
        &self,
        tenant: &TenantId,
        call: &CallId,
    ) -> Result<CustomerId, StoreError> {
        customer_of_call(&self.conn, tenant, call)
    }

    /// The customer a call belongs to, if the call index knows the call.
    pub fn known_customer_of_call(
        &self,
        tenant: &TenantId,
        call: &CallId,
    ) -> Result<Option<CustomerId>, StoreError> {
        match customer_of_call(&self.conn, tenant, call) {
            Ok(customer) => Ok(Some(customer)),
            Err(StoreError::UnknownCall { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A setting, if set.
    pub fn setting(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        read_setting(&self.conn, key)
    }

    /// On a phone: the calls whose recording may need the recorder: those on
    /// the line (started, not ended on the phone) and those whose recording
    /// was deleted.
    /// Each with whether its recording was deleted.
    pub fn recording_candidates(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<(CallId, CustomerId, bool)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT call_id, customer_id, recording = 'deleted' FROM calls
             WHERE tenant_id = ?1 AND (phase IN ('in-call', 'browser-ended') OR recording = 'deleted')",
        )?;
        let rows = stmt.query_map(params![tenant.as_str()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<bool>>(2)?.unwrap_or(false),
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (call, customer, deleted) = row?;
            out.push((
                CallId::new(call).map_err(CoreError::from)?,
                CustomerId::new(customer).map_err(CoreError::from)?,
                deleted,
            ));
        }
        Ok(out)
    }

    /// Recordings whose bytes are to leave the blob store (their tombstones
    /// committed), at most `limit`.
    pub fn pending_blob_deletions(
        &self,
        limit: u32,
    ) -> Result<Vec<(TenantId, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT tenant_id, sha256 FROM blob_deletions LIMIT ?1")?;
        let rows = stmt.query_map(params![limit], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (tenant, sha256) = row?;
            out.push((TenantId::new(tenant).map_err(CoreError::from)?, sha256));
        }
        Ok(out)
    }

    /// Whether another call of the tenant still holds the bytes `sha256` as
    /// its stored recording (the same audio uploaded for two calls is stored
    /// once: deleting one call's recording must leave the other's).
    pub fn recording_in_use(&self, tenant: &TenantId, sha256: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT 1 FROM calls WHERE tenant_id = ?1 AND recording_sha256 = ?2
                   AND recording = 'stored' LIMIT 1",
            )?
            .query_row(params![tenant.as_str(), sha256], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// The bytes `sha256` have left the blob store (or were still in use).
    pub fn blob_deletion_done(
        &mut self,
        tenant: &TenantId,
        sha256: &str,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM blob_deletions WHERE tenant_id = ?1 AND sha256 = ?2")?
            .execute(params![tenant.as_str(), sha256])?;
        Ok(())
    }

    /// The call's recording as the call index holds it: its state (`pending`,
    /// `stored`, `deleted`) and, once stored, its SHA-256.
    pub fn recording_of_call(
        &self,
        tenant: &TenantId,
        call: &CallId,
    ) -> Result<Option<(String, Option<String>)>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT recording, recording_sha256 FROM calls
                 WHERE tenant_id = ?1 AND call_id = ?2 AND recording IS NOT NULL",
            )?
            .query_row(params![tenant.as_str(), call.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?)
    }

    /// Sets a setting (its own small transaction).
    pub fn set_setting(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        write_setting(&self.conn, key, value)
    }

    /// Byte counts of a stored document: (snapshot, incremental chunks, chunk rows).
    pub fn stored_sizes(
        &self,
        tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<(u64, u64, u64), StoreError> {
        self.conn
            .prepare_cached("SELECT snapshot_bytes, incremental_bytes,
                        (SELECT count(*) FROM chunks c WHERE c.tenant_id = d.tenant_id AND c.customer_id = d.customer_id)
                 FROM documents d WHERE tenant_id = ?1 AND customer_id = ?2")?
            .query_row(
                params![tenant.as_str(), customer.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?
            .ok_or_else(|| StoreError::UnknownCustomer { tenant: tenant.clone(), customer: customer.clone() })
    }
}

fn read_setting(conn: &Connection, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT value FROM settings WHERE key = ?1")?
        .query_row(params![key], |r| r.get(0))
        .optional()?)
}

fn write_setting(conn: &Connection, key: &str, value: &[u8]) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO settings (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![key, value])?;
    Ok(())
}

/// Read access shared by [`Store`] and [`WriteTx`], so query traits
/// ([`AccountQueries`], [`ReplicationQueries`]) work on both: a read inside a write
/// sees the write's own changes.
pub trait Read {
    /// The connection (or transaction) to read through.
    fn db(&self) -> &Connection;
}

impl Read for Store {
    fn db(&self) -> &Connection {
        &self.conn
    }
}

impl Read for WriteTx<'_> {
    fn db(&self) -> &Connection {
        self.conn
    }
}

/// Whether `stored` still describes the database: no other connection (another
/// process) has saved the document since. A kept document that is not current
/// must be loaded again. Inside a write, the answer holds until the commit.
pub fn is_current<R: Read + ?Sized>(reader: &R, stored: &StoredDoc) -> Result<bool, StoreError> {
    let heads: Option<Vec<u8>> = reader
        .db()
        .prepare_cached("SELECT heads FROM documents WHERE tenant_id = ?1 AND customer_id = ?2")?
        .query_row(
            params![stored.doc.tenant().as_str(), stored.doc.id().as_str()],
            |r| r.get(0),
        )
        .optional()?;
    Ok(heads.is_some_and(|h| h == encode_heads(&stored.saved_heads)))
}

/// The tenant's customers, by id, read through the store or inside a write.
pub fn customers_in<R: Read + ?Sized>(
    reader: &R,
    tenant: &TenantId,
) -> Result<Vec<CustomerRow>, StoreError> {
    let mut stmt = reader.db().prepare_cached(
        "SELECT customer_id, company, contact, owner, status FROM documents
         WHERE tenant_id = ?1 ORDER BY customer_id",
    )?;
    let rows = stmt.query_map(params![tenant.as_str()], customer_columns)?;
    customer_rows(rows)
}

/// One page of a tenant's customers in id order: those after `after`, owned by
/// `owner` if given (the assignee restriction), at most `limit`.
pub fn customers_page<R: Read + ?Sized>(
    reader: &R,
    tenant: &TenantId,
    after: Option<&CustomerId>,
    owner: Option<&str>,
    text: Option<&str>,
    limit: u32,
) -> Result<Vec<CustomerRow>, StoreError> {
    // `instr` rather than LIKE: the rep's text is matched as typed, with no
    // wildcard of its own; `lower` folds ASCII only (Japanese has no case).
    let mut stmt = reader.db().prepare_cached(
        "SELECT customer_id, company, contact, owner, status FROM documents
         WHERE tenant_id = ?1 AND customer_id > ?2 AND (?3 IS NULL OR owner = ?3)
           AND (?5 IS NULL OR instr(lower(company), ?5) > 0
                OR instr(lower(contact), ?5) > 0 OR instr(lower(customer_id), ?5) > 0)
         ORDER BY customer_id LIMIT ?4",
    )?;
    let text = text.map(str::to_ascii_lowercase);
    let rows = stmt.query_map(
        params![
            tenant.as_str(),
            after.map_or("", CustomerId::as_str),
            owner,
            i64::from(limit),
            text
        ],
        customer_columns,
    )?;
    customer_rows(rows)
}

/// The columns a customer list selects, in the order [`customer_rows`] reads them.
type CustomerColumns = (String, String, String, String, String);

fn customer_columns(r: &rusqlite::Row<'_>) -> rusqlite::Result<CustomerColumns> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

/// Rows of `customer_id, company, contact, owner, status` as [`CustomerRow`]s.
fn customer_rows(
    rows: impl Iterator<Item = rusqlite::Result<CustomerColumns>>,
) -> Result<Vec<CustomerRow>, StoreError> {
    let mut out = Vec::new();
    for row in rows {
        let (id, company, contact, owner, status) = row?;
        out.push(CustomerRow {
            id: CustomerId::new(id).map_err(CoreError::from)?,
            company,
            contact,
            owner,
            status,
        });
    }
    Ok(out)
}

/// How many customers a tenant has.
pub fn customer_count<R: Read + ?Sized>(reader: &R, tenant: &TenantId) -> Result<u64, StoreError> {
    let count: i64 = reader
        .db()
        .prepare_cached("SELECT count(*) FROM documents WHERE tenant_id = ?1")?
        .query_row(params![tenant.as_str()], |r| r.get(0))?;
    Ok(count.max(0) as u64)
}

/// Anything a write holds until it ends (a turn at the write lock).
pub trait Held {}

impl<T> Held for T {}

/// A write in progress: a `BEGIN IMMEDIATE` transaction, begun at once
/// ([`Store::write`]) or at its first write ([`Store::write_when_needed`]).
/// Dropped without [`WriteTx::commit`], it rolls back.
pub struct WriteTx<'a> {
    conn: &'a Connection,
    begun: bool,
    finished: bool,
    before_write: Option<Box<dyn FnOnce() -> Box<dyn Held + 'a> + 'a>>,
    held: Option<Box<dyn Held + 'a>>,
    /// How long the commit took, once it has run.
    commit_took: Option<std::time::Duration>,
}

impl std::fmt::Debug for WriteTx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTx")
            .field("begun", &self.begun)
            .finish_non_exhaustive()
    }
}

impl Drop for WriteTx<'_> {
    fn drop(&mut self) {
        if self.begun && !self.finished {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

impl WriteTx<'_> {
    /// The connection to write through, beginning the transaction first if it
    /// has not begun.
    fn writer(&mut self) -> Result<&Connection, StoreError> {
        if self.finished {
            // Outside the transaction every statement would commit on its own.
            return Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISUSE),
                Some("a write after its transaction committed".to_owned()),
            )));
        }
        if !self.begun {
            if let Some(before_write) = self.before_write.take() {
                self.held = Some(before_write());
            }
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            self.begun = true;
        }
        Ok(self.conn)
    }

    /// Whether the write has begun (something was written).
    pub fn has_begun(&self) -> bool {
        self.begun
    }

    /// Loads a document inside this write (so the check sees the latest state).
    pub fn load(
        &self,
        tenant: &TenantId,
        customer: &CustomerId,
        actor: ActorId,
    ) -> Result<StoredDoc, StoreError> {
        load(self.conn, tenant, customer, actor)
    }

    /// Stores a new document (as its first snapshot) and indexes it.
    pub fn insert(&mut self, doc: &mut CustomerDoc) -> Result<StoredDoc, StoreError> {
        let exists: bool = self
            .conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM documents WHERE tenant_id = ?1 AND customer_id = ?2)",
            )?
            .query_row(params![doc.tenant().as_str(), doc.id().as_str()], |r| {
                r.get(0)
            })?;
        if exists {
            return Err(StoreError::CustomerExists {
                customer: doc.id().clone(),
            });
        }
        // The list columns from the kept summary and the calls from the kept
        // derivation: building the whole customer (its phones, every field)
        // cost a fresh device's catch-up about a sixth of its first read.
        let summary = doc.summary()?;
        let calls = doc.call_views();
        let heads = doc.heads();
        let snapshot = doc.save();
        let sp = DocSavepoint::begin(self.writer()?)?;
        let schema = doc.schema()? as i64;
        sp.prepare_cached("INSERT INTO documents (tenant_id, customer_id, snapshot_bytes, heads, company, contact, owner, status, recall_at, restriction_until, raw_bytes, schema)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?3, ?11)")?.execute(params![
                doc.tenant().as_str(),
                doc.id().as_str(),
                snapshot.len() as i64,
                encode_heads(&heads),
                summary.company,
                summary.contact,
                summary.owner.as_str(),
                summary.status.as_str(),
                summary.recall_at.map(Timestamp::as_millis),
                summary.restriction_until.map(Timestamp::as_millis),
                schema,
            ])?;
        sp.prepare_cached(
            "INSERT INTO snapshots (tenant_id, customer_id, bytes) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![doc.tenant().as_str(), doc.id().as_str(), snapshot])?;
        doc.take_changed_calls();
        let indexed = index(&sp, doc.tenant(), doc.id(), &calls, HashMap::new())?;
        bump_change_seq(&sp, doc.tenant(), doc.id())?;
        sp.commit()?;
        Ok(StoredDoc {
            doc: doc.clone(),
            saved_heads: heads,
            indexed: Some(indexed),
        })
    }

    /// Saves what changed since the document was loaded or last saved: one appended
    /// chunk, or a compaction when the chunks would outgrow the snapshot. Refreshes
    /// the list columns and the call index in the same transaction. All or nothing:
    /// a failed save leaves the transaction as it was before the call.
    pub fn save(&mut self, stored: &mut StoredDoc) -> Result<SaveOutcome, StoreError> {
        self.save_within(stored, None)
    }

    /// [`Self::save`], refusing with [`StoreError::DocumentTooLarge`] (and saving
    /// nothing) if the document's uncompressed size (the bytes of all its changes)
    /// would pass `max_bytes`: the server caps what devices make a document grow
    /// to, so that it stays small in memory and every sync of it fits one frame.
    pub fn save_within(
        &mut self,
        stored: &mut StoredDoc,
        max_bytes: Option<u64>,
    ) -> Result<SaveOutcome, StoreError> {
        self.save_document(stored, max_bytes, true)
    }

    /// [`Self::save_within`] that never compacts: the new changes are always
    /// appended, and a document whose chunks outgrew its snapshot is left for
    /// [`Store::compact`] on another thread (the server's hub, whose write turn
    /// every device of the tenant waits on, never pays for a snapshot).
    pub fn save_appending(
        &mut self,
        stored: &mut StoredDoc,
        max_bytes: Option<u64>,
    ) -> Result<SaveOutcome, StoreError> {
        self.save_document(stored, max_bytes, false)
    }

    fn save_document(
        &mut self,
        stored: &mut StoredDoc,
        max_bytes: Option<u64>,
        compact_inline: bool,
    ) -> Result<SaveOutcome, StoreError> {
        let doc = &mut stored.doc;
        let heads = doc.heads();
        if heads == stored.saved_heads {
            return Ok(SaveOutcome::Unchanged);
        }
        let (tenant, id) = (
            doc.tenant().as_str().to_owned(),
            doc.id().as_str().to_owned(),
        );
        let chunk = doc.save_after(&stored.saved_heads);
        let summary = doc.summary()?;
        // The calls whose state changed since the last save: only their index rows
        // can differ (all of them, the first save after a load).
        let changed = doc.take_changed_calls();
        let sp = DocSavepoint::begin(self.writer()?)?;
        let (snapshot_bytes, incremental_bytes, next_chunk, raw_bytes): (i64, i64, i64, i64) = sp
            .prepare_cached(
                "SELECT snapshot_bytes, incremental_bytes, next_chunk, raw_bytes FROM documents
                 WHERE tenant_id = ?1 AND customer_id = ?2",
            )?
            .query_row(params![tenant, id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?
            .ok_or_else(|| StoreError::UnknownCustomer {
                tenant: doc.tenant().clone(),
                customer: doc.id().clone(),
            })?;
        // The chunk is the new changes, uncompressed: the document's raw size grows
        // by exactly its length.
        if let Some(max) = max_bytes
            && raw_bytes.max(0) as u64 + chunk.len() as u64 > max
        {
            return Err(StoreError::DocumentTooLarge { limit: max });
        }
        let outcome = if compact_inline && incremental_bytes + chunk.len() as i64 > snapshot_bytes {
            let snapshot = doc.save();
            sp.prepare_cached(
                "UPDATE snapshots SET bytes = ?3 WHERE tenant_id = ?1 AND customer_id = ?2",
            )?
            .execute(params![tenant, id, snapshot])?;
            sp.prepare_cached("DELETE FROM chunks WHERE tenant_id = ?1 AND customer_id = ?2")?
                .execute(params![tenant, id])?;
            sp.prepare_cached(
                "UPDATE documents SET snapshot_bytes = ?3, incremental_bytes = 0
                 WHERE tenant_id = ?1 AND customer_id = ?2",
            )?
            .execute(params![tenant, id, snapshot.len() as i64])?;
            SaveOutcome::Compacted(snapshot.len())
        } else {
            sp.prepare_cached(
                "INSERT INTO chunks (tenant_id, customer_id, seq, bytes) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![tenant, id, next_chunk, chunk])?;
            sp.prepare_cached(
                "UPDATE documents SET incremental_bytes = incremental_bytes + ?3, next_chunk = ?4
                 WHERE tenant_id = ?1 AND customer_id = ?2",
            )?
            .execute(params![tenant, id, chunk.len() as i64, next_chunk + 1])?;
            SaveOutcome::Appended(chunk.len())
        };
        sp.prepare_cached(
            "UPDATE documents SET heads = ?3, company = ?4, contact = ?5, owner = ?6, status = ?7,
                 recall_at = ?8, restriction_until = ?9, raw_bytes = raw_bytes + ?10, schema = ?11
             WHERE tenant_id = ?1 AND customer_id = ?2",
        )?
        .execute(params![
            tenant,
            id,
            encode_heads(&heads),
            summary.company,
            summary.contact,
            summary.owner.as_str(),
            summary.status.as_str(),
            summary.recall_at.map(Timestamp::as_millis),
            summary.restriction_until.map(Timestamp::as_millis),
            chunk.len() as i64,
            doc.schema()? as i64,
        ])?;
        let indexed = match stored.indexed.take() {
            Some(indexed) => index(&sp, doc.tenant(), doc.id(), &changed, indexed)?,
            None => {
                let before = indexed_calls(&sp, doc.tenant(), doc.id())?;
                index(&sp, doc.tenant(), doc.id(), &doc.customer()?.calls, before)?
            }
        };
        bump_change_seq(&sp, doc.tenant(), doc.id())?;
        sp.commit()?;
        // Only now is the in-memory save point moved. If the enclosing transaction
        // is then not committed, the caller drops this document with it.
        stored.saved_heads = heads;
        stored.indexed = Some(indexed);
        Ok(outcome)
    }

    /// The user's calls on customers other than `except` that may block a new
    /// request (phases before `completed`, not cancelled or expired).
    pub fn open_calls_of(
        &self,
        tenant: &TenantId,
        user: &UserId,
        except: &CustomerId,
    ) -> Result<Vec<OpenCall>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&OPEN_CALLS_SQL)?;
        let rows = stmt.query_map(
            params![tenant.as_str(), user.as_str(), except.as_str()],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            },
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (call, phase, at) = row?;
            let Some(phase) = Phase::parse(&phase) else {
                continue;
            };
            out.push(OpenCall {
                call: CallId::new(call).map_err(CoreError::from)?,
                phase,
                requested_at: Timestamp::from_millis(at),
            });
        }
        Ok(out)
    }

    /// The customer a call belongs to.
    pub fn customer_of_call(
        &self,
        tenant: &TenantId,
        call: &CallId,
    ) -> Result<CustomerId, StoreError> {
        customer_of_call(self.conn, tenant, call)
    }

    /// The customer a call belongs to, if the call index knows the call.
    pub fn known_customer_of_call(
        &self,
        tenant: &TenantId,
        call: &CallId,
    ) -> Result<Option<CustomerId>, StoreError> {
        match customer_of_call(self.conn, tenant, call) {
            Ok(customer) => Ok(Some(customer)),
            Err(StoreError::UnknownCall { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Marks the bytes `sha256` to leave the blob store once this transaction
    /// commits.
    pub fn queue_blob_deletion(
        &mut self,
        tenant: &TenantId,
        sha256: &str,
    ) -> Result<(), StoreError> {
        self.writer()?
            .prepare_cached(
                "INSERT OR IGNORE INTO blob_deletions (tenant_id, sha256) VALUES (?1, ?2)",
            )?
            .execute(params![tenant.as_str(), sha256])?;
        Ok(())
    }

    /// Forgets a document on a device: its rows, chunks, call index entries, sync
    /// states and outbox entry (the server refused its local changes; the device
    /// fetches the server's copy again).
    pub fn forget_document(
        &mut self,
        tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<(), StoreError> {
        let writer = self.writer()?;
        for table in [
            "documents",
            "snapshots",
            "chunks",
            "calls",
            "sync_states",
            "outbox",
        ] {
            writer
                .prepare_cached(&format!(
                    "DELETE FROM {table} WHERE tenant_id = ?1 AND customer_id = ?2"
                ))?
                .execute(params![tenant.as_str(), customer.as_str()])?;
        }
        Ok(())
    }

    /// A setting, read inside this write.
    pub fn setting(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        read_setting(self.conn, key)
    }

    /// Sets a setting inside this write.
    pub fn set_setting(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        write_setting(self.writer()?, key, value)
    }

    /// Deletes a setting inside this write.
    pub fn delete_setting(&mut self, key: &str) -> Result<(), StoreError> {
        self.writer()?
            .prepare_cached("DELETE FROM settings WHERE key = ?1")?
            .execute(params![key])?;
        Ok(())
    }

    /// Commits: from here on, the write is acknowledged and durable (a write
    /// that never began has nothing to commit).
    pub fn commit(mut self) -> Result<(), StoreError> {
        self.commit_in_place()
    }

    /// Commits, keeping the value (for a caller that holds it by reference):
    /// the turn at the write lock is let go, and any later write is refused.
    pub(crate) fn commit_in_place(&mut self) -> Result<(), StoreError> {
        if self.finished {
            return Ok(());
        }
        let started = std::time::Instant::now();
        if self.begun {
            self.conn.execute_batch("COMMIT")?;
        }
        self.commit_took = Some(started.elapsed());
        self.finished = true;
        self.held = None;
        Ok(())
    }

    /// How long the commit took (SQLite's `COMMIT`, with its fsync), once it
    /// has run: for benches and metrics that tell the session's work from the
    /// disk's.
    pub fn commit_took(&self) -> Option<std::time::Duration> {
        self.commit_took
    }
}

impl StoredDoc {
    /// The call's state after the last change, for callers that just recorded one.
    pub fn call(&self, call: &CallId) -> Option<CallView> {
        self.doc.call(call)
    }
}

/// A savepoint around one document's save, so a failure half-way leaves the
/// enclosing transaction as it was. Unlike `rusqlite::Savepoint`, which parses
/// its SQL on every use, the statements are cached: the server saves a document
/// on every change it admits, and parsing showed up in its profile.
struct DocSavepoint<'c> {
    conn: &'c Connection,
    released: bool,
}

impl<'c> DocSavepoint<'c> {
    fn begin(conn: &'c Connection) -> Result<Self, StoreError> {
        conn.prepare_cached("SAVEPOINT doc_save")?.execute([])?;
        Ok(Self {
            conn,
            released: false,
        })
    }

    fn commit(mut self) -> Result<(), StoreError> {
        self.conn.prepare_cached("RELEASE doc_save")?.execute([])?;
        self.released = true;
        Ok(())
    }
}

impl std::ops::Deref for DocSavepoint<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for DocSavepoint<'_> {
    fn drop(&mut self) {
        if !self.released {
            // Undo this document's writes and leave the savepoint; if even that
            // fails the connection is broken and the enclosing transaction's
            // commit will fail too, so nothing half-written is kept.
            let _ = self
                .conn
                .execute_batch("ROLLBACK TO doc_save; RELEASE doc_save");
        }
    }
}

/// What the call index holds for a customer's calls.
fn indexed_calls(
    conn: &Connection,
    tenant: &TenantId,
    customer: &CustomerId,
) -> Result<HashMap<CallId, IndexedCall>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT call_id, phase, result_type, recording, recording_sha256
         FROM calls WHERE tenant_id = ?1 AND customer_id = ?2",
    )?;
    let rows = stmt.query_map(params![tenant.as_str(), customer.as_str()], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, Option<String>>(3)?,
            r.get::<_, Option<String>>(4)?,
        ))
    })?;
    let mut indexed = HashMap::new();
    for row in rows {
        let (call, phase, result, recording, recording_sha256) = row?;
        let recording = match recording.as_deref() {
            Some("pending") => Some("pending"),
            Some("stored") => Some("stored"),
            Some("deleted") => Some("deleted"),
            _ => None,
        };
        if let (Ok(call), Some(phase)) = (CallId::new(call), Phase::parse(&phase)) {
            indexed.insert(
                call,
                IndexedCall {
                    phase,
                    result,
                    recording,
                    recording_sha256,
                },
            );
        }
    }
    Ok(indexed)
}

/// Brings the call index in line with the customer's derived calls, writing only
/// rows whose phase or result differs from `indexed` (a 1,000-call customer
/// changes one or two per save). Returns what the index now holds. A call id
/// already indexed under another customer is refused, never re-pointed.
fn index(
    conn: &Connection,
    tenant: &TenantId,
    customer: &CustomerId,
    calls: &[Arc<CallView>],
    mut indexed: HashMap<CallId, IndexedCall>,
) -> Result<HashMap<CallId, IndexedCall>, StoreError> {
    let mut upsert = conn.prepare_cached(
        "INSERT INTO calls (tenant_id, call_id, customer_id, user_id, phase, requested_at,
                            result_type, recording, recording_sha256)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (tenant_id, call_id) DO UPDATE
           SET phase = excluded.phase, user_id = excluded.user_id,
               requested_at = excluded.requested_at, result_type = excluded.result_type,
               recording = excluded.recording, recording_sha256 = excluded.recording_sha256
           WHERE calls.customer_id = excluded.customer_id",
    )?;
    let mut delete_bytes = conn.prepare_cached(
        "INSERT OR IGNORE INTO blob_deletions (tenant_id, sha256) VALUES (?1, ?2)",
    )?;
    for call in calls {
        let now = IndexedCall::of(call);
        let before = indexed.get(&call.call);
        if before == Some(&now) {
            continue;
        }
        // A tombstone that arrives (here, or on a device) sends the bytes it
        // names out of the blob store once this transaction commits.
        let deleted_before = before.is_some_and(|b| {
            b.recording == Some("deleted") && b.recording_sha256 == now.recording_sha256
        });
        if now.recording == Some("deleted")
            && !deleted_before
            && let Some(sha256) = &now.recording_sha256
        {
            delete_bytes.execute(params![tenant.as_str(), sha256])?;
        }
        let changed = upsert.execute(params![
            tenant.as_str(),
            call.call.as_str(),
            customer.as_str(),
            call.owner().as_str(),
            call.phase.as_str(),
            call.origin_stamp.at.as_millis(),
            now.result,
            now.recording,
            now.recording_sha256,
        ])?;
        if changed == 0 {
            return Err(StoreError::CallOnAnotherCustomer {
                call: call.call.clone(),
                customer: customer.clone(),
            });
        }
        indexed.insert(call.call.clone(), now);
    }
    Ok(indexed)
}

/// Gives the document the next change sequence number: devices catching up ask
/// for the documents changed after the number they last saw.
fn bump_change_seq(
    conn: &Connection,
    tenant: &TenantId,
    customer: &CustomerId,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE documents SET change_seq = (SELECT COALESCE(MAX(change_seq), 0) + 1 FROM documents)
         WHERE tenant_id = ?1 AND customer_id = ?2",
    )?
    .execute(params![tenant.as_str(), customer.as_str()])?;
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let applied: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = MIGRATIONS.len() as u32;
    if applied > known {
        return Err(StoreError::SchemaTooNew {
            found: applied,
            supported: known,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Another process may have migrated while we waited for the lock.
        let now: u32 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if now > index as u32 {
            continue;
        }
        tx.execute_batch(sql)?;
        match index {
            2 => backfill_follow_up(&tx)?,
            5 => backfill_result_types(&tx)?,
            _ => {}
        }
        tx.pragma_update(None, "user_version", index as u32 + 1)?;
        tx.commit()?;
        tracing::info!(version = index + 1, "applied store migration");
    }
    Ok(())
}

/// Calls `backfill` with the derived customer of every stored document, for a
/// migration that fills a new column from the documents. A document that cannot
/// be read, or whose backfill fails on its data, keeps what it had (its next
/// save fills it) and is logged: it must not stop the database from opening.
fn for_each_stored_customer(
    conn: &Connection,
    what: &str,
    mut backfill: impl FnMut(&Customer) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let keys: Vec<(String, String)> = conn
        .prepare("SELECT tenant_id, customer_id FROM documents")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (tenant, customer) in keys {
        let (Ok(tenant_id), Ok(customer_id)) = (TenantId::new(&tenant), CustomerId::new(&customer))
        else {
            continue;
        };
        let filled = load(conn, &tenant_id, &customer_id, ActorId::random())
            .and_then(|stored| Ok(stored.doc.customer()?))
            .and_then(|derived| backfill(&derived));
        match filled {
            Ok(()) => {}
            // SQLite failing is not the document's fault: the migration fails.
            Err(StoreError::Sqlite(e)) => return Err(StoreError::Sqlite(e)),
            Err(err) => {
                tracing::warn!(tenant = %tenant, customer = %customer, error = %err, "could not fill a stored document's {what}");
            }
        }
    }
    Ok(())
}

/// Fills the recall and restriction columns of documents stored before migration 3.
fn backfill_follow_up(conn: &Connection) -> Result<(), StoreError> {
    for_each_stored_customer(conn, "recall", |derived| {
        conn.execute(
            "UPDATE documents SET recall_at = ?3, restriction_until = ?4
             WHERE tenant_id = ?1 AND customer_id = ?2",
            params![
                derived.tenant.as_str(),
                derived.id.as_str(),
                derived.recall_at.map(Timestamp::as_millis),
                derived.restriction_until.map(Timestamp::as_millis),
            ],
        )?;
        Ok(())
    })
}

/// Fills the result type of calls indexed before migration 6, from each stored
/// document's derived calls (once, as the upgrade runs: the dashboard would
/// otherwise count those calls without their results until each customer's next
/// save). Costs one parse of every document.
fn backfill_result_types(conn: &Connection) -> Result<(), StoreError> {
    // Only the column this migration adds: later migrations' columns do not
    // exist yet while it runs.
    let mut fill = conn.prepare(
        "UPDATE calls SET result_type = ?3 WHERE tenant_id = ?1 AND call_id = ?2
           AND customer_id = ?4",
    )?;
    for_each_stored_customer(conn, "results", |derived| {
        for call in &derived.calls {
            if let Some(result) = call.result_in_force() {
                fill.execute(params![
                    derived.tenant.as_str(),
                    call.call.as_str(),
                    result.fields.result_type.as_str(),
                    derived.id.as_str(),
                ])?;
            }
        }
        Ok(())
    })
}

/// A document's snapshot followed by every chunk, in order, read in one statement,
/// and which chunks that was.
fn read_document_bytes(
    conn: &Connection,
    tenant: &TenantId,
    customer: &CustomerId,
) -> Result<(Vec<u8>, Covered), StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT s.bytes, c.seq, c.bytes FROM snapshots s
         LEFT JOIN chunks c ON c.tenant_id = s.tenant_id AND c.customer_id = s.customer_id
         WHERE s.tenant_id = ?1 AND s.customer_id = ?2
         ORDER BY c.seq",
    )?;
    let mut rows = stmt.query(params![tenant.as_str(), customer.as_str()])?;
    let mut bytes: Vec<u8> = Vec::new();
    let mut covered = Covered::default();
    let mut found = false;
    while let Some(row) = rows.next()? {
        if !found {
            bytes.extend_from_slice(row.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?);
            found = true;
        }
        if let (Some(seq), Some(chunk)) = (
            row.get::<_, Option<i64>>(1)?,
            row.get_ref(2)?
                .as_blob_or_null()
                .map_err(rusqlite::Error::from)?,
        ) {
            bytes.extend_from_slice(chunk);
            covered.count += 1;
            covered.bytes += chunk.len() as i64;
            covered.last_seq = seq;
        }
    }
    if !found {
        return Err(StoreError::UnknownCustomer {
            tenant: tenant.clone(),
            customer: customer.clone(),
        });
    }
    Ok((bytes, covered))
}

fn load(
    conn: &Connection,
    tenant: &TenantId,
    customer: &CustomerId,
    actor: ActorId,
) -> Result<StoredDoc, StoreError> {
    let (bytes, _) = read_document_bytes(conn, tenant, customer)?;
    let mut doc = CustomerDoc::load(&bytes, actor)?;
    if doc.tenant() != tenant || doc.id() != customer {
        return Err(CoreError::MalformedDocument {
            path: "customer".into(),
            reason: format!(
                "stored as {tenant}/{customer} but the document says {}/{}",
                doc.tenant(),
                doc.id()
            ),
        }
        .into());
    }
    let saved_heads = doc.heads();
    Ok(StoredDoc {
        doc,
        saved_heads,
        indexed: None,
    })
}

/// The user's open calls on other customers: the phases the core calls open
/// ([`Phase::is_open`]), so no list of phases is kept here.
static OPEN_CALLS_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let open: Vec<String> = Phase::ALL
        .into_iter()
        .filter(|p| p.is_open())
        .map(|p| format!("'{}'", p.as_str()))
        .collect();
    format!(
        "SELECT call_id, phase, requested_at FROM calls
         WHERE tenant_id = ?1 AND user_id = ?2 AND customer_id <> ?3
           AND phase IN ({})",
        open.join(", ")
    )
});

fn customer_of_call(
    conn: &Connection,
    tenant: &TenantId,
    call: &CallId,
) -> Result<CustomerId, StoreError> {
    let id: Option<String> = conn
        .prepare_cached("SELECT customer_id FROM calls WHERE tenant_id = ?1 AND call_id = ?2")?
        .query_row(params![tenant.as_str(), call.as_str()], |r| r.get(0))
        .optional()?;
    match id {
        Some(id) => Ok(CustomerId::new(id).map_err(CoreError::from)?),
        None => Err(StoreError::UnknownCall {
            tenant: tenant.clone(),
            call: call.clone(),
        }),
    }
}

fn call_rows(
    conn: &Connection,
    tenant: &TenantId,
    customer: Option<&CustomerId>,
    user: Option<&UserId>,
) -> Result<Vec<CallRow>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT call_id, customer_id, user_id, phase, requested_at FROM calls
         WHERE tenant_id = ?1 AND (?2 IS NULL OR customer_id = ?2) AND (?3 IS NULL OR user_id = ?3)
         ORDER BY requested_at DESC, call_id",
    )?;
    let rows = stmt.query_map(
        params![
            tenant.as_str(),
            customer.map(CustomerId::as_str),
            user.map(UserId::as_str)
        ],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get(2)?,
                r.get::<_, String>(3)?,
                r.get(4)?,
            ))
        },
    )?;
    let mut out = Vec::new();
    for row in rows {
        let (call, customer, user, phase, at) = row?;
        let Some(phase) = Phase::parse(&phase) else {
            continue;
        };
        out.push(CallRow {
            call: CallId::new(call).map_err(CoreError::from)?,
            customer: CustomerId::new(customer).map_err(CoreError::from)?,
            user,
            phase,
            requested_at: Timestamp::from_millis(at),
        });
    }
    Ok(out)
}

fn encode_heads(heads: &[ChangeHash]) -> Vec<u8> {
    let mut sorted = heads.to_vec();
    sorted.sort();
    sorted.iter().flat_map(|h| h.0).collect()
}
