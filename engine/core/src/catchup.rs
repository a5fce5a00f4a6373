//! Catching up after a reconnect: when a device may move its cursor forward.
//!
//! Owns: [`CatchUp`], the client side of the `join` / `peer` exchange. The server
//! answers `join` with its cursor and the documents that changed since the
//! device's cursor; the device may persist the new cursor only once it holds, for
//! every listed document, all the changes the server had when it answered. Until
//! then a crash or a cut connection leaves the old cursor, and the next `join`
//! lists those documents again: catching up is idempotent.
//! Does not own: the Automerge sync itself (per document, in the host) or
//! persisting the cursor.

use std::collections::BTreeSet;

use automerge::AutoCommit;
use automerge::sync::{BloomFilter, Have, State};

use crate::id::CustomerId;
use crate::wire::Cursor;

/// The catch-up of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatchUp {
    target: Cursor,
    pending: BTreeSet<CustomerId>,
    reported: bool,
}

impl CatchUp {
    /// Starts catching up to `target` over the `changed` documents.
    pub fn new(target: Cursor, changed: impl IntoIterator<Item = CustomerId>) -> Self {
        Self {
            target,
            pending: changed.into_iter().collect(),
            reported: false,
        }
    }

    /// Adds a document to wait for (one subscribed during the connection).
    pub fn add(&mut self, document: CustomerId) {
        self.pending.insert(document);
    }

    /// Whether `document` still has to sync before the cursor moves.
    pub fn is_pending(&self, document: &CustomerId) -> bool {
        self.pending.contains(document)
    }

    /// How many documents are still to sync.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Records that `document` now holds every change the server had (or that the
    /// server has none for this device). Returns the cursor to persist, once, when
    /// the last listed document is done.
    pub fn document_done(&mut self, document: &CustomerId) -> Option<Cursor> {
        self.pending.remove(document);
        self.reached()
    }

    /// The cursor to persist, once, if nothing is pending (a `peer` with no
    /// changed documents is caught up at once).
    pub fn reached(&mut self) -> Option<Cursor> {
        if self.pending.is_empty() && !self.reported {
            self.reported = true;
            Some(self.target.clone())
        } else {
            None
        }
    }
}

/// Prepares a sync state restored from storage for a new session.
///
/// A saved state keeps only the heads both sides shared when the last session
/// ended, not what the peer said it has; Automerge would spend a round trip
/// asking before sending anything. Assuming the peer holds exactly those shared
/// heads lets the first message carry the changes made since, so a reconnect
/// costs one message per changed document each way. If the assumption is wrong
/// (the peer lost data, or we did), Automerge notices (a missing hash resets the
/// exchange; a missing dependency is asked for) and the sync still completes.
pub fn resume(state: &mut State) {
    // A decoded state has heard nothing from the peer yet: no heads, no need.
    if state.their_heads.is_none() && !state.shared_heads.is_empty() {
        state.their_heads = Some(state.shared_heads.clone());
        state.their_need = Some(Vec::new());
        state.their_have = Some(vec![Have {
            last_sync: state.shared_heads.clone(),
            bloom: BloomFilter::default(),
        }]);
    }
}

/// Whether `doc` holds every change the peer announced in its last sync message
/// (its heads), i.e. this side has caught up with what the peer had.
pub fn holds_peer_heads(doc: &mut AutoCommit, state: &State) -> bool {
    match &state.their_heads {
        Some(heads) => heads.iter().all(|h| doc.get_change_by_hash(h).is_some()),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(seq: u64) -> Cursor {
        Cursor {
            epoch: "e".to_owned(),
            seq,
        }
    }

    fn id(s: &str) -> CustomerId {
        CustomerId::new(s).unwrap()
    }

    #[test]
    fn the_cursor_moves_once_the_last_changed_document_is_done() {
        let mut catch_up = CatchUp::new(cursor(9), [id("a"), id("b")]);
        assert_eq!(catch_up.reached(), None);
        assert_eq!(catch_up.document_done(&id("a")), None);
        assert!(catch_up.is_pending(&id("b")));
        assert_eq!(catch_up.document_done(&id("b")), Some(cursor(9)));
        assert_eq!(catch_up.document_done(&id("b")), None, "reported once");
    }

    #[test]
    fn nothing_changed_means_caught_up_at_once() {
        let mut catch_up = CatchUp::new(cursor(3), []);
        assert_eq!(catch_up.reached(), Some(cursor(3)));
        assert_eq!(catch_up.reached(), None);
    }

    #[test]
    fn a_document_not_listed_does_not_move_the_cursor_early() {
        let mut catch_up = CatchUp::new(cursor(5), [id("a")]);
        assert_eq!(catch_up.document_done(&id("z")), None);
        assert_eq!(catch_up.pending(), 1);
    }
}
