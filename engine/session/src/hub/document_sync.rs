//! Documents synced with devices: loading them into the cache, each
//! connection's sync state per document (kept, saved, started), generating sync
//! messages into the room a queue has (or owing them, within the allowance of
//! full re-sends), receiving a device's sync message (screening, Automerge,
//! admission, holding it for the plugins' re-check of its results, the save)
//! and fanning an admitted change out to the other subscribers online.

use automerge::ActorId;
use automerge::sync::{self, SyncDoc};
use callsync_core::admission::{Directory, Sender, admit};
use callsync_core::event::CallEvent;
use callsync_core::screen::{ScreenLimits, screen_message};
use callsync_core::wire::{ErrorBody, Message, Refusal};
use callsync_core::{CustomerId, DeviceId, EventKind, Timestamp, UserId};

use super::verification::{already_verified, needs_verification};
use super::{
    Batch, FULL_RESEND_EVERY_MS, FULL_RESENDS_BURST, HubSession, MAX_DOCUMENT_BYTES,
    MAX_SYNC_MESSAGE_BYTES, PENDING_RETRY_MS, SYNC_ROOM_BYTES, config, contained, storage_refusal,
    unreadable_config,
};
use crate::storage::{HubStore, LoadedDoc, StorageError};
use crate::{Authenticated, ConnId};

/// What the hub syncs with a device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum SyncTarget {
    /// The tenant's configuration document.
    Config,
    /// A customer document.
    Customer(CustomerId),
}

/// A sync message owed to a device, waiting for room or for its allowance.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct PendingSync {
    /// Start over if the state thinks the device is up to date.
    pub(super) must: bool,
    /// The server started it (its answers are owed, not rate-counted).
    pub(super) unsolicited: bool,
}

/// A device's allowance of full re-sends of one document.
#[derive(Debug, Clone, Copy)]
pub(super) struct Allowance {
    pub(super) tokens: f64,
    pub(super) at: Timestamp,
}

impl Allowance {
    pub(super) fn full(now: Timestamp) -> Self {
        Self {
            tokens: FULL_RESENDS_BURST,
            at: now,
        }
    }

    pub(super) fn refill(&mut self, now: Timestamp) {
        let elapsed = (now.as_millis() - self.at.as_millis()).max(0) as f64;
        self.tokens = (self.tokens + elapsed / FULL_RESEND_EVERY_MS as f64).min(FULL_RESENDS_BURST);
        self.at = self.at.max(now);
    }

    /// Takes one re-send if there is one; else when the next one comes.
    pub(super) fn take(&mut self, now: Timestamp) -> Result<(), Timestamp> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - self.tokens) * FULL_RESEND_EVERY_MS as f64).ceil() as i64;
            Err(now.plus_millis(wait.max(1)))
        }
    }
}

/// Whether a sync message asks the hub for everything it has: no heads (the
/// device lost or never had the document) or the reset flag. Automerge then
/// forgets what it sent and regenerates the whole change set.
pub(super) fn asks_for_everything(message: &sync::Message) -> bool {
    message.heads.is_empty()
        || message
            .flags
            .is_some_and(|flags| flags.contains(sync::MessageFlags::SYNC_RESET))
}

/// Admission's questions, answered by storage (a failed read answers no).
pub(super) struct StoreDirectory<'a, S>(pub(super) std::cell::RefCell<&'a mut S>);

impl<S: HubStore> Directory for StoreDirectory<'_, S> {
    fn actor_is_bound_to(&self, actor: &ActorId, device: &DeviceId) -> bool {
        matches!(
            self.0.borrow_mut().actor_is_bound_to(actor, device),
            Ok(true)
        )
    }

    fn is_phone_of(&self, device: &DeviceId, user: &UserId) -> bool {
        matches!(self.0.borrow_mut().is_phone_of(device, user), Ok(true))
    }
}

impl<D: LoadedDoc> HubSession<D> {
    /// Whether the member may see the document (it exists in the tenant, and the
    /// assignee restriction, where on, allows it).
    pub(super) fn may_see<S: HubStore<Doc = D>>(
        &self,
        store: &mut S,
        member: &Authenticated,
        doc: &CustomerId,
    ) -> Result<bool, StorageError> {
        let Some(owner) = store.owner_of(&self.tenant, doc)? else {
            return Ok(false);
        };
        if member.role.is_limited_by_assignee_visibility()
            && store.assignee_visibility(&self.tenant)?
        {
            return Ok(owner == member.user.as_str());
        }
        Ok(true)
    }

    /// Brings a document into the cache. `Ok(false)` when it cannot be read (it is
    /// gone, or its stored bytes no longer load): that is this document's problem
    /// alone, logged and answered per message, never a failed batch for everyone.
    pub(super) fn load<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        doc: &CustomerId,
    ) -> Result<bool, StorageError> {
        if self.docs.touch(doc) {
            return Ok(true);
        }
        if self.unreadable.contains(doc) {
            return Ok(false);
        }
        let stored = match store.load(&self.tenant, doc, self.settings.server_actor.clone()) {
            Ok(stored) => stored,
            Err(StorageError::UnknownCustomer) => return Ok(false),
            Err(e) if e.is_failure() => return Err(e),
            Err(e) => {
                tracing::error!(tenant = %self.tenant, doc = %doc, error = %e, "a stored document cannot be read; skipping it from now on");
                self.unreadable.insert(doc.clone());
                return Ok(false);
            }
        };
        // A message held for its verdict was applied to the copy before this
        // load: it is applied again to what storage holds now.
        self.stale_held(doc);
        self.docs.insert(doc.clone(), stored);
        Ok(true)
    }

    /// Makes sure the connection has a sync state for the document, from memory
    /// or as saved for its device.
    pub(super) fn ensure_state<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        conn: ConnId,
        doc: &CustomerId,
    ) -> Result<(), StorageError> {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        if !c.states.contains_key(doc) {
            let saved = store.sync_state(&c.member.device, &self.tenant, doc)?;
            let mut state = saved
                .and_then(|bytes| sync::State::decode(&bytes).ok())
                .unwrap_or_default();
            callsync_core::catchup::resume(&mut state);
            c.states.insert(doc.clone(), state);
        }
        Ok(())
    }

    /// Sends the connection the hub's next sync message for `target`, if there is
    /// anything to say: now, if its queue has room for the largest message the
    /// target can make and, when the device asked for everything, its allowance
    /// of full re-sends is not spent; else later (see [`Self::send_pending`]),
    /// once however often it is asked for meanwhile.
    pub(super) fn send_sync(
        &mut self,
        batch: &mut Batch<'_>,
        conn: ConnId,
        target: &SyncTarget,
        mut owed: PendingSync,
    ) {
        let now = self.now;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if let Some(waiting) = c.pending.remove(target) {
            owed.must |= waiting.must;
            owed.unsolicited |= waiting.unsolicited;
        }
        let room = match target {
            SyncTarget::Config => config::CONFIG_SYNC_ROOM_BYTES,
            SyncTarget::Customer(_) => SYNC_ROOM_BYTES,
        };
        let mut ready = batch.has_room_for(conn, room);
        if ready && c.resets.contains(target) {
            let allowance = self
                .resends
                .entry((c.member.device.clone(), target.clone()))
                .or_insert_with(|| Allowance::full(now));
            match allowance.take(now) {
                Ok(()) => {
                    c.resets.remove(target);
                }
                Err(next) => {
                    ready = false;
                    self.pending_wake = Some(self.pending_wake.map_or(next, |at| at.min(next)));
                }
            }
        }
        if !ready {
            c.pending.insert(target.clone(), owed);
            self.pending_conns.insert(conn);
            return;
        }
        let message = match target {
            SyncTarget::Customer(doc) => {
                let (Some(cached), Some(state)) = (self.docs.get_mut(doc), c.states.get_mut(doc))
                else {
                    return;
                };
                let stored = cached.doc_mut();
                let mut message = stored.generate_sync_message(state);
                if message.is_none() && owed.must {
                    // The state believes the device is up to date; start over so the
                    // device hears our heads and can finish catching up.
                    *state = sync::State::new();
                    message = stored.generate_sync_message(state);
                }
                if message.is_some() {
                    c.dirty.insert(doc.clone());
                    self.dirty_conns.insert(conn);
                }
                message.map(|m| Message::Sync {
                    document_id: doc.clone(),
                    data: m.encode(),
                })
            }
            SyncTarget::Config => {
                let Some(doc) = self.config_doc.as_mut() else {
                    return;
                };
                doc.automerge_mut()
                    .sync()
                    .generate_sync_message(&mut c.config_state)
                    .map(|m| Message::ConfigSync { data: m.encode() })
            }
        };
        if let Some(message) = message {
            if owed.unsolicited {
                *batch.unsolicited.entry(conn).or_default() += 1;
            }
            batch.send(conn, message);
        }
    }

    /// Sends the waiting syncs that can go now (call order: first in `finish`, so
    /// answers owed go before a catch-up's next slice), and notes when to look
    /// again at those that cannot.
    pub(super) fn send_pending<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        batch: &mut Batch<'_>,
    ) -> Result<(), StorageError> {
        self.pending_wake = None;
        let conns: Vec<ConnId> = self.pending_conns.iter().copied().collect();
        for conn in conns {
            let waiting: Vec<(SyncTarget, PendingSync)> = self
                .conns
                .get(&conn)
                .map(|c| c.pending.iter().map(|(t, p)| (t.clone(), *p)).collect())
                .unwrap_or_default();
            for (target, _) in waiting {
                match &target {
                    SyncTarget::Customer(doc) => {
                        if !self.load(store, doc)? {
                            if let Some(c) = self.conns.get_mut(&conn) {
                                c.pending.remove(&target);
                            }
                            batch.send(
                                conn,
                                Message::DocUnavailable {
                                    document_id: doc.clone(),
                                },
                            );
                            continue;
                        }
                        self.ensure_state(store, conn, doc)?;
                    }
                    SyncTarget::Config => {
                        if contained(self.config(store).map(|_| ()))?.is_err() {
                            continue;
                        }
                    }
                }
                // Taken out and put back by `send_sync` if it still cannot go.
                let owed = self
                    .conns
                    .get_mut(&conn)
                    .and_then(|c| c.pending.remove(&target))
                    .unwrap_or_default();
                self.send_sync(batch, conn, &target, owed);
            }
            if self.conns.get(&conn).is_none_or(|c| c.pending.is_empty()) {
                self.pending_conns.remove(&conn);
            }
        }
        if !self.pending_conns.is_empty() {
            // Some wait for room (the device is reading slowly): look again soon.
            // Those waiting for an allowance set `pending_wake` to its time.
            let soon = self.now.plus_millis(PENDING_RETRY_MS);
            let waits_for_room = self.pending_conns.iter().any(|conn| {
                self.conns
                    .get(conn)
                    .is_some_and(|c| c.pending.keys().any(|target| !c.resets.contains(target)))
            });
            if waits_for_room {
                self.pending_wake = Some(self.pending_wake.map_or(soon, |at| at.min(soon)));
            }
        }
        // Allowances that have refilled are forgotten, so the map holds only
        // devices asking for full re-sends now.
        if self.resends.len() > 1_024 {
            let now = self.now;
            self.resends.retain(|_, a| {
                a.refill(now);
                a.tokens < FULL_RESENDS_BURST
            });
        }
        Ok(())
    }

    /// Starts syncing a document with a device (`unsolicited`: the server
    /// started it on its own, a catch-up).
    pub(super) fn start_sync<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        batch: &mut Batch<'_>,
        conn: ConnId,
        doc: &CustomerId,
        unsolicited: bool,
    ) -> Result<(), StorageError> {
        if !self.load(store, doc)? {
            batch.send(
                conn,
                Message::DocUnavailable {
                    document_id: doc.clone(),
                },
            );
            return Ok(());
        }
        self.ensure_state(store, conn, doc)?;
        self.send_sync(
            batch,
            conn,
            &SyncTarget::Customer(doc.clone()),
            PendingSync {
                must: true,
                unsolicited,
            },
        );
        Ok(())
    }

    /// A device's sync message of a customer document: screened, applied,
    /// admitted, then saved and fanned out, held for a plugin re-check of the
    /// results it saves (unless they are among `verified`, already checked), or
    /// refused. A message of a connection and document that has one held waits
    /// behind it.
    pub(super) fn sync<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        batch: &mut Batch<'_>,
        conn: ConnId,
        doc: CustomerId,
        data: Vec<u8>,
        verified: &[CallEvent],
    ) -> Result<(), StorageError> {
        let Some(member) = self.conns.get(&conn).map(|c| c.member.clone()) else {
            return Ok(());
        };
        let data = match self.wait_behind_held(batch, conn, &doc, data) {
            Some(data) => data,
            None => return Ok(()),
        };
        if !self.may_see(store, &member, &doc)? {
            batch.send(conn, Message::DocUnavailable { document_id: doc });
            return Ok(());
        }
        // Screened before decoding: nothing larger than MAX_SYNC_MESSAGE_BYTES
        // could be admitted (its changes alone would pass the document's cap), so
        // Automerge is not asked to parse it.
        let decoded = if data.len() > MAX_SYNC_MESSAGE_BYTES {
            Err(format!(
                "a sync message of {} bytes; at most {MAX_SYNC_MESSAGE_BYTES} are read",
                data.len()
            ))
        } else {
            sync::Message::decode(&data).map_err(|e| e.to_string())
        };
        let message = match decoded {
            Ok(m) => m,
            Err(detail) => {
                let error = Refusal::MalformedSync { detail }.body();
                batch.send(
                    conn,
                    Message::Rejected {
                        document_id: doc,
                        error,
                    },
                );
                return Ok(());
            }
        };
        // Before Automerge sees it: everything the message would make the server
        // inflate or walk is bounded, and its summary is one an honest peer sends.
        if let Err(e) = screen_message(&message, &ScreenLimits::default()) {
            tracing::warn!(device = %member.device, doc = %doc, code = e.code(), error = %e, "refused a sync message before applying it");
            batch.send(
                conn,
                Message::Rejected {
                    document_id: doc,
                    error: Refusal::Screen(e).body(),
                },
            );
            return Ok(());
        }
        let catalog = match contained(self.catalog(store))? {
            Ok(catalog) => catalog,
            Err(e) => {
                // The whole tenant's problem, not this document's: the device is
                // disconnected (it reconnects with backoff and keeps its changes)
                // rather than told the document is unavailable, which would move
                // its catch-up cursor past it.
                batch.close(conn, unreadable_config(&e));
                return Ok(());
            }
        };
        if !self.load(store, &doc)? {
            batch.send(conn, Message::DocUnavailable { document_id: doc });
            return Ok(());
        }
        self.ensure_state(store, conn, &doc)?;
        let (Some(c), Some(cached)) = (self.conns.get_mut(&conn), self.docs.get_mut(&doc)) else {
            return Ok(());
        };
        if asks_for_everything(&message) {
            // Answered within the device's allowance of full re-sends.
            c.resets.insert(SyncTarget::Customer(doc.clone()));
        }
        let Some(state) = c.states.get_mut(&doc) else {
            return Ok(());
        };
        c.dirty.insert(doc.clone());
        self.dirty_conns.insert(conn);
        let stored = cached.doc_mut();
        let before = stored.heads();
        // Automerge 0.12 asserts, rather than returns an error, on some changes it
        // parses fine: a sequence number that is not the actor's next, an actor the
        // document does not know at a sequence number past 1 (`change_graph.rs`,
        // `op_set2/change/batch.rs`). Knowing each actor's last sequence number
        // before applying would need a walk of the document's history, so the
        // panic is contained here instead: the document and the device's sync
        // state, which it may have left half-changed, are thrown away (the
        // document reloads from what is stored, where only admitted changes are)
        // and the message is refused. Nothing else is shared with the call.
        let received = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            stored.receive_sync_message(state, message).map(|_| ())
        }));
        let Ok(received) = received else {
            tracing::warn!(device = %member.device, doc = %doc, "Automerge panicked applying a device's sync message; refused it and reloaded the document");
            let error = Refusal::SyncNotApplied {
                detail: "Automerge refused the changes' sequence numbers or actors".to_owned(),
            };
            self.reject(batch, conn, &doc, error.body());
            return Ok(());
        };
        if received.is_ok() && stored.has_queued_changes() {
            // Changes whose dependencies the server lacks would wait in the cached
            // document, unadmitted, and collide with the next honest change under
            // the same actor and sequence number. Nothing of this message is kept.
            return self.drop_queued(store, batch, conn, &doc, &member);
        }
        let after = stored.heads();
        let admitted = match received {
            Err(e) => Err(Refusal::SyncNotApplied {
                detail: e.to_string(),
            }
            .body()),
            Ok(()) if after == before => Ok(None),
            Ok(()) => {
                let sender = Sender {
                    tenant: member.tenant.clone(),
                    user: member.user.clone(),
                    role: member.role,
                    device: member.device.clone(),
                    kind: member.kind,
                };
                let directory = StoreDirectory(std::cell::RefCell::new(&mut *store));
                admit(stored, &before, &sender, &directory, &catalog)
                    .map(Some)
                    .map_err(|e| Refusal::Admission(e).body())
            }
        };
        let admitted = match admitted {
            // A result's decision is re-run with the rule set it names, off the
            // hub, before anything of the message is saved or forwarded.
            Ok(Some(events))
                if needs_verification(&events) && !already_verified(&events, verified) =>
            {
                return self.hold(store, batch, conn, doc, data, events);
            }
            other => other,
        };
        self.settle(store, batch, conn, doc, &member, admitted)
    }

    /// Finishes a received message whose changes are admitted (`Ok`: `None` when
    /// it changed nothing, else the events it adds) or refused: saves the
    /// document and fans it out, then answers the device; or refuses it.
    pub(super) fn settle<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        batch: &mut Batch<'_>,
        conn: ConnId,
        doc: CustomerId,
        member: &Authenticated,
        admitted: Result<Option<Vec<CallEvent>>, ErrorBody>,
    ) -> Result<(), StorageError> {
        let admitted = match admitted {
            Ok(None) => Ok(Vec::new()),
            Ok(Some(events)) => match self
                .docs
                .get_mut(&doc)
                .map(|c| store.save(c, Some(MAX_DOCUMENT_BYTES)))
            {
                None | Some(Ok(())) => Ok(events),
                Some(Err(e)) if e.is_failure() => return Err(e),
                Some(Err(e)) => Err(storage_refusal(&e)),
            },
            Err(error) => Err(error),
        };
        match admitted {
            Err(error) => {
                tracing::warn!(device = %member.device, doc = %doc, code = %error.code, "rejected changes");
                self.reject(batch, conn, &doc, error);
            }
            Ok(events) => {
                if !events.is_empty() {
                    store.subscribe(&member.device, &self.tenant, &doc)?;
                    for event in &events {
                        if let EventKind::Requested { origin, .. } = &event.kind {
                            store.subscribe(origin, &self.tenant, &doc)?;
                        }
                    }
                    self.fan_out(store, batch, &doc, Some(conn))?;
                }
                self.send_sync(
                    batch,
                    conn,
                    &SyncTarget::Customer(doc),
                    PendingSync::default(),
                );
            }
        }
        Ok(())
    }

    /// Refuses a device's sync message: forgets what it changed (the document
    /// reloads from what is saved), starts the device's sync of the document over
    /// and tells it why.
    pub(super) fn reject(
        &mut self,
        batch: &mut Batch<'_>,
        conn: ConnId,
        doc: &CustomerId,
        error: ErrorBody,
    ) {
        self.docs.remove(doc);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.states.insert(doc.clone(), sync::State::new());
        }
        batch.send(
            conn,
            Message::Rejected {
                document_id: doc.clone(),
                error,
            },
        );
    }

    /// Forgets a sync message that left changes queued: the document is reloaded
    /// from storage, and the device gets a fresh sync message with the reset flag,
    /// so an honest device (whose message only raced a lost commit) resends
    /// everything the server lacks, dependencies first, while a forged orphan has
    /// nothing to attach to. Not a `rejected`: that would make an honest device
    /// drop its outbox.
    pub(super) fn drop_queued<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        batch: &mut Batch<'_>,
        conn: ConnId,
        doc: &CustomerId,
        member: &Authenticated,
    ) -> Result<(), StorageError> {
        tracing::warn!(device = %member.device, doc = %doc, "a sync message left changes waiting for missing dependencies; dropped it");
        // What the dropped changes waited for: asked for explicitly, so an honest
        // device sends it even if a bloom-filter false positive hid it before.
        let missing = self
            .docs
            .get_mut(doc)
            .map(|c| c.doc_mut().automerge_mut().get_missing_deps(&[]))
            .unwrap_or_default();
        self.docs.remove(doc);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.states.insert(doc.clone(), sync::State::new());
            c.dirty.insert(doc.clone());
        }
        if !self.load(store, doc)? {
            batch.send(
                conn,
                Message::DocUnavailable {
                    document_id: doc.clone(),
                },
            );
            return Ok(());
        }
        let (Some(c), Some(cached)) = (self.conns.get_mut(&conn), self.docs.get_mut(doc)) else {
            return Ok(());
        };
        let Some(state) = c.states.get_mut(doc) else {
            return Ok(());
        };
        if let Some(mut message) = cached.doc_mut().generate_sync_message(state) {
            message
                .flags
                .get_or_insert_with(sync::MessageFlags::new)
                .set(sync::MessageFlags::SYNC_RESET);
            message.need = missing;
            batch.send(
                conn,
                Message::Sync {
                    document_id: doc.clone(),
                    data: message.encode(),
                },
            );
        }
        Ok(())
    }

    /// Sends every other online subscriber of the document what it lacks.
    pub(super) fn fan_out<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        batch: &mut Batch<'_>,
        doc: &CustomerId,
        except: Option<ConnId>,
    ) -> Result<(), StorageError> {
        let mut targets: Vec<(ConnId, Authenticated)> = Vec::new();
        for device in store.subscribers(&self.tenant, doc)? {
            for id in self.by_device.get(&device).into_iter().flatten() {
                if let Some(c) = self.conns.get(id)
                    && Some(*id) != except
                {
                    targets.push((*id, c.member.clone()));
                }
            }
        }
        for (conn, member) in targets {
            // A subscription outlives the assignee restriction being turned on (or
            // the customer being given to someone else): visibility is checked on
            // every push, not only when subscribing.
            if !self.may_see(store, &member, doc)? {
                continue;
            }
            self.ensure_state(store, conn, doc)?;
            self.send_sync(
                batch,
                conn,
                &SyncTarget::Customer(doc.clone()),
                PendingSync {
                    must: false,
                    unsolicited: true,
                },
            );
        }
        Ok(())
    }

    pub(super) fn save_conn_states<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        conn: ConnId,
    ) -> Result<(), StorageError> {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        for doc in c.dirty.drain() {
            if let Some(state) = c.states.get(&doc) {
                store.set_sync_state(&c.member.device, &self.tenant, &doc, &state.encode())?;
            }
        }
        Ok(())
    }

    pub(super) fn save_sync_states<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
    ) -> Result<(), StorageError> {
        let mut conns: Vec<ConnId> = self.dirty_conns.drain().collect();
        conns.sort_unstable();
        for conn in conns {
            self.save_conn_states(store, conn)?;
        }
        Ok(())
    }
}
