//! Data directories made by earlier releases (`fixtures/old-releases`) open with
//! this one: the store migrates them, what they hold reads back, and work goes on.

use std::path::Path;

use serde_json::Value;

use crate::network::{ServerProcess, callsync, callsync_with};
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
