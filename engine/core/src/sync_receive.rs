//! Receiving an Automerge sync message without a walk over the whole history.
//!
//! Owns: [`receive_sync_message`], which does what automerge 0.12's
//! `SyncDoc::receive_sync_message` does, with the same result for the document
//! and the sync state. Automerge's version ends by trimming the hashes it sent
//! the peer (`State::sent_hashes`) to those the peer has not seen, by walking every
//! ancestor of the peer's heads (`Automerge::filter_changes` →
//! `ChangeGraph::remove_ancestors`), so each message costs a pass over the
//! document's whole change history even when there is nothing to trim: on the
//! server, the largest part of a change's cost that grew with the customer.
//! Here, when every hash sent is one of the peer's heads (always so when nothing
//! is awaiting acknowledgement, and so in the usual exchange, where the peer
//! answers with heads that include what it was sent), the trim is that set
//! difference; otherwise the message goes to Automerge's own version.
//!
//! Does not own: generating messages, or screening and admitting what they carry.

use std::collections::BTreeSet;

use automerge::sync::{Capability, Message, MessageFlags, State, SyncDoc};
use automerge::{AutoCommit, AutomergeError, ChangeHash};

/// Which way a message was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Here, without the walk over the history.
    Directly,
    /// By Automerge's own `receive_sync_message` (hashes sent that the peer's
    /// heads do not name).
    ByAutomerge,
}

/// Applies `message` from a peer to `doc` and updates `state`, as
/// `doc.sync().receive_sync_message(state, message)` would.
pub fn receive_sync_message(
    doc: &mut AutoCommit,
    state: &mut State,
    message: Message,
) -> Result<Received, AutomergeError> {
    let reset = message
        .flags
        .is_some_and(|f| f.contains(MessageFlags::SYNC_RESET));
    if !reset && !state.sent_hashes.iter().all(|h| message.heads.contains(h)) {
        doc.sync().receive_sync_message(state, message)?;
        return Ok(Received::ByAutomerge);
    }
    state.in_flight = false;
    let before_heads = doc.get_heads();
    let Message {
        heads,
        need,
        have,
        changes,
        flags,
        ..
    } = message;
    if let Some(flags) = flags {
        // A peer that sends flags speaks version 2 (as Automerge records it).
        let mut capabilities = vec![Capability::MessageV2];
        if flags.contains(MessageFlags::SUPPORTS_SYNC_RESET) {
            capabilities.push(Capability::SyncReset);
        }
        state.their_capabilities = Some(capabilities);
        if flags.contains(MessageFlags::SYNC_RESET) {
            state.sent_hashes.clear();
        }
        state.peer_read_only = flags.contains(MessageFlags::READ_ONLY);
    }
    let no_changes = changes.is_empty();
    if !no_changes && !state.read_only {
        let joined: Vec<u8> = changes.iter().flatten().copied().collect();
        doc.load_incremental(&joined)?;
        state.shared_heads = advance_heads(&before_heads, &doc.get_heads(), &state.shared_heads);
    }
    let queue_empty = doc.get_missing_deps(&[]).is_empty();
    let mut has = |hash: &ChangeHash| {
        if queue_empty {
            doc.get_missing_deps(std::slice::from_ref(hash)).is_empty()
        } else {
            // With changes waiting, a waiting change's hash is neither missing nor
            // in the document: ask for the change itself.
            doc.get_change_meta_by_hash(hash).is_some()
        }
    };
    // Every hash sent is one of `heads` (checked above): the ones the document
    // has are what Automerge's walk over their ancestors would remove.
    let sent: Vec<ChangeHash> = state.sent_hashes.iter().copied().collect();
    for hash in sent {
        if heads.contains(&hash) && has(&hash) {
            state.sent_hashes.remove(&hash);
        }
    }
    if no_changes && heads == before_heads {
        state.last_sent_heads.clone_from(&heads);
    }
    let known: Vec<ChangeHash> = heads.iter().filter(|h| has(h)).copied().collect();
    if known.len() == heads.len() {
        state.shared_heads.clone_from(&heads);
        // A peer that lost all its data starts over.
        if heads.is_empty() {
            state.last_sent_heads = Vec::new();
            state.sent_hashes = BTreeSet::new();
        }
    } else {
        let merged: BTreeSet<ChangeHash> =
            state.shared_heads.iter().chain(&known).copied().collect();
        state.shared_heads = merged.into_iter().collect();
    }
    state.their_have = Some(have);
    state.their_heads = Some(heads);
    state.their_need = Some(need);
    Ok(Received::Directly)
}

/// The heads both peers share after applying the peer's changes: our new heads,
/// and those shared before that are still heads (Automerge's `advance_heads`).
fn advance_heads(
    old_heads: &[ChangeHash],
    new_heads: &[ChangeHash],
    shared: &[ChangeHash],
) -> Vec<ChangeHash> {
    let advanced: BTreeSet<ChangeHash> = new_heads
        .iter()
        .filter(|h| !old_heads.contains(h))
        .chain(shared.iter().filter(|h| new_heads.contains(h)))
        .copied()
        .collect();
    advanced.into_iter().collect()
}
