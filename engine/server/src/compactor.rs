//! The compactor: rewrites documents whose appended chunks outgrew their snapshot,
//! on a blocking thread of its own, so that no hub's write turn (which every
//! device of its tenant waits on) pays for a snapshot of a large document; and
//! checkpoints SQLite's write-ahead log, which the hubs leave to it for the same
//! reason.
//!
//! Owns: when compaction runs (a pass every [`COMPACT_EVERY`], each document due
//! found through the store's partial index) and what a failure does (logged; the
//! document stays loadable from snapshot and chunks, and is tried again next pass).
//! Does not own: how a compaction reads and writes (`Store::compact`: the expensive
//! load and save hold no lock, the write that swaps snapshot and chunks is short).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use callsync_store::{Store, StoreError};

use crate::hub::WriteTurns;

/// How often the compactor looks for documents due.
pub(crate) const COMPACT_EVERY: Duration = Duration::from_secs(1);

/// Most documents one pass lists (the rest are next pass's).
const PER_PASS: usize = 64;

/// Runs until aborted, a pass every [`COMPACT_EVERY`]. Documents are compacted
/// one at a time, each followed by a pause as long as it took: the compactor uses
/// at most half of a core, in slices of one document, so a hub sharing the core
/// waits at most one document's compaction, never a whole pass. Each
/// compaction's short write waits for its turn at SQLite's write lock with the
/// hubs (`turns`): met in SQLite's own busy wait instead, a hub would sleep in
/// growing steps.
pub(crate) async fn compact_documents(store: Store, turns: Arc<WriteTurns>) {
    let store = Arc::new(Mutex::new(store));
    let mut ticks = tokio::time::interval(COMPACT_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let due = match on_store(&store, |s| s.compaction_due(PER_PASS)).await {
            Some(Ok(due)) => due,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "could not list documents to compact; trying again");
                continue;
            }
            None => continue,
        };
        for (tenant, customer) in due {
            let turns = turns.clone();
            let began = std::time::Instant::now();
            on_store(&store, move |s| {
                compact_one(s, &tenant, &customer, &|| Box::new(turns.take()))
            })
            .await;
            tokio::time::sleep(began.elapsed()).await;
        }
    }
}

/// How often the write-ahead log is checkpointed (the hubs leave it to
/// [`checkpoint_log`]).
pub(crate) const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Runs until aborted: every [`CHECKPOINT_EVERY`], copies the write-ahead log
/// into the database (a passive checkpoint, waiting on no one), so that no hub's
/// commit pays for it. Between two checkpoints the log holds at most half a
/// second of writes; a failure is logged and tried again.
pub(crate) async fn checkpoint_log(store: Store) {
    let store = Arc::new(Mutex::new(store));
    let mut ticks = tokio::time::interval(CHECKPOINT_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Some(Err(e)) = on_store(&store, |s| s.checkpoint()).await {
            tracing::warn!(error = %e, "could not checkpoint the database log; trying again");
        }
    }
}

/// Runs `work` with the store on a blocking thread (SQLite and Automerge block).
/// A task that died (a panic) is logged and answered `None`: the caller tries
/// again on its next tick.
async fn on_store<T: Send + 'static>(
    store: &Arc<Mutex<Store>>,
    work: impl FnOnce(&mut Store) -> T + Send + 'static,
) -> Option<T> {
    let store = store.clone();
    match tokio::task::spawn_blocking(move || {
        work(&mut store.lock().unwrap_or_else(PoisonError::into_inner))
    })
    .await
    {
        Ok(done) => Some(done),
        Err(e) => {
            tracing::warn!(error = %e, "store upkeep task failed; trying again");
            None
        }
    }
}

/// Compacts one document: the read and the new snapshot hold nothing, the write
/// holds what `turn` gives (the server's turn at the write lock). A failure is
/// logged and leaves
/// the document as it is. Returns whether it was rewritten.
fn compact_one(
    store: &mut Store,
    tenant: &callsync_core::TenantId,
    customer: &callsync_core::CustomerId,
    turn: &dyn Fn() -> Box<dyn std::any::Any>,
) -> bool {
    let compacted = (|| -> Result<Option<usize>, StoreError> {
        let Some(plan) = store.compaction_read(tenant, customer)? else {
            return Ok(None);
        };
        let snapshot = plan.snapshot()?;
        let _turn = turn();
        store.compaction_write(&plan, &snapshot)
    })();
    match compacted {
        Ok(done) => done.is_some(),
        Err(e) => {
            tracing::warn!(tenant = %tenant, customer = %customer, error = %e, "could not compact a document");
            false
        }
    }
}

/// One pass: compacts up to [`PER_PASS`] documents due; returns how many it
/// rewrote. A document that fails is logged and left as it is. The read and the
/// new snapshot hold nothing; the write holds what `turn` gives (the server's
/// turn at the write lock).
#[cfg(test)]
fn compact_pass(
    store: &mut Store,
    turn: &dyn Fn() -> Box<dyn std::any::Any>,
) -> Result<usize, StoreError> {
    let mut done = 0;
    for (tenant, customer) in store.compaction_due(PER_PASS)? {
        done += usize::from(compact_one(store, &tenant, &customer, turn));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use callsync_core::{
        ActorId, CallEvent, CallId, CustomerDoc, DeviceId, DeviceKind, EventId, EventKind,
        PhoneNumber, ResultCatalog, RuleContext, Stamp, UserId,
    };
    use callsync_testkit::{NUMBER, START, sample_customer};

    use super::*;

    fn request(k: i64) -> CallEvent {
        CallEvent {
            id: EventId::new(format!("rq-{k}")).unwrap(),
            call: CallId::new(format!("call-{k}")).unwrap(),
            stamp: Stamp {
                at: START.plus_millis(k * 120_000),
                device: DeviceId::new("desk-1").unwrap(),
                device_kind: DeviceKind::Desk,
                user: UserId::new("rep@a.example").unwrap(),
                device_at: None,
            },
            kind: EventKind::Requested {
                destination: PhoneNumber::parse(NUMBER).unwrap(),
                origin: DeviceId::new("phone-1").unwrap(),
                recording: false,
            },
        }
    }

    #[test]
    fn a_pass_compacts_the_documents_due_and_leaves_them_loading_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("callsync.sqlite")).unwrap();
        let actor = ActorId::from(b"server".as_slice());
        let new = sample_customer();
        let mut doc = CustomerDoc::create(&new, START, actor.clone()).unwrap();
        let mut tx = store.write().unwrap();
        tx.insert(&mut doc).unwrap();
        tx.commit().unwrap();
        let no_turn = || Box::new(()) as Box<dyn std::any::Any>;
        assert_eq!(
            compact_pass(&mut store, &no_turn).unwrap(),
            0,
            "nothing due yet"
        );
        let catalog = ResultCatalog::standard();
        let ctx = RuleContext {
            catalog: &catalog,
            start_limit_ms: 60_000,
            other_open_calls: &[],
        };
        for k in 0..30 {
            let mut tx = store.write().unwrap();
            let mut stored = tx.load(&new.tenant, &new.id, actor.clone()).unwrap();
            stored.doc.record(request(k), &ctx).unwrap();
            tx.save_appending(&mut stored, None).unwrap();
            tx.commit().unwrap();
        }
        let (snapshot, incremental, chunks) = store.stored_sizes(&new.tenant, &new.id).unwrap();
        assert!(incremental > snapshot, "due: {incremental} > {snapshot}");
        assert_eq!(chunks, 30);
        let calls = |store: &Store| {
            store
                .load(&new.tenant, &new.id, actor.clone())
                .unwrap()
                .doc
                .customer()
                .unwrap()
                .calls
                .len()
        };
        assert_eq!(calls(&store), 30);
        assert_eq!(compact_pass(&mut store, &no_turn).unwrap(), 1);
        let (_, incremental, chunks) = store.stored_sizes(&new.tenant, &new.id).unwrap();
        assert_eq!((incremental, chunks), (0, 0));
        assert_eq!(calls(&store), 30);
        assert_eq!(compact_pass(&mut store, &no_turn).unwrap(), 0);
    }
}
