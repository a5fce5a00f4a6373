//! Property: `sync_receive::receive_sync_message` leaves the document and the sync
//! state exactly as Automerge's own `receive_sync_message` does, whatever peers
//! change, send, lose, repeat or reorder (two worlds run side by side, the only
//! difference being which receive each uses).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;

use automerge::sync::{Message, State, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ROOT};
use callsync_core::sync_receive::{Received, receive_sync_message};
use proptest::prelude::*;

const PEERS: usize = 3;

#[derive(Debug, Clone)]
enum Step {
    Change { peer: usize, key: u8 },
    Send { from: usize, to: usize },
    Deliver { from: usize, to: usize },
    Redeliver { from: usize, to: usize },
    Lose { from: usize, to: usize },
    Reset { peer: usize, of: usize },
}

fn step() -> impl Strategy<Value = Step> {
    let pair = (0..PEERS, 0..PEERS).prop_filter("two peers", |(a, b)| a != b);
    prop_oneof![
        3 => (0..PEERS, any::<u8>()).prop_map(|(peer, key)| Step::Change { peer, key }),
        4 => pair.clone().prop_map(|(from, to)| Step::Send { from, to }),
        4 => pair.clone().prop_map(|(from, to)| Step::Deliver { from, to }),
        1 => pair.clone().prop_map(|(from, to)| Step::Redeliver { from, to }),
        1 => pair.clone().prop_map(|(from, to)| Step::Lose { from, to }),
        1 => pair.prop_map(|(peer, of)| Step::Reset { peer, of }),
    ]
}

/// One world of peers: documents, each peer's state with each other peer, and
/// the messages in flight per direction (with the last one delivered, to repeat).
struct World {
    docs: Vec<AutoCommit>,
    states: Vec<Vec<State>>,
    flight: Vec<Vec<VecDeque<Vec<u8>>>>,
    last: Vec<Vec<Option<Vec<u8>>>>,
}

impl World {
    fn new() -> Self {
        let mut first = AutoCommit::new().with_actor(ActorId::from(b"peer-0".as_slice()));
        first.put(ROOT, "created", "yes").unwrap();
        first.commit();
        let docs = (0..PEERS)
            .map(|p| {
                first
                    .fork()
                    .with_actor(ActorId::from(format!("peer-{p}").as_bytes()))
            })
            .collect();
        Self {
            docs,
            states: (0..PEERS).map(|_| vec![State::new(); PEERS]).collect(),
            flight: (0..PEERS).map(|_| vec![VecDeque::new(); PEERS]).collect(),
            last: (0..PEERS).map(|_| vec![None; PEERS]).collect(),
        }
    }

    fn step(&mut self, step: &Step, ours: bool) {
        match *step {
            Step::Change { peer, key } => {
                let doc = &mut self.docs[peer];
                doc.put(ROOT, format!("k{}", key % 16), i64::from(key))
                    .unwrap();
                doc.commit();
            }
            Step::Send { from, to } => {
                if let Some(m) = self.docs[from]
                    .sync()
                    .generate_sync_message(&mut self.states[from][to])
                {
                    self.flight[from][to].push_back(m.encode());
                }
            }
            Step::Deliver { from, to } => {
                if let Some(bytes) = self.flight[from][to].pop_front() {
                    self.receive(from, to, &bytes, ours);
                    self.last[from][to] = Some(bytes);
                }
            }
            Step::Redeliver { from, to } => {
                if let Some(bytes) = self.last[from][to].clone() {
                    self.receive(from, to, &bytes, ours);
                }
            }
            Step::Lose { from, to } => {
                self.flight[from][to].pop_front();
            }
            Step::Reset { peer, of } => {
                // A reconnect: the state kept across connections only.
                let kept = self.states[peer][of].encode();
                self.states[peer][of] = State::decode(&kept).unwrap();
            }
        }
    }

    fn receive(&mut self, from: usize, to: usize, bytes: &[u8], ours: bool) {
        let message = Message::decode(bytes).unwrap();
        let (doc, state) = (&mut self.docs[to], &mut self.states[to][from]);
        if ours {
            receive_sync_message(doc, state, message).unwrap();
        } else {
            doc.sync().receive_sync_message(state, message).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, rng_seed: proptest::test_runner::RngSeed::Fixed(21), ..ProptestConfig::default() })]

    #[test]
    fn receiving_leaves_document_and_state_as_automerges_own_receive(
        steps in proptest::collection::vec(step(), 1..120)
    ) {
        let (mut theirs, mut ours) = (World::new(), World::new());
        for step in &steps {
            theirs.step(step, false);
            ours.step(step, true);
            for p in 0..PEERS {
                prop_assert_eq!(theirs.docs[p].get_heads(), ours.docs[p].get_heads());
                prop_assert_eq!(&theirs.states[p], &ours.states[p], "after {:?}", step);
            }
        }
    }
}

/// The usual exchange (a peer answering with heads that include what it was sent)
/// is received directly, never by Automerge's walk over the history.
#[test]
fn the_usual_exchange_is_received_without_the_walk() {
    let mut a = AutoCommit::new().with_actor(ActorId::from(b"a".as_slice()));
    for i in 0..3_000 {
        a.put(ROOT, format!("k{}", i % 50), i64::from(i)).unwrap();
        a.commit();
    }
    let mut b = a.fork().with_actor(ActorId::from(b"b".as_slice()));
    let (mut sa, mut sb) = (State::new(), State::new());
    let mut ways = Vec::new();
    let mut exchange = |a: &mut AutoCommit, b: &mut AutoCommit, sa: &mut State, sb: &mut State| {
        for _ in 0..4 {
            if let Some(m) = a.sync().generate_sync_message(sa) {
                ways.push(receive_sync_message(b, sb, m).unwrap());
            }
            if let Some(m) = b.sync().generate_sync_message(sb) {
                ways.push(receive_sync_message(a, sa, m).unwrap());
            }
        }
    };
    exchange(&mut a, &mut b, &mut sa, &mut sb);
    b.put(ROOT, "new", 1).unwrap();
    b.commit();
    exchange(&mut a, &mut b, &mut sa, &mut sb);
    assert_eq!(a.get_heads(), b.get_heads());
    assert!(sa.sent_hashes.is_empty() && sb.sent_hashes.is_empty());
    assert!(ways.len() >= 4, "{ways:?}");
    assert!(ways.iter().all(|w| *w == Received::Directly), "{ways:?}");
}
