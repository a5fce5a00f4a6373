//! Result-rule plugins across real processes: an admin installs a plugin on the
//! server, the configuration reaches a running phone, the phone decides a result
//! offline with it, the server re-runs the decision and accepts it (even after a
//! rollback), the desk sees the same decision and the recall list; refusals of
//! members and of files that are not plugins; a restriction blocking requests.

use std::path::{Path, PathBuf};

use chrono::{Datelike, TimeZone, Timelike};
use serde_json::Value;

use crate::network::{NUMBER, PhoneRun, World, call_id, callsync};

/// Writes a plugin file into the world's root.
fn plugin_file(world: &World, name: &str, bytes: &[u8]) -> PathBuf {
    let path = world.dir(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn install(desk: &Path, file: &Path, extra: &[&str]) -> crate::support::Run {
    let file = file.to_str().unwrap();
    let mut args = vec!["admin", "plugin", "install", file];
    args.extend_from_slice(extra);
    callsync(desk, &args)
}

fn active_plugin(desk: &Path) -> String {
    let list = callsync(desk, &["admin", "plugin", "list"]).ok();
    let active = list["active"].as_str().unwrap().to_owned();
    let ruleset = list["rulesets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == active.as_str())
        .unwrap();
    format!(
        "{}@{}",
        ruleset["plugin"]["id"].as_str().unwrap(),
        ruleset["plugin"]["version"].as_str().unwrap()
    )
}

/// Requests a call, starts and ends it on the phone, ends it on the desk.
fn call_to_awaiting_result(desk: &Path, phone: &Path, run: &mut PhoneRun) -> String {
    let call = call_id(&callsync(desk, &["desk", "request", "cus-1", "--number", NUMBER]).ok());
    run.wait_for(|v| v["event"] == "call-requested" && v["call"] == call.as_str());
    callsync(phone, &["phone", "start", &call]).ok();
    callsync(phone, &["phone", "end", &call, "--duration", "30"]).ok();
    let acked = run.count(|v| v["event"] == "acknowledged");
    run.wait_count(|v| v["event"] == "acknowledged", acked.max(1));
    callsync(desk, &["desk", "end", &call]).ok();
    let c = call.clone();
    run.wait_for(move |v| {
        v["event"] == "call-updated" && v["call"] == c.as_str() && v["phase"] == "awaiting-result"
    });
    call
}

/// Saves a `no-answer` result on the phone with the recall time left to the rules.
fn recall_auto(phone: &Path, call: &str) -> Value {
    callsync(
        phone,
        &[
            "phone",
            "result",
            call,
            "--type",
            "no-answer",
            "--recall",
            "auto",
        ],
    )
    .ok()
}

/// Whether `ms` is inside the business-hours plugin's default hours in Tokyo:
/// a weekday that is not a holiday, 10:00–12:00 or 13:00–17:00, on a 5-minute step.
fn in_business_hours(ms: i64) -> bool {
    let local = chrono_tz::Asia::Tokyo.timestamp_millis_opt(ms).unwrap();
    let minutes = local.hour() * 60 + local.minute();
    let holiday = callsync_plugin_host::holidays::japan().contains(&local.date_naive());
    local.weekday().num_days_from_monday() < 5
        && !holiday
        && ms % 300_000 == 0
        && ((600..720).contains(&minutes) || (780..1020).contains(&minutes))
}

#[test]
fn a_phone_decides_offline_with_the_installed_plugin_and_the_server_agrees_after_a_rollback() {
    let world = World::start(&[]);
    let (desk, phone) = world.rep_devices();
    assert_eq!(
        active_plugin(&world.admin_desk),
        "standard@1.0.0",
        "a new tenant starts with the standard plugin"
    );

    let mut run = PhoneRun::start(&phone);
    run.wait_for(|v| v["event"] == "caught-up");
    let hours = plugin_file(
        &world,
        "business-hours.wasm",
        callsync_shipped_plugins::BUSINESS_HOURS,
    );
    let installed = install(&world.admin_desk, &hours, &[]).ok();
    assert_eq!(installed["plugin"]["id"], "business-hours");
    // The configuration reaches the running phone.
    run.wait_for(|v| {
        v["event"] == "config-changed"
            && v["plugin"]
                .as_str()
                .unwrap()
                .starts_with("business-hours@1.0.0")
    });

    let call = call_to_awaiting_result(&desk, &phone, &mut run);
    run.stop();

    // Offline: the phone shows the result form's types and decides with the plugin.
    let types = callsync(&phone, &["phone", "types"]).ok();
    assert_eq!(types.as_array().unwrap().len(), 5);
    let saved = recall_auto(&phone, &call);
    let result = &saved["results"][0];
    assert_eq!(result["decision"]["plugin"]["id"], "business-hours");
    assert_eq!(result["decision"]["plugin"]["version"], "1.0.0");
    assert_eq!(result["decision"]["needs_review"], Value::Null);
    assert_eq!(result["option"]["kind"], "recall");
    let recall_at = result["option"]["at"].as_i64().unwrap();
    assert!(
        in_business_hours(recall_at),
        "recall at {recall_at} is outside business hours"
    );

    // Meanwhile the admin rolls back to the standard plugin: the rule set the phone
    // used stays available, so the server can still re-run its decision.
    let standard = plugin_file(&world, "standard.wasm", callsync_shipped_plugins::STANDARD);
    install(&world.admin_desk, &standard, &[]).ok();
    assert_eq!(active_plugin(&world.admin_desk), "standard@1.0.0");

    let mut run = PhoneRun::start(&phone);
    run.wait_for(|v| v["event"] == "acknowledged");
    let events = run.stop();
    assert!(
        !events.iter().any(|v| v["event"] == "rejected"),
        "{events:?}"
    );
    let on_desk = callsync(&desk, &["desk", "show", &call]).ok();
    assert_eq!(
        on_desk["results"], saved["results"],
        "the same decision on every device"
    );

    let recalls = callsync(&desk, &["desk", "recalls"]).ok();
    assert_eq!(recalls[0]["id"], "cus-1");
    assert_eq!(recalls[0]["recallAt"].as_i64(), Some(recall_at));

    let list = callsync(&world.admin_desk, &["admin", "plugin", "list"]).ok();
    assert_eq!(list["installs"].as_array().unwrap().len(), 3, "{list}");
    assert_eq!(list["rulesets"].as_array().unwrap().len(), 2, "{list}");

    // A rollback by rule set id (a prefix, as the list shows it), with the plugin
    // and settings the desk holds: the same request the admin screen sends.
    let hours_id = list["rulesets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["plugin"]["id"] == "business-hours")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    callsync(
        &world.admin_desk,
        &["admin", "plugin", "rollback", &hours_id[..12]],
    )
    .ok();
    assert_eq!(active_plugin(&world.admin_desk), "business-hours@1.0.0");
    callsync(
        &world.admin_desk,
        &["admin", "plugin", "rollback", "ffffffffffff"],
    )
    .refused("unknown-ruleset");
    let list = callsync(&world.admin_desk, &["admin", "plugin", "list"]).ok();
    assert_eq!(list["installs"].as_array().unwrap().len(), 4, "{list}");
    assert_eq!(list["rulesets"][0]["active"], true, "{list}");
}

#[test]
fn members_cannot_install_and_files_that_are_not_plugins_are_refused_over_the_wire() {
    let world = World::start(&[]);
    let (desk, _phone) = world.rep_devices();
    let hours = plugin_file(
        &world,
        "business-hours.wasm",
        callsync_shipped_plugins::BUSINESS_HOURS,
    );
    install(&desk, &hours, &[]).refused("role-required");
    let hostile = callsync_shipped_plugins::hostile::IMPORTS_WASI;
    for (name, bytes, code) in [
        (
            "v2.wasm",
            callsync_shipped_plugins::hostile::API_V2,
            "plugin-api-unsupported",
        ),
        ("wasi.wasm", hostile, "plugin-imports"),
        ("notes.txt", b"not a plugin".as_slice(), "plugin-not-wasm"),
        (
            "half.wasm",
            &callsync_shipped_plugins::STANDARD[..4_000],
            "plugin-invalid",
        ),
    ] {
        let file = plugin_file(&world, name, bytes);
        install(&world.admin_desk, &file, &[]).refused(code);
    }
    install(
        &world.admin_desk,
        &hours,
        &["--setting", "hours=25:00-26:00"],
    )
    .refused("plugin-settings-refused");
    install(&world.admin_desk, &hours, &["--time-zone", "Mars/Olympus"])
        .refused("unknown-time-zone");
    let bad_table = plugin_file(
        &world,
        "holidays.csv",
        "date,name\n2026-13-40,nope\n".as_bytes(),
    );
    install(
        &world.admin_desk,
        &hours,
        &["--holidays", bad_table.to_str().unwrap()],
    )
    .refused("bad-holidays");
    assert_eq!(
        active_plugin(&world.admin_desk),
        "standard@1.0.0",
        "nothing changed"
    );
}

#[test]
fn a_restriction_decided_on_the_desk_blocks_new_requests() {
    let world = World::start(&[]);
    let (desk, phone) = world.rep_devices();
    let mut run = PhoneRun::start(&phone);
    run.wait_for(|v| v["event"] == "caught-up");
    let call = call_to_awaiting_result(&desk, &phone, &mut run);
    let until = chrono::Utc::now() + chrono::Duration::days(30);
    let until = until
        .with_second(0)
        .unwrap()
        .with_minute(0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    // A restriction needs a time: the plugin's refusal comes back with its code.
    callsync(&desk, &["desk", "result", &call, "--type", "do-not-call"])
        .refused("option-not-allowed");
    let done = callsync(
        &desk,
        &[
            "desk",
            "result",
            &call,
            "--type",
            "do-not-call",
            "--restrict-until",
            &until,
        ],
    )
    .ok();
    assert_eq!(done["results"][0]["decision"]["plugin"]["id"], "standard");
    callsync(&desk, &["desk", "request", "cus-1", "--number", NUMBER])
        .refused("customer-restricted");
    run.stop();
}

/// Rewrites the settings of every rule set in a device's stored configuration
/// (what a tampered device would do), returning the original bytes.
fn tamper_with_settings(device: &Path, settings: Value) -> Vec<u8> {
    use automerge::{ReadDoc, transaction::Transactable};
    let db = rusqlite::Connection::open(device.join("callsync.sqlite")).unwrap();
    let original: Vec<u8> = db
        .query_row("SELECT bytes FROM tenant_configs", [], |r| r.get(0))
        .unwrap();
    let mut doc = automerge::AutoCommit::load(&original).unwrap();
    let (_, rulesets) = doc.get(automerge::ROOT, "rulesets").unwrap().unwrap();
    let keys: Vec<String> = doc.keys(&rulesets).collect();
    for key in keys {
        let (value, _) = doc.get(&rulesets, &key).unwrap().unwrap();
        let mut ruleset: Value = serde_json::from_str(&value.into_string().unwrap()).unwrap();
        ruleset["settings"] = settings.clone();
        doc.put(&rulesets, &key, ruleset.to_string()).unwrap();
    }
    db.execute("UPDATE tenant_configs SET bytes = ?1", [doc.save()])
        .unwrap();
    original
}

#[test]
fn a_decision_made_with_tampered_rules_is_rejected_by_the_server() {
    let world = World::start(&[]);
    let (desk, phone) = world.rep_devices();
    let mut run = PhoneRun::start(&phone);
    run.wait_for(|v| v["event"] == "caught-up");
    let call = call_to_awaiting_result(&desk, &phone, &mut run);
    run.stop();

    // The phone decides with settings the tenant never installed, under the
    // installed rule set's name, then puts its configuration back so that only
    // the decision is off.
    let original = tamper_with_settings(
        &phone,
        serde_json::json!([{ "key": "recall-after-minutes", "value": "240" }]),
    );
    let saved = recall_auto(&phone, &call);
    assert_eq!(saved["results"][0]["option"]["kind"], "recall");
    let db = rusqlite::Connection::open(phone.join("callsync.sqlite")).unwrap();
    db.execute("UPDATE tenant_configs SET bytes = ?1", [original])
        .unwrap();

    let mut run = PhoneRun::start(&phone);
    let rejected = run.wait_for(|v| v["event"] == "rejected");
    assert_eq!(rejected["code"], "decision-mismatch", "{rejected}");
    run.stop();
    let on_desk = callsync(&desk, &["desk", "show", &call]).ok();
    assert_eq!(
        on_desk["phase"], "awaiting-result",
        "the server stored nothing: {on_desk}"
    );
    assert_eq!(
        callsync(&desk, &["desk", "recalls"]).ok(),
        serde_json::json!([])
    );
}

#[test]
fn a_device_that_changes_the_configuration_is_cut_off_then_resyncs_and_nothing_changes() {
    let world = World::start(&[]);
    let (_desk, phone) = world.rep_devices();
    let mut run = PhoneRun::start(&phone);
    run.wait_for(|v| v["event"] == "config-changed");
    run.stop();
    let before = callsync(&world.admin_desk, &["admin", "plugin", "list"]).ok();
    tamper_with_settings(
        &phone,
        serde_json::json!([{ "key": "recall-after-minutes", "value": "5" }]),
    );
    let mut run = PhoneRun::start(&phone);
    let cut = run.wait_for(|v| v["event"] == "disconnected");
    assert!(
        cut["reason"]
            .as_str()
            .unwrap()
            .contains("changed only by installing plugins"),
        "{cut}"
    );
    // The phone forgets its diverged copy and, reconnecting, gets the server's.
    run.wait_for(|v| v["event"] == "config-changed");
    run.stop();
    let after = callsync(&world.admin_desk, &["admin", "plugin", "list"]).ok();
    assert_eq!(before, after, "the server's configuration is unchanged");
    let db = rusqlite::Connection::open(phone.join("callsync.sqlite")).unwrap();
    let held: Vec<u8> = db
        .query_row("SELECT bytes FROM tenant_configs", [], |r| r.get(0))
        .unwrap();
    let held = callsync_core::tenant_config::TenantConfigDoc::load(
        &held,
        callsync_core::ActorId::random(),
    )
    .unwrap()
    .config()
    .unwrap();
    assert!(!held.rulesets.is_empty());
    assert!(
        held.rulesets.values().all(|r| r.settings.is_empty()),
        "the tampered settings are gone"
    );
}

/// The standard plugin with a custom section of `size` incompressible bytes:
/// another build (another hash), as large as needed.
fn padded_standard(seed: u64, size: usize) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"padding";
    let mut payload = Vec::with_capacity(size);
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    while payload.len() < size {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        payload.extend_from_slice(&state.to_le_bytes());
    }
    let mut section = Vec::new();
    leb128(name.len(), &mut section);
    section.extend_from_slice(name);
    section.extend_from_slice(&payload);
    let mut module = callsync_shipped_plugins::STANDARD.to_vec();
    module.push(0);
    leb128(section.len(), &mut module);
    module.extend_from_slice(&section);
    module
}

#[test]
fn a_configuration_that_would_outgrow_one_frame_is_refused() {
    let world = World::start(&[]);
    let big = 1_900_000;
    let mut refused = None;
    for seed in 1..=4 {
        let file = plugin_file(
            &world,
            &format!("padded-{seed}.wasm"),
            &padded_standard(seed, big),
        );
        let run = install(&world.admin_desk, &file, &[]);
        if run.code != 0 {
            refused = Some((seed, run.refused("config-too-large")));
            break;
        }
    }
    let (seed, _) = refused.expect("an install past 6 MiB is refused");
    assert_eq!(seed, 4, "three 1.9 MB builds fit, the fourth does not");
    let list = callsync(&world.admin_desk, &["admin", "plugin", "list"]).ok();
    assert_eq!(
        list["installs"].as_array().unwrap().len(),
        4,
        "standard + three"
    );
}
