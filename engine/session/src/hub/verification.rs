//! Plugin re-checks as effects: a device's message that saves a result is held
//! while the decision is re-run off the hub, and settled when the verdict comes
//! back as an input.
//!
//! Owns: which messages need a re-check, holding one (the document with the
//! message applied, taken out of the cache, and the device's sync state), the
//! [`Verification`] the driver runs and what it reads ([`RuleSource`]), the
//! verdict's three outcomes, the device's messages that wait behind a held one,
//! and forgetting held messages whose connection is gone or whose batch was
//! lost. Does not own: running WebAssembly (the [`ResultRules`] the driver's
//! thread calls) or the plugin time budget's arithmetic (`rules`).
//!
//! # Why a held message cannot be lost or leak
//!
//! - Nothing of it is saved, sent or fanned out before its verdict: its
//!   document is out of the cache, so every other reader (another device's
//!   message, a catch-up, an expiry) loads what storage holds.
//! - The device hears nothing of the document until then, so an honest device
//!   sends nothing more for it; what it does send waits behind the held message,
//!   in order (at most [`MAX_WAITING_BEHIND_HELD`] messages).
//! - If the document was read from storage meanwhile (and may have changed),
//!   the held copy is stale: the message is applied again to what is current,
//!   its results already checked. Otherwise the held copy goes back into the
//!   cache and is saved as if it had never left.
//! - A held message whose connection closes, or whose hub batch is lost, is
//!   forgotten: it was never acknowledged, so the device sends it again.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use automerge::sync;
use callsync_core::event::{CallEvent, EventKind};
use callsync_core::tenant_config::{TenantConfig, TenantConfigDoc};
use callsync_core::wire::{ErrorBody, Refusal};
use callsync_core::{CallId, CustomerId, SavedResultFields, TenantId, Timestamp};

use super::{Batch, HubSession, contained, unreadable_config};
use crate::ConnId;
use crate::rules::ResultRules;
use crate::storage::{HubStore, LoadedDoc, StorageError};

/// Messages a hub holds for their verdicts at once, over every device, unless
/// its settings say otherwise: past it, a device saving a result is asked to
/// come back later (`busy`).
pub const MAX_HELD_MESSAGES: usize = 256;
/// Messages of one connection and document that may wait behind a held one:
/// an honest device sends none (it waits for the server's answer); past it the
/// connection is closed with `busy` and the device syncs again later.
pub const MAX_WAITING_BEHIND_HELD: usize = 16;

/// Whether a held message's decisions hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every decision holds: the message is admitted.
    Holds,
    /// A decision does not hold: the message is refused with this error.
    Refused(ErrorBody),
    /// The tenant's plugin time ran out (or the re-check could not run): the
    /// changes are forgotten and the device sends them again later.
    Busy,
}

/// What a re-check reads: the tenant's rule sets and the document holding
/// their plugins, as the hub had them when it asked.
#[derive(Debug)]
pub(super) struct RuleSource {
    config: TenantConfig,
    doc: TenantConfigDoc,
}

/// A plugin re-check for the driver to run off the hub: each result of a held
/// message, re-decided with the rule set it names. Answered with
/// [`super::HubInput::Verified`] under its ticket.
pub struct Verification {
    /// The ticket the verdict is given under.
    pub ticket: u64,
    tenant: TenantId,
    rules: Arc<dyn ResultRules>,
    source: Arc<RuleSource>,
    /// Each result: its call, its fields and when it was saved.
    results: Vec<(CallId, SavedResultFields, Timestamp)>,
}

impl std::fmt::Debug for Verification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verification")
            .field("ticket", &self.ticket)
            .field("tenant", &self.tenant)
            .field("results", &self.results.len())
            .finish_non_exhaustive()
    }
}

impl Verification {
    /// Runs the re-checks, in order, up to the first decision that does not
    /// hold, charging the plugin time to the tenant. Blocking (WebAssembly):
    /// the server runs it on a thread of its own.
    pub fn run(&self) -> Verdict {
        for (call, fields, saved_at) in &self.results {
            let verified =
                self.rules
                    .verify(&self.source.config, &self.source.doc, fields, *saved_at);
            self.rules.charge(&self.tenant, verified.spent);
            if let Err(failure) = verified.outcome {
                return Verdict::Refused(
                    Refusal::ResultNotVerified {
                        call: call.to_string(),
                        code: failure.code,
                        detail: failure.detail,
                    }
                    .body(),
                );
            }
        }
        Verdict::Holds
    }

    /// How many results it re-checks.
    pub fn results(&self) -> usize {
        self.results.len()
    }
}

/// A device's message waiting for its verdict.
pub(super) struct Held<D> {
    conn: ConnId,
    doc_id: CustomerId,
    /// The document with the message applied, out of the cache.
    doc: D,
    /// The connection's sync state of the document after the message.
    state: sync::State,
    /// The message, to apply again if `doc` went stale.
    data: Vec<u8>,
    /// What the message adds.
    events: Vec<CallEvent>,
    /// The document was loaded from storage since: `doc` may miss what was
    /// saved meanwhile.
    stale: bool,
    /// The same connection's later messages of the document, in order.
    waiting: VecDeque<Vec<u8>>,
}

/// Whether admitted events need a plugin re-check: most changes carry no result
/// (a start, an end).
pub(super) fn needs_verification(events: &[CallEvent]) -> bool {
    events
        .iter()
        .any(|e| matches!(e.kind, EventKind::ResultSaved(_)))
}

/// Whether every result among `events` was checked already (`verified`: a held
/// message's events, when the message is applied again).
pub(super) fn already_verified(events: &[CallEvent], verified: &[CallEvent]) -> bool {
    events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::ResultSaved(_)))
        .all(|e| verified.contains(e))
}

impl<D: LoadedDoc> HubSession<D> {
    /// What re-checks read, made once per configuration.
    fn rule_source<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
    ) -> Result<Arc<RuleSource>, StorageError> {
        if let Some(source) = &self.rule_source {
            return Ok(source.clone());
        }
        let doc = self.config(store)?.clone();
        let config = doc
            .config()
            .map_err(|e| StorageError::Unreadable(e.to_string()))?;
        let source = Arc::new(RuleSource { config, doc });
        self.rule_source = Some(source.clone());
        Ok(source)
    }

    /// Holds a received message whose results need a re-check (its document is
    /// in the cache with the message applied; `conn` has its sync state) and
    /// asks for the [`Verification`].
    pub(super) fn hold<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        batch: &mut Batch<'_>,
        conn: ConnId,
        doc: CustomerId,
        data: Vec<u8>,
        events: Vec<CallEvent>,
    ) -> Result<(), StorageError> {
        if self.held.len() >= self.settings.max_held || !self.rules.has_time(&self.tenant, self.now)
        {
            tracing::warn!(tenant = %self.tenant, conn, held = self.held.len(), "plugin time or room for re-checks used up; asking the device to retry");
            self.busy(batch, conn, &doc);
            return Ok(());
        }
        let source = match contained(self.rule_source(store))? {
            Ok(source) => source,
            Err(e) => {
                self.reject(batch, conn, &doc, unreadable_config(&e));
                return Ok(());
            }
        };
        let (Some(held_doc), Some(c)) = (self.docs.remove(&doc), self.conns.get_mut(&conn)) else {
            return Ok(());
        };
        c.dirty.remove(&doc);
        let state = c.states.remove(&doc).unwrap_or_default();
        self.last_ticket += 1;
        let ticket = self.last_ticket;
        let results = events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::ResultSaved(fields) => {
                    Some((e.call.clone(), fields.clone(), e.stamp.at))
                }
                _ => None,
            })
            .collect();
        batch.verifications.push(Verification {
            ticket,
            tenant: self.tenant.clone(),
            rules: self.rules.clone(),
            source,
            results,
        });
        self.holding.insert((conn, doc.clone()), ticket);
        self.held.insert(
            ticket,
            Held {
                conn,
                doc_id: doc,
                doc: held_doc,
                state,
                data,
                events,
                stale: false,
                waiting: VecDeque::new(),
            },
        );
        Ok(())
    }

    /// A message of a connection and document with one held: queued behind it
    /// (`None`), or handed back to be handled now.
    pub(super) fn wait_behind_held(
        &mut self,
        batch: &mut Batch<'_>,
        conn: ConnId,
        doc: &CustomerId,
        data: Vec<u8>,
    ) -> Option<Vec<u8>> {
        let Some(held) = self
            .holding
            .get(&(conn, doc.clone()))
            .and_then(|ticket| self.held.get_mut(ticket))
        else {
            return Some(data);
        };
        if held.waiting.len() >= MAX_WAITING_BEHIND_HELD {
            tracing::warn!(conn, doc = %doc, "too many messages behind a held one; asking the device to retry");
            batch.close(conn, Refusal::Busy.body());
            return None;
        }
        held.waiting.push_back(data);
        None
    }

    /// A verdict came back: the held message is admitted (saved, fanned out,
    /// answered), refused, or forgotten for the device to send again; then the
    /// device's messages that waited behind it are handled, in order.
    pub(super) fn verified<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        batch: &mut Batch<'_>,
        ticket: u64,
        verdict: Verdict,
    ) -> Result<(), StorageError> {
        // Unknown: its connection closed, or its batch was lost.
        let Some(held) = self.held.remove(&ticket) else {
            return Ok(());
        };
        let (conn, doc) = (held.conn, held.doc_id.clone());
        self.holding.remove(&(conn, doc.clone()));
        let Some(member) = self.conns.get(&conn).map(|c| c.member.clone()) else {
            return Ok(());
        };
        // If this batch fails, the device is told, and sends again.
        batch.senders.insert(conn);
        match verdict {
            Verdict::Busy => {
                tracing::warn!(tenant = %self.tenant, device = %member.device, "plugin time used up; asking the device to retry");
                self.busy(batch, conn, &doc);
                return Ok(());
            }
            Verdict::Refused(error) => {
                self.settle(store, batch, conn, doc.clone(), &member, Err(error))?;
            }
            Verdict::Holds => {
                let untouched = !held.stale
                    && !self.unreadable.contains(&doc)
                    && self.docs.get_mut(&doc).is_none()
                    && self
                        .conns
                        .get(&conn)
                        .is_some_and(|c| !c.states.contains_key(&doc));
                if untouched {
                    // Nothing read the document meanwhile: the held copy is what
                    // storage holds plus the message.
                    self.docs.insert(doc.clone(), held.doc);
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.states.insert(doc.clone(), held.state);
                        c.dirty.insert(doc.clone());
                    }
                    self.dirty_conns.insert(conn);
                    self.settle(
                        store,
                        batch,
                        conn,
                        doc.clone(),
                        &member,
                        Ok(Some(held.events)),
                    )?;
                } else {
                    self.sync(store, batch, conn, doc.clone(), held.data, &held.events)?;
                }
            }
        }
        for data in held.waiting {
            // Each waits behind a message this one may hold in turn.
            self.sync(store, batch, conn, doc.clone(), data, &[])?;
        }
        Ok(())
    }

    /// Asks the device to send its changes of `doc` again later: they are
    /// forgotten (the document reloads from what is saved) and the connection
    /// closes with `busy` (not a refusal, which would make the device drop them).
    fn busy(&mut self, batch: &mut Batch<'_>, conn: ConnId, doc: &CustomerId) {
        self.docs.remove(doc);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.states.insert(doc.clone(), sync::State::new());
        }
        batch.close(conn, Refusal::Busy.body());
    }

    /// Marks held copies of `doc` stale: it was loaded from storage.
    pub(super) fn stale_held(&mut self, doc: &CustomerId) {
        for held in self.held.values_mut() {
            if held.doc_id == *doc {
                held.stale = true;
            }
        }
    }

    /// Forgets what `conn` has held (it closed).
    pub(super) fn forget_held_of(&mut self, conn: ConnId) {
        if self.held.is_empty() {
            return;
        }
        self.held.retain(|_, held| held.conn != conn);
        self.holding.retain(|(c, _), _| *c != conn);
    }

    /// Forgets every held message (the batch was lost: their copies may hold
    /// it), returning the connections they came from.
    pub(super) fn forget_held(&mut self) -> HashSet<ConnId> {
        self.holding.clear();
        self.held.drain().map(|(_, held)| held.conn).collect()
    }
}
