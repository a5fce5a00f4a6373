//! A writer process killed with SIGKILL at random moments, again and again: the
//! database always reopens, and every write it acknowledged is there.
//!
//! The writer is this test binary itself, re-run with `--ignored --exact
//! crash::store_writer_process` and the database path in the environment.

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use callsync_core::{
    ActorId, CallEvent, CallId, CustomerDoc, CustomerId, DeviceId, DeviceKind, EventId, EventKind,
    Phase, PhoneNumber, ResultCatalog, RuleContext, Stamp, TenantId, UserId,
};
use callsync_store::{Store, StoreError};
use callsync_testkit::{NUMBER, START, SplitMix64, sample_customer};

use crate::support::DataDir;

const WRITER_DB: &str = "CALLSYNC_CRASH_WRITER_DB";
const WRITER_PREFIX: &str = "CALLSYNC_CRASH_WRITER_PREFIX";

/// The writer: request a call, then cancel it, each its own committed write,
/// printing `acked <call> <phase>` after every commit, until killed.
#[test]
#[ignore = "a child process of killing_a_writer_mid_write_never_loses_an_acknowledged_write"]
fn store_writer_process() {
    let (Ok(db), Ok(prefix)) = (std::env::var(WRITER_DB), std::env::var(WRITER_PREFIX)) else {
        return;
    };
    let mut store = Store::open(std::path::Path::new(&db)).unwrap();
    let actor = ActorId::from(prefix.as_bytes());
    let customer = sample_customer();
    {
        let mut tx = store.write().unwrap();
        let mut doc = CustomerDoc::create(&customer, START, actor.clone()).unwrap();
        match tx.insert(&mut doc) {
            Ok(_) => tx.commit().unwrap(),
            Err(StoreError::CustomerExists { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    let catalog = ResultCatalog::standard();
    let ctx = RuleContext::new(&catalog);
    // Continue an hour after the latest call of earlier rounds, so no request of
    // theirs (one killed before its cancel, say) is still waiting.
    let loaded = store
        .load(&customer.tenant, &customer.id, actor.clone())
        .unwrap();
    let latest = loaded
        .doc
        .customer()
        .unwrap()
        .calls
        .iter()
        .map(|c| c.origin_stamp.at)
        .max()
        .unwrap_or(START);
    let mut stdout = std::io::stdout().lock();
    for i in 0u64.. {
        let call = CallId::new(format!("{prefix}-{i}")).unwrap();
        // Calls are an hour apart so no request is ever still waiting.
        let at = latest.plus_millis((i as i64 + 1) * 3_600_000);
        let request = EventKind::Requested {
            destination: PhoneNumber::parse(NUMBER).unwrap(),
            origin: DeviceId::new("phone-1").unwrap(),
            recording: true,
        };
        for (n, kind) in [request, EventKind::Cancelled].into_iter().enumerate() {
            let event = CallEvent {
                id: EventId::new(format!("{call}-{n}")).unwrap(),
                call: call.clone(),
                stamp: Stamp {
                    at: at.plus_millis(n as i64),
                    device: DeviceId::new("desk-1").unwrap(),
                    device_kind: DeviceKind::Desk,
                    user: UserId::new("rep@a.example").unwrap(),
                    device_at: None,
                },
                kind,
            };
            let mut tx = store.write().unwrap();
            let mut stored = tx
                .load(&customer.tenant, &customer.id, actor.clone())
                .unwrap();
            let view = stored.doc.record(event, &ctx).unwrap();
            tx.save(&mut stored).unwrap();
            tx.commit().unwrap();
            writeln!(stdout, "acked {call} {}", view.phase.as_str()).unwrap();
            stdout.flush().unwrap();
        }
    }
}

#[test]
fn killing_a_writer_mid_write_never_loses_an_acknowledged_write() {
    let data = DataDir::new();
    let db = data.path().join("callsync.sqlite");
    let mut rng = SplitMix64::new(42);
    let mut acked: Vec<(String, String)> = Vec::new();
    for round in 0..25 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "crash::store_writer_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(WRITER_DB, &db)
            .env(WRITER_PREFIX, format!("r{round}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        // Kill after a random 50–450 ms: during start-up, a load, a save, a
        // compaction or a commit, wherever the writer happens to be.
        let deadline = Instant::now() + Duration::from_millis(50 + rng.below(401) as u64);
        while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            panic!("the writer stopped by itself ({status}): {stderr}");
        }
        let _ = child.kill();
        child.wait().unwrap();
        for line in reader
            .join()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("acked "))
        {
            let mut parts = line.split(' ').skip(1);
            acked.push((
                parts.next().unwrap().to_owned(),
                parts.next().unwrap().to_owned(),
            ));
        }
        // After every kill: the file passes SQLite's own check, opens, and holds
        // every acknowledged write.
        let conn = rusqlite::Connection::open(&db).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        drop(conn);
        let store = Store::open(&db).unwrap();
        let tenant = TenantId::new("tenant-a").unwrap();
        let customer = CustomerId::new("cus-0001").unwrap();
        let doc = store
            .load(&tenant, &customer, ActorId::from(b"checker".as_slice()))
            .unwrap()
            .doc;
        for (call, phase) in &acked {
            let view = doc
                .call(&CallId::new(call.as_str()).unwrap())
                .unwrap_or_else(|| panic!("acked call {call} lost"));
            let acked_phase = Phase::parse(phase).unwrap();
            // A later, unacknowledged write may have moved it on, never back.
            assert!(
                view.phase == acked_phase || view.phase == Phase::Cancelled,
                "{call}: {:?} after an ack of {phase}",
                view.phase
            );
        }
    }
    assert!(
        acked.len() >= 40,
        "the writer should have acknowledged many writes, got {}",
        acked.len()
    );
}
