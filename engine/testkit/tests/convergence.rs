//! Property: replicas that edit concurrently, with links cut and healed at random,
//! converge to identical documents and identical derived state once they can talk,
//! through the real protocol (a change the server's admission refuses is dropped
//! by the device that made it, which converges on the server's copy).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use callsync_core::{CallId, ResultOption};
use callsync_testkit::{MOBILE, NUMBER, SimNetwork};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    Request {
        desk: usize,
        phone: usize,
        mobile: bool,
    },
    Cancel {
        desk: usize,
        call: usize,
    },
    Start {
        phone: usize,
        call: usize,
    },
    PhoneEnd {
        phone: usize,
        call: usize,
    },
    DeskEnd {
        desk: usize,
        call: usize,
    },
    Result {
        peer: usize,
        call: usize,
        appointment: bool,
        option: u8,
    },
    Skew {
        device: usize,
        secs: i8,
    },
    Expire,
    Cut {
        device: usize,
    },
    Heal {
        device: usize,
    },
    Sync,
    Wait {
        secs: u8,
    },
}

/// How many call maps `doc` holds (failing if any key holds more than one value),
/// and how many entries its flat `events` map holds.
fn one_map_per_call(doc: &automerge::AutoCommit) -> (usize, usize) {
    use automerge::ReadDoc;
    let (_, calls) = doc.get(automerge::ROOT, "calls").unwrap().unwrap();
    let mut maps = 0;
    for bucket in doc.map_range(&calls, ..) {
        let bucket = bucket.id();
        for call in doc.map_range(&bucket, ..) {
            let values = doc.get_all(&bucket, call.key.as_ref()).unwrap();
            assert_eq!(
                values.len(),
                1,
                "call {} has {} maps",
                call.key,
                values.len()
            );
            maps += 1;
        }
    }
    let (_, events) = doc.get(automerge::ROOT, "events").unwrap().unwrap();
    (maps, doc.map_range(&events, ..).count())
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..2usize, 0..2usize, any::<bool>()).prop_map(|(desk, phone, mobile)| Step::Request {
            desk,
            phone,
            mobile
        }),
        (0..2usize, 0..4usize).prop_map(|(desk, call)| Step::Cancel { desk, call }),
        (0..2usize, 0..4usize).prop_map(|(phone, call)| Step::Start { phone, call }),
        (0..2usize, 0..4usize).prop_map(|(phone, call)| Step::PhoneEnd { phone, call }),
        (0..2usize, 0..4usize).prop_map(|(desk, call)| Step::DeskEnd { desk, call }),
        (0..4usize, 0..4usize, any::<bool>(), 0..3u8).prop_map(
            |(peer, call, appointment, option)| {
                Step::Result {
                    peer,
                    call,
                    appointment,
                    option,
                }
            }
        ),
        (0..4usize, any::<i8>()).prop_map(|(device, secs)| Step::Skew { device, secs }),
        Just(Step::Expire),
        (0..4usize).prop_map(|device| Step::Cut { device }),
        (0..4usize).prop_map(|device| Step::Heal { device }),
        Just(Step::Sync),
        any::<u8>().prop_map(|secs| Step::Wait { secs }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, rng_seed: proptest::test_runner::RngSeed::Fixed(11), ..ProptestConfig::default() })]

    #[test]
    fn replicas_editing_concurrently_converge_to_identical_documents_and_states(
        seed in any::<u64>(),
        steps in prop::collection::vec(step(), 1..40),
    ) {
        let mut net = SimNetwork::seeded(seed);
        // Two desks and two phones: two reps, each with a desk and a phone.
        let desks = [net.desk("rep1@a.example"), net.desk("rep2@a.example")];
        let phones = [net.phone("rep1@a.example"), net.phone("rep2@a.example")];
        let devices = [desks[0], desks[1], phones[0], phones[1]];
        let server = net.server();
        let mut calls: Vec<CallId> = Vec::new();
        let pick = |calls: &Vec<CallId>, i: usize| calls.get(i % calls.len().max(1)).cloned();
        for step in steps {
            // Refusals are expected (the rules are doing their job); only convergence matters here.
            match step {
                Step::Request { desk, phone, mobile } => {
                    let number = if mobile { MOBILE } else { NUMBER };
                    let call = CallId::new(format!("c{}", calls.len())).unwrap();
                    let kind = callsync_core::EventKind::Requested {
                        destination: callsync_core::PhoneNumber::parse(number).unwrap(),
                        origin: net.device_id(phones[phone]).clone(),
                        recording: true,
                    };
                    if net.record(desks[desk], &call, kind).is_ok() { calls.push(call); }
                }
                Step::Cancel { desk, call } => if let Some(c) = pick(&calls, call) { let _ = net.desk_cancels(desks[desk], &c); },
                Step::Start { phone, call } => if let Some(c) = pick(&calls, call) { let _ = net.phone_starts(phones[phone], &c); },
                Step::PhoneEnd { phone, call } => if let Some(c) = pick(&calls, call) { let _ = net.phone_ends(phones[phone], &c, 42); },
                Step::DeskEnd { desk, call } => if let Some(c) = pick(&calls, call) { let _ = net.desk_ends(desks[desk], &c); },
                Step::Result { peer, call, appointment, option } => if let Some(c) = pick(&calls, call) {
                    let later = net.now().plus_millis(86_400_000).ceil_to_option_step();
                    let (t, option) = match option {
                        0 => (if appointment { "appointment" } else { "no-answer" }, ResultOption::None),
                        1 => (if appointment { "appointment" } else { "no-answer" }, ResultOption::Recall { at: later }),
                        _ => ("do-not-call", ResultOption::Restriction { until: later }),
                    };
                    let _ = net.save_result(devices[peer], &c, t, option);
                },
                Step::Skew { device, secs } => net.set_clock_skew(devices[device], i64::from(secs) * 1000),
                Step::Expire => { net.server_expires_due(); }
                Step::Cut { device } => net.partition(devices[device], server),
                Step::Heal { device } => net.heal(devices[device], server),
                Step::Sync => { net.run_until_quiescent(); }
                Step::Wait { secs } => net.advance(i64::from(secs) * 1000),
            }
        }
        for device in devices { net.heal(device, server); }
        net.run_until_quiescent();
        let heads = net.heads(server);
        let customer = net.customer(server);
        for peer in devices {
            prop_assert_eq!(&net.heads(peer), &heads);
            prop_assert_eq!(&net.customer(peer), &customer);
        }
        // What every replica kept between reads equals a derivation from scratch.
        for peer in net.peers() {
            prop_assert_eq!(&net.fresh_customer(peer), &customer);
        }
        // Schema 2: no call's map was ever created twice (each key of each bucket
        // holds one map), and every event lives in its call's map.
        for peer in net.peers() {
            let (maps, flat) = net.with_doc(peer, |doc| one_map_per_call(doc.automerge()));
            prop_assert_eq!(maps, customer.calls.len());
            prop_assert_eq!(flat, 0);
        }
    }
}
