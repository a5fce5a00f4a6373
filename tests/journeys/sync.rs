//! The call flow and its races across real processes: `callsync serve`, a desk
//! and a phone, over QUIC on loopback. The phone is cut off by stopping its
//! `phone run`; what it does meanwhile is local and syncs when it runs again.

use serde_json::Value;

use crate::network::{NUMBER, PhoneRun, World, call_id, callsync, create_customer, has_flag};

fn updated(call: &str, phase: &str) -> impl Fn(&Value) -> bool {
    let (call, phase) = (call.to_owned(), phase.to_owned());
    move |v| {
        v["event"] == "call-updated" && v["call"] == call.as_str() && v["phase"] == phase.as_str()
    }
}

#[test]
fn the_whole_call_flow_runs_across_server_desk_and_phone() {
    let world = World::start(&[]);
    let (desk, phone) = world.rep_devices();
    let mut run = PhoneRun::start(&phone);
    run.wait_for(|v| v["event"] == "caught-up");

    // The desk sees that the phone is awake before clicking Call customer.
    let phones = callsync(&desk, &["desk", "phones"]).ok();
    let rep_phone = phones
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "phone-rep")
        .expect("the rep's phone is listed");
    assert_eq!(rep_phone["online"], true);

    let requested = callsync(&desk, &["desk", "request", "cus-1", "--number", NUMBER]).ok();
    let call = call_id(&requested);
    assert_eq!(requested["phase"], "awaiting-start");
    let pushed = run.wait_for(|v| v["event"] == "call-requested");
    assert_eq!(pushed["call"], call.as_str());
    assert_eq!(pushed["number"], NUMBER);
    let waiting = callsync(&phone, &["phone", "requests"]).ok();
    assert_eq!(waiting[0]["call"], call.as_str());

    let started = callsync(&phone, &["phone", "start", &call]).ok();
    assert_eq!(started["phase"], "in-call");
    run.wait_for(|v| v["event"] == "acknowledged");
    assert_eq!(
        callsync(&desk, &["desk", "show", &call]).ok()["phase"],
        "in-call"
    );

    let acked = run.count(|v| v["event"] == "acknowledged");
    callsync(&phone, &["phone", "end", &call, "--duration", "42"]).ok();
    // The server confirms this second local change too.
    run.wait_count(|v| v["event"] == "acknowledged", acked + 1);
    let shown = callsync(&desk, &["desk", "show", &call]).ok();
    assert_eq!(shown["phase"], "phone-ended");

    let ended = callsync(&desk, &["desk", "end", &call]).ok();
    assert_eq!(ended["phase"], "awaiting-result");
    run.wait_for(updated(&call, "awaiting-result"));
    let pending = callsync(&desk, &["desk", "calls", "--pending"]).ok();
    assert_eq!(pending[0]["call"], call.as_str());

    let done = callsync(
        &desk,
        &[
            "desk",
            "result",
            &call,
            "--type",
            "appointment",
            "--memo",
            "来週訪問",
        ],
    )
    .ok();
    assert_eq!(done["phase"], "completed");
    run.wait_for(updated(&call, "completed"));
    let on_phone = callsync(&phone, &["phone", "show", &call]).ok();
    assert_eq!(on_phone["phase"], "completed");
    assert_eq!(on_phone["results"][0]["memo"], "来週訪問");
    run.stop();
}

#[test]
fn an_unanswered_request_expires_on_the_server_and_both_sides_see_it() {
    let world = World::start(&["--start-limit-secs", "1"]);
    let (desk, phone) = world.rep_devices();
    let mut run = PhoneRun::start(&phone);
    run.wait_for(|v| v["event"] == "caught-up");
    let call = call_id(&callsync(&desk, &["desk", "request", "cus-1", "--number", NUMBER]).ok());
    run.wait_for(|v| v["event"] == "call-requested");
    run.wait_for(updated(&call, "expired"));
    assert_eq!(
        callsync(&desk, &["desk", "show", &call]).ok()["phase"],
        "expired"
    );
    // The phone, knowing of the expiry, refuses to start.
    callsync(&phone, &["phone", "start", &call]).refused("start-limit-passed");
    run.stop();
}

#[test]
fn cancel_racing_an_offline_start_shows_started_after_cancel_on_both_sides() {
    let world = World::start(&[]);
    let (desk, phone) = world.rep_devices();
    let mut run = PhoneRun::start(&phone);
    let call = call_id(&callsync(&desk, &["desk", "request", "cus-1", "--number", NUMBER]).ok());
    run.wait_for(|v| v["event"] == "call-requested");
    run.stop();

    // The phone lost its connection; the desk cancels, the phone (not knowing)
    // starts.
    assert_eq!(
        callsync(&desk, &["desk", "cancel", &call]).ok()["phase"],
        "cancelled"
    );
    assert_eq!(
        callsync(&phone, &["phone", "start", &call]).ok()["phase"],
        "in-call"
    );

    let mut run = PhoneRun::start(&phone);
    run.wait_for(|v| v["event"] == "acknowledged");
    let on_phone = callsync(&phone, &["phone", "show", &call]).ok();
    let on_desk = callsync(&desk, &["desk", "show", &call]).ok();
    for view in [&on_phone, &on_desk] {
        assert_eq!(view["phase"], "in-call", "{view}");
        assert!(has_flag(view, "started-after-cancel"), "{view}");
    }
    assert_eq!(on_phone["flags"], on_desk["flags"]);
    run.stop();
}

#[test]
fn a_start_made_offline_within_the_limit_after_the_server_expired_it_is_flagged() {
    let world = World::start(&["--start-limit-secs", "2"]);
    let (desk, phone) = world.rep_devices();
    let mut run = PhoneRun::start(&phone);
    let call = call_id(&callsync(&desk, &["desk", "request", "cus-1", "--number", NUMBER]).ok());
    run.wait_for(|v| v["event"] == "call-requested");
    run.stop();
    // Within the limit by the phone's clock, but the server cannot hear it.
    assert_eq!(
        callsync(&phone, &["phone", "start", &call]).ok()["phase"],
        "in-call"
    );
    std::thread::sleep(std::time::Duration::from_millis(3_000));
    assert_eq!(
        callsync(&desk, &["desk", "show", &call]).ok()["phase"],
        "expired"
    );

    let mut run = PhoneRun::start(&phone);
    run.wait_for(|v| v["event"] == "acknowledged");
    let on_phone = callsync(&phone, &["phone", "show", &call]).ok();
    let on_desk = callsync(&desk, &["desk", "show", &call]).ok();
    for view in [&on_phone, &on_desk] {
        assert_eq!(view["phase"], "in-call", "{view}");
        assert!(has_flag(view, "started-after-expiry"), "{view}");
    }
    run.stop();
}

#[test]
fn results_saved_on_the_desk_and_on_an_offline_phone_are_both_kept() {
    let world = World::start(&[]);
    let (desk, phone) = world.rep_devices();
    let mut run = PhoneRun::start(&phone);
    let call = call_id(&callsync(&desk, &["desk", "request", "cus-1", "--number", NUMBER]).ok());
    run.wait_for(|v| v["event"] == "call-requested");
    callsync(&phone, &["phone", "start", &call]).ok();
    callsync(&phone, &["phone", "end", &call, "--duration", "10"]).ok();
    run.wait_for(|v| v["event"] == "acknowledged");
    callsync(&desk, &["desk", "end", &call]).ok();
    run.wait_for(updated(&call, "awaiting-result"));
    run.stop();

    callsync(&phone, &["phone", "result", &call, "--type", "no-answer"]).ok();
    callsync(&desk, &["desk", "result", &call, "--type", "appointment"]).ok();

    let mut run = PhoneRun::start(&phone);
    run.wait_for(|v| v["event"] == "acknowledged");
    let on_phone = callsync(&phone, &["phone", "show", &call]).ok();
    let on_desk = callsync(&desk, &["desk", "show", &call]).ok();
    for view in [&on_phone, &on_desk] {
        assert!(has_flag(view, "concurrent-results"), "{view}");
        assert_eq!(view["results"].as_array().unwrap().len(), 2, "{view}");
    }
    assert_eq!(on_phone["results"], on_desk["results"]);
    run.stop();
}

#[test]
fn the_browser_ending_first_is_flagged_on_both_sides() {
    let world = World::start(&[]);
    let (desk, phone) = world.rep_devices();
    let mut run = PhoneRun::start(&phone);
    let call = call_id(&callsync(&desk, &["desk", "request", "cus-1", "--number", NUMBER]).ok());
    run.wait_for(|v| v["event"] == "call-requested");
    callsync(&phone, &["phone", "start", &call]).ok();
    run.wait_for(|v| v["event"] == "acknowledged");
    let ended = callsync(&desk, &["desk", "end", &call]).ok();
    assert!(has_flag(&ended, "browser-ended-first"), "{ended}");
    let pushed = run.wait_for(updated(&call, "browser-ended"));
    assert!(has_flag(&pushed, "browser-ended-first"), "{pushed}");
    run.stop();
}

#[test]
fn a_reconnect_syncs_exactly_the_documents_that_changed() {
    let world = World::start(&[]);
    let (desk, phone) = world.rep_devices();
    // Ten customers, each with a call requested for the phone (which subscribes
    // it) and cancelled.
    let customers: Vec<String> = (1..=10).map(|i| format!("cus-{i}")).collect();
    for id in &customers[1..] {
        create_customer(&desk, id, "株式会社テスト").ok();
    }
    for id in &customers {
        let call = call_id(&callsync(&desk, &["desk", "request", id, "--number", NUMBER]).ok());
        callsync(&desk, &["desk", "cancel", &call]).ok();
    }
    let mut run = PhoneRun::start(&phone);
    run.wait_for(|v| v["event"] == "caught-up");
    run.stop();
    // Nothing changed: the reconnect lists nothing.
    let mut run = PhoneRun::start(&phone);
    assert_eq!(run.wait_for(|v| v["event"] == "joined")["changed"], 0);
    run.wait_for(|v| v["event"] == "caught-up");
    run.stop();
    // Three change while the phone is away (a call requested and cancelled on
    // each: a rep has one waiting request at a time): exactly those are synced.
    let changed = ["cus-3", "cus-5", "cus-7"];
    let mut calls = Vec::new();
    for id in changed {
        let call = call_id(&callsync(&desk, &["desk", "request", id, "--number", NUMBER]).ok());
        callsync(&desk, &["desk", "cancel", &call]).ok();
        calls.push(call);
    }
    let mut run = PhoneRun::start(&phone);
    assert_eq!(run.wait_for(|v| v["event"] == "joined")["changed"], 3);
    run.wait_for(|v| v["event"] == "caught-up");
    for call in &calls {
        run.wait_for(updated(call, "cancelled"));
    }
    let seen = run.stop();
    let mut synced: Vec<&str> = seen
        .iter()
        .filter(|v| v["event"] == "call-updated" || v["event"] == "call-requested")
        .filter_map(|v| v["customer"].as_str())
        .collect();
    synced.sort_unstable();
    synced.dedup();
    assert_eq!(synced, changed, "{seen:?}");
}
