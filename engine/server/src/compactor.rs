//! The compactor: rewrites documents whose appended chunks outgrew their snapshot,
//! on a blocking thread of its own, so that no hub's write turn (which every
//! device of its tenant waits on) pays for a snapshot of a large document.
//!
//! Owns: when compaction runs (a pass every [`COMPACT_EVERY`], each document due
//! found through the store's partial index) and what a failure does (logged; the
//! document stays loadable from snapshot and chunks, and is tried again next pass).
//! Does not own: how a compaction reads and writes (`Store::compact`: the expensive
//! load and save hold no lock, the write that swaps snapshot and chunks is short).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use callsync_store::Store;

/// How often the compactor looks for documents due.
pub(crate) const COMPACT_EVERY: Duration = Duration::from_secs(1);

/// Most documents one pass compacts before it yields the thread back to the pool
/// (the rest are next pass's).
const PER_PASS: usize = 64;

/// Runs until aborted, a pass every [`COMPACT_EVERY`].
pub(crate) async fn compact_documents(store: Store) {
    let store = Arc::new(Mutex::new(store));
    let mut ticks = tokio::time::interval(COMPACT_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let store = store.clone();
        let pass = tokio::task::spawn_blocking(move || {
            let mut store = store.lock().unwrap_or_else(PoisonError::into_inner);
            compact_pass(&mut store)
        })
        .await;
        match pass {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::debug!(documents = n, "compacted"),
            Ok(Err(e)) => tracing::warn!(error = %e, "compaction failed; trying again"),
            Err(e) => tracing::warn!(error = %e, "compaction task failed; trying again"),
        }
    }
}

/// One pass: compacts up to [`PER_PASS`] documents due; returns how many it
/// rewrote. A document that fails is logged and left as it is.
pub(crate) fn compact_pass(store: &mut Store) -> Result<usize, callsync_store::StoreError> {
    let mut done = 0;
    for (tenant, customer) in store.compaction_due(PER_PASS)? {
        match store.compact(&tenant, &customer) {
            Ok(Some(_)) => done += 1,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(tenant = %tenant, customer = %customer, error = %e, "could not compact a document");
            }
        }
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
        assert_eq!(compact_pass(&mut store).unwrap(), 0, "nothing due yet");
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
        assert_eq!(compact_pass(&mut store).unwrap(), 1);
        let (_, incremental, chunks) = store.stored_sizes(&new.tenant, &new.id).unwrap();
        assert_eq!((incremental, chunks), (0, 0));
        assert_eq!(calls(&store), 30);
        assert_eq!(compact_pass(&mut store).unwrap(), 0);
    }
}
