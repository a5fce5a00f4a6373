//! Plugin re-checks as the hub's effects, on the simulated network: a message
//! saving a result is held (not saved, not forwarded) until its verdict comes
//! back as an input, the hub goes on with everything else meanwhile, and a held
//! message is never lost nor kept twice, whatever happens before its verdict.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use callsync_core::{CallId, Phase, ResultOption};
use callsync_testkit::{NUMBER, PeerId, SimNetwork};

const REP: &str = "rep@a.example";

fn three(seed: u64) -> (SimNetwork, PeerId, PeerId, PeerId) {
    let mut net = SimNetwork::seeded(seed);
    let desk = net.desk(REP);
    let phone = net.phone(REP);
    (net, 0, desk, phone)
}

/// `by` saves a result on `call` with the server's verdicts held back: sent,
/// and waiting for its verdict once the network has run.
fn save_held_result(net: &mut SimNetwork, by: PeerId, call: &CallId) {
    net.hold_verdicts(true);
    net.save_result(by, call, "no-answer", ResultOption::None)
        .unwrap();
    net.run_until_quiescent();
    assert_eq!(net.verdicts_waiting(), 1, "the result is not held");
}

fn phase(net: &SimNetwork, peer: PeerId, call: &CallId) -> Phase {
    net.call_state(peer, call).expect("the call").phase
}

/// Every replica holds the same document.
fn converged(net: &mut SimNetwork) {
    let server = net.heads(0);
    for peer in net.peers() {
        assert_eq!(
            net.heads(peer),
            server,
            "peer {peer} differs from the server"
        );
    }
}

#[test]
fn a_result_is_neither_saved_nor_forwarded_before_its_verdict_and_the_hub_goes_on_meanwhile() {
    for seed in 0..6 {
        let (mut net, server, desk, phone) = three(seed);
        // A second rep, working the same customer.
        let desk2 = net.desk("rep2@a.example");
        let phone2 = net.phone("rep2@a.example");
        let call = net.call_awaiting_result(desk, phone);
        save_held_result(&mut net, phone, &call);
        assert_eq!(
            phase(&net, server, &call),
            Phase::AwaitingResult,
            "seed {seed}: saved before its verdict"
        );
        assert_eq!(
            phase(&net, desk, &call),
            Phase::AwaitingResult,
            "seed {seed}: forwarded before its verdict"
        );
        // The same customer, from another device, while the result waits: saved
        // and forwarded at once (the held copy is now stale, and the result is
        // applied again to what the server holds when its verdict comes).
        let other = net.desk_requests_call(desk2, NUMBER, phone2);
        net.run_until_quiescent();
        assert_eq!(
            phase(&net, server, &other),
            Phase::AwaitingStart,
            "seed {seed}"
        );
        assert_eq!(
            phase(&net, phone, &other),
            Phase::AwaitingStart,
            "seed {seed}"
        );
        assert_eq!(
            phase(&net, server, &call),
            Phase::AwaitingResult,
            "seed {seed}"
        );
        net.hold_verdicts(false);
        net.run_until_quiescent();
        assert_eq!(net.verdicts_waiting(), 0, "seed {seed}");
        for peer in net.peers() {
            assert_eq!(
                phase(&net, peer, &call),
                Phase::Completed,
                "seed {seed}, peer {peer}"
            );
            assert_eq!(
                phase(&net, peer, &other),
                Phase::AwaitingStart,
                "seed {seed}, peer {peer}"
            );
        }
        converged(&mut net);
    }
}

#[test]
fn a_result_whose_verdict_comes_back_untouched_is_saved_from_the_held_copy() {
    let (mut net, server, desk, phone) = three(7);
    let call = net.call_awaiting_result(desk, phone);
    save_held_result(&mut net, desk, &call);
    assert_eq!(phase(&net, server, &call), Phase::AwaitingResult);
    assert_eq!(phase(&net, phone, &call), Phase::AwaitingResult);
    net.hold_verdicts(false);
    net.run_until_quiescent();
    for peer in net.peers() {
        assert_eq!(phase(&net, peer, &call), Phase::Completed, "peer {peer}");
    }
    converged(&mut net);
}

#[test]
fn a_result_whose_decision_does_not_hold_is_refused_and_never_stored() {
    let (mut net, server, desk, phone) = three(5);
    let call = net.call_awaiting_result(desk, phone);
    net.set_decisions_refused(true);
    let rejected_before = rejections(&net);
    net.save_result(phone, &call, "no-answer", ResultOption::None)
        .unwrap();
    net.run_until_quiescent();
    assert_eq!(
        rejections(&net),
        rejected_before + 1,
        "the phone was not told"
    );
    assert_eq!(phase(&net, server, &call), Phase::AwaitingResult);
    assert_eq!(phase(&net, desk, &call), Phase::AwaitingResult);
    assert!(
        !net.ever_committed()
            .iter()
            .any(|key| !net.event_keys(desk).contains(key)),
        "the server committed what the desk never got"
    );
    // With decisions that hold again, the same call takes a result.
    net.set_decisions_refused(false);
    net.save_result(desk, &call, "no-answer", ResultOption::None)
        .unwrap();
    net.run_until_quiescent();
    assert_eq!(phase(&net, server, &call), Phase::Completed);
    converged(&mut net);
}

fn rejections(net: &SimNetwork) -> usize {
    net.delivered()
        .iter()
        .filter(|d| d.kind == "rejected" && !d.to_server)
        .count()
}

#[test]
fn a_result_held_when_its_connection_drops_is_sent_again_and_stored_once() {
    for seed in 0..4 {
        let (mut net, server, desk, phone) = three(20 + seed);
        let call = net.call_awaiting_result(desk, phone);
        save_held_result(&mut net, phone, &call);
        // The phone's connection drops: the held message was never acknowledged,
        // so it is forgotten, and its verdict, when it comes, changes nothing.
        net.partition(phone, server);
        net.run_until_quiescent();
        net.hold_verdicts(false);
        net.run_until_quiescent();
        assert_eq!(net.verdicts_waiting(), 0, "seed {seed}");
        assert_eq!(
            phase(&net, server, &call),
            Phase::AwaitingResult,
            "seed {seed}"
        );
        // Back online, the phone sends it again: re-checked, stored once.
        net.heal(phone, server);
        net.run_until_quiescent();
        for peer in net.peers() {
            assert_eq!(
                phase(&net, peer, &call),
                Phase::Completed,
                "seed {seed}, peer {peer}"
            );
        }
        assert_eq!(net.event_keys(server), net.event_keys(phone), "seed {seed}");
        assert_eq!(net.unsent(phone).results, 0, "seed {seed}");
        converged(&mut net);
    }
}

#[test]
fn a_result_held_when_the_server_crashes_is_sent_again_and_stored_once() {
    let (mut net, server, desk, phone) = three(40);
    let call = net.call_awaiting_result(desk, phone);
    save_held_result(&mut net, phone, &call);
    net.crash(server);
    assert_eq!(
        net.verdicts_waiting(),
        0,
        "a verdict outlived the server's memory"
    );
    net.hold_verdicts(false);
    net.run_until_quiescent();
    for peer in net.peers() {
        assert_eq!(phase(&net, peer, &call), Phase::Completed, "peer {peer}");
    }
    converged(&mut net);
}

fn errors_to(net: &SimNetwork, peer: PeerId) -> usize {
    net.delivered()
        .iter()
        .filter(|d| d.kind == "error" && !d.to_server && d.device == peer)
        .count()
}

#[test]
fn a_device_sending_more_than_16_messages_behind_a_held_one_is_told_to_come_back_later() {
    let (mut net, server, desk, phone) = three(50);
    let call = net.call_awaiting_result(desk, phone);
    save_held_result(&mut net, phone, &call);
    let errors = errors_to(&net, phone);
    // 17 more messages of the same document, each waiting behind the held one
    // (the bytes are not read until then).
    let customer = callsync_core::CustomerId::new(callsync_testkit::CUSTOMER).unwrap();
    for _ in 0..17 {
        net.inject_to_server(
            phone,
            callsync_core::wire::Message::Sync {
                document_id: customer.clone(),
                data: vec![0x42],
            },
        );
    }
    net.run_until_quiescent();
    assert_eq!(errors_to(&net, phone), errors + 1, "the phone was not told");
    assert_eq!(phase(&net, server, &call), Phase::AwaitingResult);
    // Nothing is lost: the phone comes back and sends its result again.
    net.hold_verdicts(false);
    net.run_until_quiescent();
    for peer in net.peers() {
        assert_eq!(phase(&net, peer, &call), Phase::Completed, "peer {peer}");
    }
    converged(&mut net);
}

#[test]
fn past_the_messages_a_hub_may_hold_a_result_is_answered_busy_and_arrives_later() {
    let (mut net, server, desk, phone) = three(60);
    net.set_max_held(1);
    let first = net.call_awaiting_result(desk, phone);
    save_held_result(&mut net, phone, &first);
    // A second rep's result on another call, while the hub holds its one.
    let desk2 = net.desk("rep2@a.example");
    let phone2 = net.phone("rep2@a.example");
    let second = net.call_awaiting_result(desk2, phone2);
    let errors = errors_to(&net, desk2);
    net.save_result(desk2, &second, "no-answer", ResultOption::None)
        .unwrap();
    net.run_steps(60);
    assert!(
        errors_to(&net, desk2) > errors,
        "the desk was not told to come back later"
    );
    assert_eq!(net.verdicts_waiting(), 1, "a second message was held");
    assert_eq!(phase(&net, server, &second), Phase::AwaitingResult);
    net.hold_verdicts(false);
    net.run_until_quiescent();
    for peer in net.peers() {
        assert_eq!(phase(&net, peer, &first), Phase::Completed, "peer {peer}");
        assert_eq!(phase(&net, peer, &second), Phase::Completed, "peer {peer}");
    }
    converged(&mut net);
}
