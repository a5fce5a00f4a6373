//! The store on a real SQLite file: incremental saves, compaction, one-read loads,
//! refusals that change nothing, and schema versioning.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use automerge::ActorId;
use callsync_core::{
    CallEvent, CallId, CoreError, CustomerDoc, CustomerId, DeviceId, DeviceKind, EventId,
    EventKind, Phase, PhoneNumber, ResultCatalog, RuleContext, Stamp, TenantId, UserId,
};
use callsync_store::{MIGRATIONS, SaveOutcome, Store, StoreError};
use callsync_testkit::{NUMBER, START, sample_customer};

fn actor() -> ActorId {
    ActorId::from(b"store-test".as_slice())
}

fn tenant() -> TenantId {
    TenantId::new("tenant-a").unwrap()
}

fn customer_id() -> CustomerId {
    CustomerId::new("cus-0001").unwrap()
}

fn stamp(at: i64, kind: DeviceKind, device: &str) -> Stamp {
    Stamp {
        at: START.plus_millis(at),
        device: DeviceId::new(device).unwrap(),
        device_kind: kind,
        user: UserId::new("rep@a.example").unwrap(),
        device_at: None,
    }
}

fn request(call: &str, at: i64) -> CallEvent {
    CallEvent {
        id: EventId::new(format!("{call}-req")).unwrap(),
        call: CallId::new(call).unwrap(),
        stamp: stamp(at, DeviceKind::Desk, "desk-1"),
        kind: EventKind::Requested {
            destination: PhoneNumber::parse(NUMBER).unwrap(),
            origin: DeviceId::new("phone-1").unwrap(),
            recording: true,
        },
    }
}

fn cancel(call: &str, at: i64) -> CallEvent {
    CallEvent {
        id: EventId::new(format!("{call}-cancel")).unwrap(),
        call: CallId::new(call).unwrap(),
        stamp: stamp(at, DeviceKind::Desk, "desk-1"),
        kind: EventKind::Cancelled,
    }
}

fn new_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("callsync.sqlite")).unwrap();
    let mut doc = CustomerDoc::create(&sample_customer(), START, actor()).unwrap();
    let mut tx = store.write().unwrap();
    tx.insert(&mut doc).unwrap();
    tx.commit().unwrap();
    (dir, store)
}

fn record(store: &mut Store, event: CallEvent) -> Result<SaveOutcome, StoreError> {
    let catalog = ResultCatalog::standard();
    let mut tx = store.write()?;
    let mut stored = tx.load(&tenant(), &customer_id(), actor())?;
    stored.doc.record(event, &RuleContext::new(&catalog))?;
    let outcome = tx.save(&mut stored)?;
    tx.commit()?;
    Ok(outcome)
}

#[test]
fn each_save_appends_one_chunk_until_chunks_outgrow_the_snapshot_then_compacts() {
    let (_dir, mut store) = new_store();
    let (snapshot, incremental, chunks) = store.stored_sizes(&tenant(), &customer_id()).unwrap();
    assert!(snapshot > 0);
    assert_eq!((incremental, chunks), (0, 0));
    let mut outcomes = Vec::new();
    for i in 0..40 {
        let call = format!("call-{i}");
        outcomes.push(record(&mut store, request(&call, i * 120_000)).unwrap());
        outcomes.push(record(&mut store, cancel(&call, i * 120_000 + 1_000)).unwrap());
    }
    assert!(matches!(outcomes[0], SaveOutcome::Appended(n) if n > 0));
    let compactions = outcomes
        .iter()
        .filter(|o| matches!(o, SaveOutcome::Compacted(_)))
        .count();
    assert!(compactions >= 1, "{outcomes:?}");
    let (snapshot, incremental, _) = store.stored_sizes(&tenant(), &customer_id()).unwrap();
    assert!(
        incremental <= snapshot,
        "chunks {incremental} must stay below the snapshot {snapshot}"
    );
    let loaded = store.load(&tenant(), &customer_id(), actor()).unwrap();
    let customer = loaded.doc.customer().unwrap();
    assert_eq!(customer.calls.len(), 40);
    assert!(customer.calls.iter().all(|c| c.phase == Phase::Cancelled));
    assert_eq!(
        store
            .calls(&tenant(), Some(&customer_id()), None)
            .unwrap()
            .len(),
        40
    );
}

#[test]
fn a_refused_event_changes_nothing_on_disk() {
    let (dir, mut store) = new_store();
    record(&mut store, request("call-1", 0)).unwrap();
    let before = store.stored_sizes(&tenant(), &customer_id()).unwrap();
    let heads_before = store
        .load(&tenant(), &customer_id(), actor())
        .unwrap()
        .doc
        .automerge_mut()
        .get_heads();
    // A second request while the first still waits for Start call.
    let err = record(&mut store, request("call-2", 1_000)).unwrap_err();
    assert!(
        matches!(err, StoreError::Core(CoreError::RequestWaiting { .. })),
        "{err}"
    );
    assert_eq!(
        store.stored_sizes(&tenant(), &customer_id()).unwrap(),
        before
    );
    let reopened = Store::open(&dir.path().join("callsync.sqlite")).unwrap();
    let mut after = reopened.load(&tenant(), &customer_id(), actor()).unwrap();
    assert_eq!(after.doc.heads(), heads_before);
    assert_eq!(reopened.calls(&tenant(), None, None).unwrap().len(), 1);
}

#[test]
fn an_unknown_customer_is_a_typed_error() {
    let (_dir, store) = new_store();
    let err = store
        .load(&tenant(), &CustomerId::new("cus-9999").unwrap(), actor())
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownCustomer { .. }), "{err}");
    let err = store
        .load(&TenantId::new("tenant-b").unwrap(), &customer_id(), actor())
        .unwrap_err();
    assert!(
        matches!(err, StoreError::UnknownCustomer { .. }),
        "another tenant's id must not find it: {err}"
    );
}

#[test]
fn inserting_the_same_customer_twice_is_refused() {
    let (_dir, mut store) = new_store();
    let mut doc = CustomerDoc::create(&sample_customer(), START, actor()).unwrap();
    let mut tx = store.write().unwrap();
    let err = tx.insert(&mut doc).unwrap_err();
    assert!(matches!(err, StoreError::CustomerExists { .. }), "{err}");
}

#[test]
fn a_database_from_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callsync.sqlite");
    let store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as u32);
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = Store::open(&path).unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 99, .. }),
        "{err}"
    );
}

#[test]
fn a_document_filed_under_the_wrong_customer_is_refused_not_served() {
    let (dir, store) = new_store();
    drop(store);
    let conn = rusqlite::Connection::open(dir.path().join("callsync.sqlite")).unwrap();
    conn.execute("UPDATE documents SET customer_id = 'cus-0002'", [])
        .unwrap();
    conn.execute("UPDATE snapshots SET customer_id = 'cus-0002'", [])
        .unwrap();
    drop(conn);
    let store = Store::open(&dir.path().join("callsync.sqlite")).unwrap();
    let err = store
        .load(&tenant(), &CustomerId::new("cus-0002").unwrap(), actor())
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Core(CoreError::MalformedDocument { .. })),
        "{err}"
    );
}

#[test]
fn the_call_index_lists_a_users_open_calls_on_other_customers() {
    let (_dir, mut store) = new_store();
    record(&mut store, request("call-1", 0)).unwrap();
    let tx = store.write().unwrap();
    let open = tx
        .open_calls_of(
            &tenant(),
            &UserId::new("rep@a.example").unwrap(),
            &CustomerId::new("cus-0002").unwrap(),
        )
        .unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].phase, Phase::AwaitingStart);
    assert_eq!(open[0].requested_at, START);
    let none = tx
        .open_calls_of(
            &tenant(),
            &UserId::new("rep@a.example").unwrap(),
            &customer_id(),
        )
        .unwrap();
    assert!(
        none.is_empty(),
        "calls on the customer itself come from its document"
    );
}

/// Every row of the document tables, to compare before and after.
fn rows(dir: &tempfile::TempDir) -> Vec<String> {
    let conn = rusqlite::Connection::open(dir.path().join("callsync.sqlite")).unwrap();
    let mut out = Vec::new();
    for sql in [
        "SELECT customer_id, snapshot_bytes, incremental_bytes, next_chunk, hex(heads), status FROM documents",
        "SELECT customer_id, hex(bytes) FROM snapshots",
        "SELECT customer_id, seq, hex(bytes) FROM chunks ORDER BY seq",
        "SELECT call_id, customer_id, phase FROM calls ORDER BY call_id",
    ] {
        let mut stmt = conn.prepare(sql).unwrap();
        let n = stmt.column_count();
        let mut q = stmt.query([]).unwrap();
        while let Some(row) = q.next().unwrap() {
            let cols: Vec<String> = (0..n)
                .map(|i| format!("{:?}", row.get::<_, rusqlite::types::Value>(i).unwrap()))
                .collect();
            out.push(cols.join("|"));
        }
    }
    out
}

#[test]
fn a_save_that_fails_midway_leaves_the_transaction_as_it_was() {
    let (dir, mut store) = new_store();
    record(&mut store, request("call-1", 0)).unwrap();
    let before = rows(&dir);
    // Fail the save at its last document update, after the chunk went in.
    let conn = rusqlite::Connection::open(dir.path().join("callsync.sqlite")).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER fail_save BEFORE UPDATE OF heads ON documents BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
    )
    .unwrap();
    let catalog = ResultCatalog::standard();
    let mut tx = store.write().unwrap();
    let mut stored = tx.load(&tenant(), &customer_id(), actor()).unwrap();
    stored
        .doc
        .record(cancel("call-1", 1_000), &RuleContext::new(&catalog))
        .unwrap();
    let err = tx.save(&mut stored).unwrap_err();
    assert!(matches!(err, StoreError::Sqlite(_)), "{err}");
    // Even a caller that commits after the failure writes nothing of it.
    tx.commit().unwrap();
    assert_eq!(rows(&dir), before);
    conn.execute_batch("DROP TRIGGER fail_save;").unwrap();
    let loaded = store.load(&tenant(), &customer_id(), actor()).unwrap();
    assert_eq!(
        loaded
            .doc
            .call(&CallId::new("call-1").unwrap())
            .unwrap()
            .phase,
        Phase::AwaitingStart
    );
}

#[test]
fn a_call_id_already_indexed_under_another_customer_is_refused() {
    let (dir, mut store) = new_store();
    let mut other = sample_customer();
    other.id = CustomerId::new("cus-0002").unwrap();
    let mut doc = CustomerDoc::create(&other, START, actor()).unwrap();
    let mut tx = store.write().unwrap();
    tx.insert(&mut doc).unwrap();
    tx.commit().unwrap();
    record(&mut store, request("call-1", 0)).unwrap();
    let before = rows(&dir);
    let catalog = ResultCatalog::standard();
    let mut tx = store.write().unwrap();
    let mut stored = tx.load(&tenant(), &other.id, actor()).unwrap();
    stored
        .doc
        .record(request("call-1", 7_200_000), &RuleContext::new(&catalog))
        .unwrap();
    let err = tx.save(&mut stored).unwrap_err();
    assert!(
        matches!(err, StoreError::CallOnAnotherCustomer { .. }),
        "{err}"
    );
    drop(tx);
    assert_eq!(rows(&dir), before);
}

#[test]
fn a_save_past_the_size_cap_is_refused_and_leaves_the_document_as_it_was() {
    let (_dir, mut store) = new_store();
    record(&mut store, request("call-1", 0)).unwrap();
    let before = store.stored_sizes(&tenant(), &customer_id()).unwrap();
    let (snapshot, incremental, _) = before;
    let cap = snapshot + incremental + 10;
    let catalog = ResultCatalog::standard();
    let mut tx = store.write().unwrap();
    let mut stored = tx.load(&tenant(), &customer_id(), actor()).unwrap();
    stored
        .doc
        .record(cancel("call-1", 1_000), &RuleContext::new(&catalog))
        .unwrap();
    let refused = tx.save_within(&mut stored, Some(cap)).unwrap_err();
    assert!(
        matches!(refused, StoreError::DocumentTooLarge { limit } if limit == cap),
        "{refused:?}"
    );
    tx.commit().unwrap();
    assert_eq!(
        store.stored_sizes(&tenant(), &customer_id()).unwrap(),
        before
    );
    let loaded = store.load(&tenant(), &customer_id(), actor()).unwrap();
    assert_eq!(
        loaded.doc.customer().unwrap().calls[0].phase,
        Phase::AwaitingStart
    );
    // Under the cap, the same save goes through.
    let mut tx = store.write().unwrap();
    let mut stored = tx.load(&tenant(), &customer_id(), actor()).unwrap();
    stored
        .doc
        .record(cancel("call-1", 1_000), &RuleContext::new(&catalog))
        .unwrap();
    tx.save_within(&mut stored, Some(cap + 10_000)).unwrap();
    tx.commit().unwrap();
}

fn event(call: &str, name: &str, at: i64, kind: EventKind) -> CallEvent {
    let device = if matches!(kind, EventKind::Started | EventKind::PhoneEnded { .. }) {
        (DeviceKind::Phone, "phone-1")
    } else {
        (DeviceKind::Desk, "desk-1")
    };
    CallEvent {
        id: EventId::new(format!("{call}-{name}")).unwrap(),
        call: CallId::new(call).unwrap(),
        stamp: stamp(at, device.0, device.1),
        kind,
    }
}

fn result(result_type: &str) -> EventKind {
    EventKind::ResultSaved(callsync_core::SavedResultFields {
        result_type: callsync_core::ResultTypeId::new(result_type).unwrap(),
        option: callsync_core::ResultOption::None,
        customer_status: None,
        memo: String::new(),
        decision: None,
        kept_as_picked: None,
    })
}

/// A call that took place and ended, with `result` saved if given.
fn finished_call(store: &mut Store, call: &str, at: i64, saved: Option<&str>) {
    record(store, request(call, at)).unwrap();
    record(store, event(call, "start", at + 5_000, EventKind::Started)).unwrap();
    record(
        store,
        event(
            call,
            "end",
            at + 60_000,
            EventKind::PhoneEnded { duration_secs: 55 },
        ),
    )
    .unwrap();
    record(
        store,
        event(call, "bend", at + 61_000, EventKind::BrowserEnded),
    )
    .unwrap();
    if let Some(result_type) = saved {
        record(
            store,
            event(call, "result", at + 70_000, result(result_type)),
        )
        .unwrap();
    }
}

#[test]
fn the_dashboard_counts_calls_that_took_place_and_reached_results_in_the_period() {
    use callsync_store::ConfigQueries;
    let (_dir, mut store) = new_store();
    let reached: Vec<callsync_core::ResultTypeId> = ResultCatalog::standard()
        .types()
        .iter()
        .filter(|t| t.reached_person)
        .map(|t| t.id.clone())
        .collect();
    let minute = 60_000;
    finished_call(&mut store, "call-1", 0, Some("appointment"));
    finished_call(&mut store, "call-2", 10 * minute, Some("no-answer"));
    // Cancelled before the phone started: did not take place.
    record(&mut store, request("call-4", 30 * minute)).unwrap();
    record(&mut store, cancel("call-4", 30 * minute + 1_000)).unwrap();
    // Outside the period.
    finished_call(&mut store, "call-5", 120 * minute, Some("appointment"));
    // Took place, result still due (last: a due result blocks new requests).
    finished_call(&mut store, "call-3", 40 * minute, None);

    let stats = store
        .call_stats(&tenant(), START, START.plus_millis(60 * minute), &reached)
        .unwrap();
    assert_eq!(stats.len(), 1);
    let rep = &stats[0];
    assert_eq!(rep.user, "rep@a.example");
    assert_eq!((rep.calls, rep.results, rep.reached), (3, 2, 1));

    // Two results saved at once on two devices (call-3's due result): once merged,
    // the later is in force, the phase stays `completed`, and the index follows.
    let catalog = ResultCatalog::standard();
    let mut other_device = store
        .load(
            &tenant(),
            &customer_id(),
            ActorId::from(b"other-desk".as_slice()),
        )
        .unwrap()
        .doc;
    record(
        &mut store,
        event("call-3", "result-a", 50 * minute, result("no-answer")),
    )
    .unwrap();
    other_device
        .record(
            event("call-3", "result-b", 51 * minute, result("appointment")),
            &RuleContext::new(&catalog),
        )
        .unwrap();
    let stats = store
        .call_stats(&tenant(), START, START.plus_millis(60 * minute), &reached)
        .unwrap();
    assert_eq!(
        (stats[0].calls, stats[0].results, stats[0].reached),
        (3, 3, 1)
    );
    let mut tx = store.write().unwrap();
    let mut stored = tx.load(&tenant(), &customer_id(), actor()).unwrap();
    stored.doc.merge(&mut other_device).unwrap();
    tx.save(&mut stored).unwrap();
    tx.commit().unwrap();
    let stats = store
        .call_stats(&tenant(), START, START.plus_millis(60 * minute), &reached)
        .unwrap();
    assert_eq!(
        (stats[0].calls, stats[0].results, stats[0].reached),
        (3, 3, 2)
    );

    // Another tenant's period is empty.
    let other = TenantId::new("tenant-b").unwrap();
    assert!(
        store
            .call_stats(&other, START, START.plus_millis(60 * minute), &reached)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn upgrading_past_migration_6_fills_in_the_results_of_calls_indexed_before() {
    use callsync_store::ConfigQueries;
    let (dir, mut store) = new_store();
    finished_call(&mut store, "call-1", 0, Some("appointment"));
    finished_call(&mut store, "call-2", 60_000 * 10, Some("no-answer"));
    let reached = [callsync_core::ResultTypeId::new("appointment").unwrap()];
    let period = (START, START.plus_millis(3_600_000));
    let counts = |store: &Store| {
        let stats = store
            .call_stats(&tenant(), period.0, period.1, &reached)
            .unwrap();
        (stats[0].calls, stats[0].results, stats[0].reached)
    };
    assert_eq!(counts(&store), (2, 2, 1));
    drop(store);
    // The database as schema 5 left it: no result types in the index.
    let path = dir.path().join("callsync.sqlite");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "ALTER TABLE documents DROP COLUMN schema; DROP INDEX documents_to_compact;
         DROP INDEX calls_by_recording; DROP TABLE blob_deletions;
         ALTER TABLE calls DROP COLUMN recording; ALTER TABLE calls DROP COLUMN recording_sha256;
         DROP INDEX calls_by_tenant_time; ALTER TABLE calls DROP COLUMN result_type;
         PRAGMA user_version = 5;",
    )
    .unwrap();
    drop(conn);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as u32);
    assert_eq!(
        counts(&store),
        (2, 2, 1),
        "results filled in by the upgrade"
    );
}

/// The server's `recording-attached` for `call`, of bytes hashing to `sha256`.
fn attached(call: &str, at: i64, sha256: &str) -> CallEvent {
    CallEvent {
        id: EventId::new(format!("recording-{call}")).unwrap(),
        call: CallId::new(call).unwrap(),
        stamp: stamp(at, DeviceKind::Server, "server"),
        kind: EventKind::RecordingAttached(callsync_core::RecordingRef {
            sha256: sha256.to_owned(),
            size: 16_044,
            duration_ms: 1_000,
            format: "wav/pcm16".to_owned(),
        }),
    }
}

#[test]
fn a_recordings_tombstone_marks_its_bytes_for_deletion_in_the_same_transaction() {
    let (_dir, mut store) = new_store();
    let (a, b) = ("a".repeat(64), "b".repeat(64));
    finished_call(&mut store, "call-1", 0, Some("appointment"));
    let call = |id: &str| CallId::new(id).unwrap();
    assert_eq!(
        store.recording_of_call(&tenant(), &call("call-1")).unwrap(),
        Some(("pending".to_owned(), None))
    );
    record(&mut store, attached("call-1", 90_000, &a)).unwrap();
    assert_eq!(
        store.recording_of_call(&tenant(), &call("call-1")).unwrap(),
        Some(("stored".to_owned(), Some(a.clone())))
    );
    assert!(store.recording_in_use(&tenant(), &a).unwrap());
    assert!(store.pending_blob_deletions(10).unwrap().is_empty());

    // A second call holding other bytes, deleted: only its bytes are marked.
    finished_call(&mut store, "call-2", 600_000, Some("no-answer"));
    record(&mut store, attached("call-2", 690_000, &b)).unwrap();
    record(
        &mut store,
        event("call-2", "del", 700_000, EventKind::RecordingDeleted),
    )
    .unwrap();
    assert_eq!(
        store.recording_of_call(&tenant(), &call("call-2")).unwrap(),
        Some(("deleted".to_owned(), Some(b.clone())))
    );
    assert_eq!(
        store.pending_blob_deletions(10).unwrap(),
        [(tenant(), b.clone())]
    );
    assert!(!store.recording_in_use(&tenant(), &b).unwrap());
    // The document saved again: marked once, not again.
    store.blob_deletion_done(&tenant(), &b).unwrap();
    record(&mut store, request("call-3", 720_000)).unwrap();
    assert!(store.pending_blob_deletions(10).unwrap().is_empty());
    // The first call's bytes are still in use.
    assert!(store.recording_in_use(&tenant(), &a).unwrap());
}

#[test]
fn a_members_seventeenth_session_ends_the_oldest_and_only_it() {
    use callsync_store::{MAX_SESSIONS_PER_MEMBER, MemberRecord, NewSession};
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("callsync.sqlite")).unwrap();
    let owner = MemberRecord {
        tenant: tenant(),
        email: callsync_core::UserId::new("owner@acme.example").unwrap(),
        password_hash: "not a hash: never checked here".to_owned(),
        role: callsync_core::Role::Owner,
        contract: true,
    };
    store.create_tenant(&owner, START).unwrap();
    let tokens: Vec<[u8; 32]> = (0..=MAX_SESSIONS_PER_MEMBER as u8)
        .map(|i| [i; 32])
        .collect();
    for (i, token) in tokens.iter().enumerate() {
        let device = callsync_core::DeviceId::new(format!("desk-{i}")).unwrap();
        store
            .open_session(
                &owner,
                &NewSession {
                    device: &device,
                    kind: DeviceKind::Desk,
                    actor: &format!("{i:02x}"),
                    token_hash: token,
                    // Each later login's session lasts a little longer.
                    expires_at: START.plus_millis(86_400_000 + i as i64),
                },
                START.plus_millis(i as i64),
            )
            .unwrap();
    }
    assert!(
        store.session(&tokens[0]).unwrap().is_none(),
        "the oldest ended"
    );
    for token in &tokens[1..] {
        assert!(store.session(token).unwrap().is_some());
    }
}

/// Saves `event` as the server's hub does: appended, never compacted inline.
fn record_appending(store: &mut Store, event: CallEvent) -> SaveOutcome {
    let catalog = ResultCatalog::standard();
    let mut tx = store.write().unwrap();
    let mut stored = tx.load(&tenant(), &customer_id(), actor()).unwrap();
    stored
        .doc
        .record(event, &RuleContext::new(&catalog))
        .unwrap();
    let outcome = tx.save_appending(&mut stored, None).unwrap();
    tx.commit().unwrap();
    outcome
}

fn heads_and_customer(store: &Store) -> (Vec<automerge::ChangeHash>, callsync_core::Customer) {
    let mut loaded = store.load(&tenant(), &customer_id(), actor()).unwrap();
    let mut heads = loaded.doc.heads();
    heads.sort();
    (heads, loaded.doc.customer().unwrap())
}

#[test]
fn appending_saves_never_compact_and_a_compaction_elsewhere_keeps_the_document_the_same() {
    let (_dir, mut store) = new_store();
    for i in 0..40 {
        let call = format!("call-{i}");
        for event in [
            request(&call, i * 120_000),
            cancel(&call, i * 120_000 + 1_000),
        ] {
            let outcome = record_appending(&mut store, event);
            assert!(matches!(outcome, SaveOutcome::Appended(_)), "{outcome:?}");
        }
    }
    let (snapshot, incremental, chunks) = store.stored_sizes(&tenant(), &customer_id()).unwrap();
    assert!(incremental > snapshot, "chunks outgrew the snapshot");
    assert_eq!(chunks, 80);
    assert_eq!(
        store.compaction_due(10).unwrap(),
        vec![(tenant(), customer_id())]
    );
    let before = heads_and_customer(&store);

    let size = store.compact(&tenant(), &customer_id()).unwrap();
    assert!(size.is_some());
    let (snapshot, incremental, chunks) = store.stored_sizes(&tenant(), &customer_id()).unwrap();
    assert_eq!((incremental, chunks), (0, 0));
    assert_eq!(Some(snapshot as usize), size);
    assert!(store.compaction_due(10).unwrap().is_empty());
    assert_eq!(heads_and_customer(&store), before, "the same document");
    assert_eq!(
        store.compact(&tenant(), &customer_id()).unwrap(),
        None,
        "nothing left"
    );
}

#[test]
fn a_chunk_appended_during_a_compaction_stays_after_the_new_snapshot() {
    let (_dir, mut store) = new_store();
    for i in 0..10 {
        record_appending(&mut store, request(&format!("call-{i}"), i * 120_000));
        record_appending(
            &mut store,
            cancel(&format!("call-{i}"), i * 120_000 + 1_000),
        );
    }
    let plan = store
        .compaction_read(&tenant(), &customer_id())
        .unwrap()
        .unwrap();
    let snapshot = plan.snapshot().unwrap();
    // The hub saves a change while the compactor works.
    record_appending(&mut store, request("call-late", 2_000_000));
    assert!(store.compaction_write(&plan, &snapshot).unwrap().is_some());
    let (_, _, chunks) = store.stored_sizes(&tenant(), &customer_id()).unwrap();
    assert_eq!(chunks, 1, "the late chunk stays");
    let (_, customer) = heads_and_customer(&store);
    assert_eq!(
        customer.calls.len(),
        11,
        "every call, the late one included"
    );
}

#[test]
fn a_compaction_whose_chunks_were_compacted_meanwhile_writes_nothing() {
    let (_dir, mut store) = new_store();
    for i in 0..10 {
        record_appending(&mut store, request(&format!("call-{i}"), i * 120_000));
    }
    let plan = store
        .compaction_read(&tenant(), &customer_id())
        .unwrap()
        .unwrap();
    let snapshot = plan.snapshot().unwrap();
    // Another compaction got there first.
    assert!(store.compact(&tenant(), &customer_id()).unwrap().is_some());
    let after_first = store.stored_sizes(&tenant(), &customer_id()).unwrap();
    assert_eq!(store.compaction_write(&plan, &snapshot).unwrap(), None);
    assert_eq!(
        store.stored_sizes(&tenant(), &customer_id()).unwrap(),
        after_first
    );
    let (_, customer) = heads_and_customer(&store);
    assert_eq!(customer.calls.len(), 10);
}

#[test]
fn the_servers_upgrade_moves_schema_one_documents_to_two_keeping_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("callsync.sqlite")).unwrap();
    // A document as the build before schema 2 stored it, with two calls.
    let mut doc = callsync_testkit::schema_one_customer(&sample_customer(), START, actor());
    let catalog = ResultCatalog::standard();
    for event in [
        request("call-1", 0),
        cancel("call-1", 1_000),
        request("call-2", 200_000),
    ] {
        doc.record(event, &RuleContext::new(&catalog)).unwrap();
    }
    assert_eq!(doc.schema().unwrap(), 1);
    let mut tx = store.write().unwrap();
    tx.insert(&mut doc).unwrap();
    tx.commit().unwrap();
    let before = heads_and_customer(&store).1;

    let server = ActorId::from(b"server-upgrade".as_slice());
    assert_eq!(store.upgrade_documents(&server, START).unwrap().upgraded, 1);
    let mut loaded = store.load(&tenant(), &customer_id(), actor()).unwrap();
    assert_eq!(loaded.doc.schema().unwrap(), 2);
    assert_eq!(
        loaded.doc.customer().unwrap(),
        before,
        "every event, as before"
    );
    assert_eq!(
        store.upgrade_documents(&server, START).unwrap().upgraded,
        0,
        "done once"
    );
    // A new call now gets its own map; call-2 (kept in the flat map) stays there.
    let catalog = ResultCatalog::standard();
    loaded
        .doc
        .record(cancel("call-2", 201_000), &RuleContext::new(&catalog))
        .unwrap();
    let am = loaded.doc.automerge();
    let (_, events) = automerge::ReadDoc::get(am, automerge::ROOT, "events")
        .unwrap()
        .unwrap();
    assert_eq!(automerge::ReadDoc::map_range(am, &events, ..).count(), 4);
}

#[test]
fn a_document_that_does_not_load_is_named_and_left_while_the_others_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callsync.sqlite");
    let mut store = Store::open(&path).unwrap();
    let mut doc = callsync_testkit::schema_one_customer(&sample_customer(), START, actor());
    let mut tx = store.write().unwrap();
    tx.insert(&mut doc).unwrap();
    tx.commit().unwrap();
    // A second row whose bytes are not a document.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "INSERT INTO documents (tenant_id, customer_id, snapshot_bytes, heads, company, contact, owner, status)
             VALUES ('tenant-a', 'cus-broken', 3, x'', 'c', 'c', 'rep@a.example', '未対応');
         INSERT INTO snapshots (tenant_id, customer_id, bytes) VALUES ('tenant-a', 'cus-broken', x'010203');",
    )
    .unwrap();
    drop(conn);
    let report = store
        .upgrade_documents(&ActorId::from(b"server".as_slice()), START)
        .unwrap();
    assert_eq!(report.upgraded, 1);
    assert_eq!(report.unreadable.len(), 1);
    assert_eq!(report.unreadable[0].1.as_str(), "cus-broken");
    let loaded = store.load(&tenant(), &customer_id(), actor()).unwrap();
    assert_eq!(loaded.doc.schema().unwrap(), 2);
}

#[test]
fn a_writer_that_leaves_checkpoints_to_others_grows_the_log_until_another_connection_checkpoints() {
    let (dir, mut store) = new_store();
    let path = dir.path().join("callsync.sqlite");
    store.leave_checkpoints_to_others().unwrap();
    let wal = dir.path().join("callsync.sqlite-wal");
    let mut i = 0;
    // Past SQLite's default threshold of 1,000 pages, where a commit of its own
    // would have copied the log into the database and started it again.
    while std::fs::metadata(&wal).unwrap().len() < 1_100 * 4_096 {
        let call = format!("call-{i}");
        record_appending(&mut store, request(&call, i * 120_000));
        record_appending(&mut store, cancel(&call, i * 120_000 + 1_000));
        i += 1;
        assert!(i < 2_000, "the log never grew past 1,100 pages");
    }
    let before = heads_and_customer(&store);

    let checkpointer = Store::open(&path).unwrap();
    let done = checkpointer.checkpoint().unwrap();
    assert!(done.complete, "{done:?}");
    assert!(done.log_pages > 1_000, "{done:?}");
    assert_eq!(done.copied_pages, done.log_pages);

    // The next commit starts the log again from its beginning.
    record_appending(&mut store, request("call-after", 0));
    let again = checkpointer.checkpoint().unwrap();
    assert!(again.complete);
    assert!(again.log_pages < 100, "the log started again: {again:?}");
    drop((store, checkpointer));
    let reopened = Store::open(&path).unwrap();
    let (heads, customer) = heads_and_customer(&reopened);
    assert_ne!(heads, before.0, "the last save is there");
    assert!(
        customer
            .calls
            .iter()
            .any(|c| c.call.as_str() == "call-after")
    );
    assert!(customer.calls.len() > before.1.calls.len());
}

#[test]
fn a_hub_batch_committed_through_the_store_refuses_later_writes_and_keeps_what_it_committed() {
    use callsync_session::storage::HubStore;
    use callsync_store::ReplicationQueries;
    let (_dir, mut store) = new_store();
    let first = callsync_core::DeviceId::new("phone-1").unwrap();
    let second = callsync_core::DeviceId::new("phone-2").unwrap();
    let mut tx = store.write().unwrap();
    HubStore::subscribe(&mut tx, &first, &tenant(), &customer_id()).unwrap();
    HubStore::commit(&mut tx).unwrap();
    // Outside the transaction each statement would commit on its own: refused,
    // as a failure (the batch is lost, not one device's problem).
    let err = HubStore::subscribe(&mut tx, &second, &tenant(), &customer_id()).unwrap_err();
    assert!(err.is_failure(), "{err}");
    HubStore::commit(&mut tx).unwrap();
    assert!(tx.commit_took().is_some());
    drop(tx);
    assert_eq!(
        store.subscribers(&tenant(), &customer_id()).unwrap(),
        vec![first],
        "the refused write was kept, or the committed one lost"
    );
}
