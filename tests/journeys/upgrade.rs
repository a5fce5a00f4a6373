//! Data directories made by earlier releases (`fixtures/old-releases`) open with
//! this one: the store migrates them, what they hold reads back, and work goes on.

use std::path::Path;

use serde_json::Value;

use crate::network::{PhoneRun, ServerProcess, callsync, callsync_with};
use crate::support::{DataDir, fixtures};

/// Just after the first release's fixture was made (its last request at 13:39:14
/// JST), so that request is still within its start limit.
const NOW: &str = "2026-12-01 13:39:30";

/// The fixture server's owner password (set when that release made it).
const OLD_PASSWORD: &str = "old release password";

/// The schema version of the database at `path`, and whether every document's
/// raw-byte count (migration 4) starts from what it stores.
fn schema(db: &Path) -> (u32, bool) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let version: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    let consistent: bool = conn
        .query_row(
            "SELECT count(*) = 0 FROM documents
             WHERE raw_bytes != snapshot_bytes + incremental_bytes",
            [],
            |r| r.get(0),
        )
        .unwrap();
    (version, consistent)
}

fn old_version(db: &Path) -> u32 {
    rusqlite::Connection::open(db)
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap()
}

/// Logs the fixture's owner in on `server` as a `kind` (desk or phone) in `dir`.
fn login_old_owner(server: &ServerProcess, dir: &Path, kind: &str) -> Value {
    callsync_with(
        dir,
        &[
            kind,
            "login",
            "--server",
            &server.addr,
            "--fingerprint",
            &server.fingerprint,
            "--email",
            "owner@acme.example",
        ],
        OLD_PASSWORD,
    )
    .ok()
}

#[test]
fn a_local_data_directory_from_the_first_release_migrates_and_works() {
    let data = DataDir::new();
    let db = data.path().join("callsync.sqlite");
    std::fs::copy(
        fixtures().join("old-releases/v1-local/callsync.sqlite"),
        &db,
    )
    .unwrap();
    assert_eq!(old_version(&db), 1);
    let listed = data.run_at(NOW, &["customer", "list"]).ok();
    assert_eq!(listed.as_array().unwrap().len(), 50, "{listed}");
    assert_eq!(
        schema(&db),
        (callsync_store::MIGRATIONS.len() as u32, true),
        "migrated to the current schema"
    );
    let calls = data.run_at(NOW, &["calls"]).ok();
    let phase = |call: &str| -> Option<Value> {
        calls
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["call"] == call)
            .map(|c| c["phase"].clone())
    };
    assert_eq!(phase("call-92ca575509354db6"), Some("completed".into()));
    assert_eq!(
        phase("call-35cf39c8c50d4c45"),
        Some("awaiting-start".into())
    );
    // The call kept in an incremental chunk reads back whole.
    let shown = data
        .run_at(NOW, &["call", "show", "call-35cf39c8c50d4c45"])
        .ok();
    assert_eq!(shown["origin"]["destination"], "022-212-4471", "{shown}");
    // New work on a migrated document and on an untouched one.
    data.run_at(NOW, &["call", "cancel", "call-35cf39c8c50d4c45"])
        .ok();
    let requested = data
        .run_at(
            NOW,
            &["call", "request", "cus-0003", "--number", "011-418-5429"],
        )
        .ok();
    assert_eq!(requested["phase"], "awaiting-start", "{requested}");
    assert_eq!(
        data.run_at(NOW, &["call", "show", "call-35cf39c8c50d4c45"])
            .ok()["phase"],
        "cancelled"
    );
}

#[test]
fn a_server_data_directory_from_the_previous_release_migrates_and_serves() {
    let root = tempfile::tempdir().unwrap();
    let server_dir = root.path().join("server");
    std::fs::create_dir(&server_dir).unwrap();
    for file in ["callsync.sqlite", "server-cert.der", "server-key.der"] {
        std::fs::copy(
            fixtures().join("old-releases/v3-server").join(file),
            server_dir.join(file),
        )
        .unwrap();
    }
    assert_eq!(old_version(&server_dir.join("callsync.sqlite")), 3);
    let server = ServerProcess::start(&server_dir, "127.0.0.1:0", &[], &[]);
    assert_eq!(
        server.fingerprint, "84b37cd652aefee90e03c5624f2839afadfc4e27f3b50ea8f2e74016f87ad09a",
        "the certificate made by the previous release is kept"
    );
    assert_eq!(
        schema(&server.db()),
        (callsync_store::MIGRATIONS.len() as u32, true),
        "migrated to the current schema"
    );
    // The owner's password hash, tenant and configuration came through: a new desk
    // logs in, lists and opens.
    let desk = root.path().join("desk");
    login_old_owner(&server, &desk, "desk");
    let listed = callsync(&desk, &["desk", "customers"]).ok();
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");
    callsync(&desk, &["desk", "open", "cus-1", "cus-2", "cus-3"]).ok();
    assert_eq!(
        callsync(&desk, &["desk", "show", "call-2c4a51f11991452b"]).ok()["phase"],
        "cancelled"
    );
    // The request made under the previous release is long past its start limit:
    // the server's expiry writes to the migrated document.
    let mut expired = Value::Null;
    for _ in 0..50 {
        expired = callsync(&desk, &["desk", "show", "call-b9167fa2eea14dae"]).ok();
        if expired["phase"] == "expired" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(expired["phase"], "expired", "{expired}");
    // New work: a phone logs in anew (beside the previous release's phone) and a
    // call is requested for it.
    let phone = root.path().join("phone");
    let logged_in = login_old_owner(&server, &phone, "phone");
    let new_phone = logged_in["device"].as_str().unwrap().to_owned();
    let requested = callsync(
        &desk,
        &[
            "desk",
            "request",
            "cus-3",
            "--number",
            "03-1234-5673",
            "--origin",
            &new_phone,
        ],
    )
    .ok();
    assert_eq!(requested["phase"], "awaiting-start", "{requested}");
    assert_eq!(
        requested["origin"]["origin"],
        new_phone.as_str(),
        "{requested}"
    );
}

/// Made by the recordings release (`fixtures/old-releases/make-v7.sh`): a call
/// recorded on the phone while on cellular (its recording still on the phone,
/// waiting for Wi-Fi), and a call the phone then started and ended offline, the
/// two events never sent.
const V7_RECORDED: &str = "call-e2d752878a0d4812";
const V7_OFFLINE: &str = "call-3a6b7ff65c13475a";

/// Each event id of `customer`'s document on the server, with how many entries
/// hold it (the flat map and every call's map counted), and the schema.
fn events_on_server(
    db: &Path,
    customer: &str,
) -> (
    u64,
    std::collections::BTreeMap<String, usize>,
    callsync_core::CustomerDoc,
) {
    use automerge::ReadDoc;
    let store = callsync_store::Store::open(db).unwrap();
    let stored = store
        .load(
            &callsync_core::TenantId::new("acme").unwrap(),
            &callsync_core::CustomerId::new(customer).unwrap(),
            automerge::ActorId::random(),
        )
        .unwrap();
    let doc = &stored.doc;
    let am = doc.automerge();
    let mut counts = std::collections::BTreeMap::new();
    let mut count = |key: String| *counts.entry(key).or_insert(0) += 1;
    let (_, flat) = am.get(automerge::ROOT, "events").unwrap().unwrap();
    for item in am.map_range(&flat, ..) {
        count(item.key.to_string());
    }
    let (_, calls) = am.get(automerge::ROOT, "calls").unwrap().unwrap();
    for bucket in am.map_range(&calls, ..) {
        let bucket = bucket.id();
        for call in am.map_range(&bucket, ..) {
            for map in am.get_all(&bucket, call.key.as_ref()).unwrap() {
                for item in am.map_range(&map.1, ..) {
                    count(format!("{}/{}", call.key, item.key));
                }
            }
        }
    }
    (doc.schema().unwrap(), counts, stored.doc.clone())
}

#[test]
fn a_server_and_a_phone_from_the_recordings_release_upgrade_with_nothing_lost() {
    let root = tempfile::tempdir().unwrap();
    let (server_dir, phone) = (root.path().join("server"), root.path().join("phone"));
    std::fs::create_dir_all(phone.join("recordings")).unwrap();
    std::fs::create_dir(&server_dir).unwrap();
    let old = fixtures().join("old-releases");
    for file in ["callsync.sqlite", "server-cert.der", "server-key.der"] {
        std::fs::copy(old.join("v7-server").join(file), server_dir.join(file)).unwrap();
    }
    std::fs::copy(
        old.join("v7-phone/callsync.sqlite"),
        phone.join("callsync.sqlite"),
    )
    .unwrap();
    let wav = format!("recordings/{V7_RECORDED}.wav");
    std::fs::copy(old.join("v7-phone").join(&wav), phone.join(&wav)).unwrap();
    assert_eq!(old_version(&server_dir.join("callsync.sqlite")), 7);
    assert_eq!(old_version(&phone.join("callsync.sqlite")), 7);

    // The new server upgrades every stored document at start.
    let mut server = ServerProcess::start(&server_dir, "127.0.0.1:0", &[], &[]);
    assert_eq!(
        schema(&server.db()).0,
        callsync_store::MIGRATIONS.len() as u32
    );
    // The phone's login named the old server's port; the same server now listens
    // elsewhere (its certificate, and so the pinned fingerprint, is kept).
    let conn = rusqlite::Connection::open(phone.join("callsync.sqlite")).unwrap();
    let moved = conn
        .execute(
            "UPDATE settings SET value = CAST(json_set(CAST(value AS TEXT), '$.server', ?1) AS BLOB)
             WHERE key = 'session'",
            [&server.addr],
        )
        .unwrap();
    assert_eq!(moved, 1);
    drop(conn);

    // The new build's phone opens the old data directory, on Wi-Fi: its offline
    // events and its recording go up.
    let mut run = PhoneRun::start_args(&phone, &["--network", "wifi"]);
    let uploaded = run.wait_for(|v| v["event"] == "recording-uploaded" && v["call"] == V7_RECORDED);
    assert_eq!(uploaded["sent_bytes"].as_u64(), Some(27_244), "{uploaded}");
    run.wait_for(|v| v["event"] == "acknowledged");
    let on_phone = callsync(&phone, &["phone", "show", V7_OFFLINE]).ok();
    run.stop();

    // A desk sees what the phone did offline and the recording stored.
    let desk = root.path().join("desk");
    login_old_owner(&server, &desk, "desk");
    callsync(&desk, &["desk", "open", "cus-1", "cus-2"]).ok();
    let offline = callsync(&desk, &["desk", "show", V7_OFFLINE]).ok();
    assert_eq!(
        offline["phase"], on_phone["phase"],
        "{offline} / {on_phone}"
    );
    assert!(offline["started_at"].is_number(), "{offline}");
    let recorded = callsync(&desk, &["desk", "show", V7_RECORDED]).ok();
    assert_eq!(
        recorded["recording"]["size"].as_u64(),
        Some(27_244),
        "{recorded}"
    );
    server.stop();

    // On the server, every event exactly once, in schema 2.
    let (schema_1, cus_1, doc_1) = events_on_server(&server.db(), "cus-1");
    let (schema_2, cus_2, doc_2) = events_on_server(&server.db(), "cus-2");
    assert_eq!((schema_1, schema_2), (2, 2));
    for (key, n) in cus_1.iter().chain(&cus_2) {
        assert_eq!(*n, 1, "{key} is held {n} times");
    }
    let kinds = |doc: &callsync_core::CustomerDoc, call: &str| -> Vec<&'static str> {
        let mut kinds: Vec<&'static str> = doc
            .call_events(&callsync_core::CallId::new(call).unwrap())
            .iter()
            .map(|e| e.kind.name())
            .collect();
        kinds.sort();
        kinds
    };
    assert_eq!(
        kinds(&doc_1, V7_RECORDED),
        [
            "browser-ended",
            "phone-ended",
            "recording-attached",
            "requested",
            "result-saved",
            "started"
        ]
    );
    assert_eq!(cus_1.len(), 6, "{cus_1:?}");
    // Requested online; started and phone-ended from the phone's offline queue;
    // and the server's expiry, the request being days old by now.
    let mut offline = kinds(&doc_2, V7_OFFLINE);
    offline.retain(|k| *k != "expired");
    assert_eq!(offline, ["phone-ended", "requested", "started"]);
}
