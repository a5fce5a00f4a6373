//! One clock across devices, the server's: a phone and a desk whose own clocks
//! are ten minutes off either way still make a whole call, through real
//! processes. Each device learns its offset when it logs in and at every join.

use serde_json::Value;

use crate::network::{NUMBER, PhoneRun, World, call_id, callsync_env};

/// Ten minutes, in seconds.
const TEN_MINUTES: i64 = 600;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The whole call with the phone `phone_skew` seconds off and the desk
/// `desk_skew` seconds off (both log in with their wrong clocks).
fn whole_call_with_skews(phone_skew: i64, desk_skew: i64) {
    let world = World::start(&[]);
    let (desk, phone) = (world.dir("rep-desk"), world.dir("rep-phone"));
    let phone_env = [("CALLSYNC_CLOCK_SKEW_SECS", phone_skew.to_string())];
    let desk_env = [("CALLSYNC_CLOCK_SKEW_SECS", desk_skew.to_string())];
    let env = |e: &[(&'static str, String)]| -> Vec<(&'static str, String)> { e.to_vec() };
    let on = |dir: &std::path::Path, e: &[(&'static str, String)], args: &[&str]| {
        let e = env(e);
        let pairs: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        callsync_env(dir, args, &pairs)
    };
    let login = |dir: &std::path::Path, e: &[(&'static str, String)], kind: &str, device: &str| {
        on(
            dir,
            e,
            &[
                kind,
                "login",
                "--server",
                &world.server.addr,
                "--fingerprint",
                &world.server.fingerprint,
                "--email",
                crate::network::REP,
                "--device-id",
                device,
            ],
        )
        .ok()
    };
    login(&desk, &desk_env, "desk", "desk-rep");
    login(&phone, &phone_env, "phone", "phone-rep");
    on(
        &desk,
        &desk_env,
        &[
            "desk",
            "create",
            "--id",
            "cus-1",
            "--company",
            "株式会社さくら物産",
            "--contact",
            "佐藤 健一",
            "--number",
            &format!("代表:{NUMBER}"),
        ],
    )
    .ok();
    let skew = phone_skew.to_string();
    let mut run = PhoneRun::start_with(&phone, &[("CALLSYNC_CLOCK_SKEW_SECS", skew.as_str())]);
    run.wait_for(|v| v["event"] == "caught-up");
    let requested = on(
        &desk,
        &desk_env,
        &["desk", "request", "cus-1", "--number", NUMBER],
    )
    .ok();
    let call = call_id(&requested);
    run.wait_for(|v| v["event"] == "call-requested");
    // The start limit compares the phone's time with the desk's: both are the
    // server's, so a phone ten minutes fast starts in time.
    let started = on(&phone, &phone_env, &["phone", "start", &call]).ok();
    assert_eq!(started["phase"], "in-call", "{started}");
    run.wait_count(|v| v["event"] == "acknowledged", 1);
    on(
        &phone,
        &phone_env,
        &["phone", "end", &call, "--duration", "30"],
    )
    .ok();
    run.wait_count(|v| v["event"] == "acknowledged", 2);
    let ended = on(&desk, &desk_env, &["desk", "end", &call]).ok();
    assert_eq!(ended["phase"], "awaiting-result", "{ended}");
    let saved = on(
        &desk,
        &desk_env,
        &["desk", "result", &call, "--type", "appointment"],
    )
    .ok();
    assert_eq!(saved["phase"], "completed", "{saved}");
    run.stop();

    // Every stamp is within a minute of the server's clock, with the device's own
    // reading beside it, off by its skew (give or take the round trip).
    let view: Value = on(&desk, &desk_env, &["desk", "show", &call]).ok();
    let real = now_ms();
    let check = |stamp: &Value, skew: i64| {
        let at = stamp["at"].as_i64().unwrap();
        assert!((real - at).abs() < 60_000, "{stamp} vs {real}");
        let device_at = stamp["device_at"].as_i64().unwrap();
        assert!(
            (device_at - at - skew * 1000).abs() < 2_000,
            "{stamp}: skew {skew} s"
        );
    };
    check(&view["origin_stamp"], desk_skew);
    check(&view["results"][0]["stamp"], desk_skew);
    assert!(
        view["flags"]
            .as_array()
            .unwrap()
            .iter()
            // The phone uploads the (short) recording when it can.
            .all(|f| f == "recording-pending" || f == "recording-stored"),
        "{view}"
    );
}

#[test]
fn a_phone_ten_minutes_fast_and_a_desk_ten_minutes_slow_make_a_whole_call() {
    whole_call_with_skews(TEN_MINUTES, -TEN_MINUTES);
}

#[test]
fn a_phone_ten_minutes_slow_and_a_desk_ten_minutes_fast_make_a_whole_call() {
    whole_call_with_skews(-TEN_MINUTES, TEN_MINUTES);
}
