//! A rep's call from the desk to the result, and the start limit, through the
//! real binary.

use crate::support::{DataDir, fixtures};

/// 2026-11-24 (a Tuesday) 10:00 JST plus `secs`.
fn at(secs: u32) -> String {
    format!("2026-11-24T10:{:02}:{:02}+09:00", secs / 60, secs % 60)
}

fn imported() -> DataDir {
    let data = DataDir::new();
    let csv = fixtures().join("customers.csv");
    let out = data
        .run_at(&at(0), &["customer", "import", csv.to_str().unwrap()])
        .ok();
    assert_eq!(out["imported"], 50);
    data
}

#[test]
fn a_call_goes_from_request_to_saved_result_and_the_customer_shows_it() {
    let data = imported();
    let before = data.run_at(&at(0), &["customer", "show", "cus-0001"]).ok();
    assert_eq!(before["status"], "未対応");

    let call = data
        .run_at(
            &at(1),
            &["call", "request", "cus-0001", "--number", "080-2618-2246"],
        )
        .ok();
    assert_eq!(call["phase"], "awaiting-start");
    assert_eq!(call["origin"]["origin"], "phone-1");
    assert_eq!(call["origin"]["recording"], true);
    let id = call["call"].as_str().unwrap().to_owned();

    let started = data.run_at(&at(9), &["call", "start", &id]).ok();
    assert_eq!(started["phase"], "in-call");
    let ended = data
        .run_at(
            &at(104),
            &["call", "end", &id, "--side", "phone", "--duration", "95"],
        )
        .ok();
    assert_eq!(ended["phase"], "phone-ended");
    let pending = data.run_at(&at(105), &["calls", "--pending"]).ok();
    assert_eq!(pending.as_array().unwrap().len(), 1);
    assert_eq!(pending[0]["call"], id.as_str());
    let ended = data
        .run_at(&at(108), &["call", "end", &id, "--side", "browser"])
        .ok();
    assert_eq!(ended["phase"], "awaiting-result");
    assert!(
        ended["flags"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f != "browser-ended-first")
    );

    let saved = data
        .run_at(
            &at(200),
            &[
                "call",
                "result",
                &id,
                "--type",
                "appointment",
                "--recall",
                "2026-11-25 14:00",
                "--memo",
                "来週訪問",
            ],
        )
        .ok();
    assert_eq!(saved["phase"], "completed");
    assert_eq!(saved["results"][0]["result_type"], "appointment");
    assert_eq!(saved["results"][0]["memo"], "来週訪問");

    let customer = data
        .run_at(&at(201), &["customer", "show", "cus-0001"])
        .ok();
    assert_eq!(customer["status"], "アポ獲得");
    // 2026-11-25 14:00 JST = 05:00 UTC.
    assert_eq!(customer["recall_at"], 1_795_582_800_000_i64);
    assert_eq!(customer["restriction_until"], serde_json::Value::Null);
    let timeline = data.run_at(&at(202), &["timeline", "cus-0001"]).ok();
    let kinds: Vec<String> = timeline
        .as_array()
        .unwrap()
        .iter()
        .map(|e| match &e["kind"] {
            // Unit kinds are a bare string; the others an object of one key.
            serde_json::Value::String(name) => name.clone(),
            serde_json::Value::Object(map) => map.keys().next().unwrap().clone(),
            other => panic!("unexpected kind {other}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "requested",
            "started",
            "phone-ended",
            "browser-ended",
            "result-saved"
        ]
    );
    assert!(
        data.run_at(&at(203), &["calls", "--pending"])
            .ok()
            .as_array()
            .unwrap()
            .is_empty()
    );
    let list = data.run_at(&at(203), &["customer", "list"]).ok();
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "cus-0001")
        .unwrap();
    assert_eq!(row["status"], "アポ獲得");
}

#[test]
fn a_request_not_started_within_a_minute_expires_and_can_no_longer_start() {
    let data = imported();
    let call = data
        .run_at(
            &at(0),
            &["call", "request", "cus-0002", "--number", "022-212-4471"],
        )
        .ok();
    let id = call["call"].as_str().unwrap().to_owned();
    assert!(
        data.run_at(&at(59), &["call", "expire-due"])
            .ok()
            .as_array()
            .unwrap()
            .is_empty()
    );
    data.run_at(&at(60), &["call", "start", &id])
        .refused("start-limit-passed");
    let expired = data.run_at(&at(61), &["call", "expire-due"]).ok();
    assert_eq!(expired[0]["phase"], "expired");
    assert_eq!(
        data.run_at(&at(62), &["call", "show", &id]).ok()["phase"],
        "expired"
    );
    // An expired request no longer blocks the rep.
    data.run_at(
        &at(70),
        &["call", "request", "cus-0002", "--number", "022-212-4471"],
    )
    .ok();
}

#[test]
fn a_cancelled_request_cannot_be_started_by_a_phone_that_knows_it() {
    let data = imported();
    let id = data
        .run_at(
            &at(0),
            &["call", "request", "cus-0003", "--number", "011-418-5429"],
        )
        .ok()["call"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        data.run_at(&at(5), &["call", "cancel", &id]).ok()["phase"],
        "cancelled"
    );
    let msg = data
        .run_at(&at(6), &["call", "start", &id])
        .refused("not-awaiting-start");
    assert!(msg.contains("cancelled"), "{msg}");
}

#[test]
fn a_manual_call_is_logged_with_its_result_in_one_step() {
    let data = imported();
    let call = data
        .run_at(
            &at(0),
            &[
                "call",
                "manual",
                "cus-0004",
                "--number",
                "03-6848-7806",
                "--type",
                "send-materials",
            ],
        )
        .ok();
    assert_eq!(call["phase"], "completed");
    assert_eq!(call["origin"]["kind"], "manual");
    let customer = data.run_at(&at(1), &["customer", "show", "cus-0004"]).ok();
    assert_eq!(customer["status"], "資料送付済み");
}

#[test]
fn the_demo_walks_one_call_end_to_end() {
    let data = DataDir::new();
    let dir = data.path().join("demo");
    let out = std::process::Command::new(crate::support::callsync_bin())
        .args([
            "demo",
            "--data",
            dir.to_str().unwrap(),
            "--now",
            "2026-11-24 10:00",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "imported 50 customers",
        "awaiting-start",
        "in-call",
        "awaiting-result",
        "refused:",
        "completed",
        "対応済み",
    ] {
        assert!(
            stdout.contains(expected),
            "demo output lacks {expected:?}:\n{stdout}"
        );
    }
    // Running it again on the same directory is refused rather than mixing data.
    let again = std::process::Command::new(crate::support::callsync_bin())
        .args(["demo", "--data", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success());
}
