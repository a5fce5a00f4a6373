//! A batch's effects, held until its transaction commits: how much room each
//! connection's outgoing queue has, what the batch sends and closes, what a
//! commit releases ([`HubOutput`]) and what a failed batch forgets.

use std::collections::{HashMap, HashSet};

use callsync_core::wire::{self, ErrorBody, Message, Refusal};

use super::{HubSession, RecordingVerdict, Verification};
use crate::ConnId;
use crate::storage::{LoadedDoc, StorageError};

/// How much more a connection's outgoing queue can take, as its driver sees it
/// when asked (frames, and bytes of encoded frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// Frames.
    pub frames: usize,
    /// Bytes.
    pub bytes: usize,
}

impl Room {
    /// No limit (a simulation, a bench).
    pub const UNLIMITED: Room = Room {
        frames: usize::MAX,
        bytes: usize::MAX,
    };
    /// No room at all (a connection the driver does not know).
    pub const NONE: Room = Room {
        frames: 0,
        bytes: 0,
    };
}

/// What a batch has produced so far, kept by the session between the batch's
/// events and released (or forgotten) at its end.
#[derive(Default)]
pub(super) struct Effects {
    pub(super) sends: Vec<(ConnId, Message)>,
    pub(super) closes: Vec<(ConnId, ErrorBody)>,
    /// Connections that sent something this batch (told if it fails).
    pub(super) senders: HashSet<ConnId>,
    /// Syncs the server started on its own per connection (catch-up, fan-out).
    pub(super) unsolicited: HashMap<ConnId, u64>,
    /// What this batch has queued per connection so far.
    pub(super) spent: HashMap<ConnId, Room>,
    /// A plugin install changed the tenant's configuration.
    pub(super) config_changed: bool,
    /// Answers about recordings, by ticket.
    pub(super) recordings: Vec<(u64, Result<RecordingVerdict, ErrorBody>)>,
    /// Recording questions asked this batch (answered with a failure if it is lost).
    pub(super) recording_tickets: Vec<u64>,
    /// Plugin re-checks to hand to the driver now (they do not wait for the
    /// commit: nothing of them is released before their verdict comes back).
    pub(super) verifications: Vec<Verification>,
    /// The storage failure that lost this batch, if one did.
    pub(super) failure: Option<StorageError>,
}

/// One event's view of the batch: its effects so far and the room each
/// connection's queue had for them, as the driver reports it.
pub(super) struct Batch<'r> {
    pub(super) effects: Effects,
    pub(super) room: &'r dyn Fn(ConnId) -> Room,
}

impl std::ops::Deref for Batch<'_> {
    type Target = Effects;

    fn deref(&self) -> &Effects {
        &self.effects
    }
}

impl std::ops::DerefMut for Batch<'_> {
    fn deref_mut(&mut self) -> &mut Effects {
        &mut self.effects
    }
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("sends", &self.sends.len())
            .field("closes", &self.closes)
            .finish_non_exhaustive()
    }
}

impl<'r> Batch<'r> {
    /// The batch's effects so far, with the room `room` reports.
    pub(super) fn new(effects: Effects, room: &'r dyn Fn(ConnId) -> Room) -> Self {
        Self { effects, room }
    }

    pub(super) fn send(&mut self, conn: ConnId, message: Message) {
        let spent = self.spent.entry(conn).or_insert(Room::NONE);
        spent.frames += 1;
        spent.bytes += wire::encoded_len(&message);
        self.sends.push((conn, message));
    }

    /// Whether `conn`'s queue can still take a frame of `bytes`, after what this
    /// batch has queued for it.
    pub(super) fn has_room_for(&self, conn: ConnId, bytes: usize) -> bool {
        let room = (self.room)(conn);
        let spent = self.spent.get(&conn).copied().unwrap_or(Room::NONE);
        room.frames.saturating_sub(spent.frames) >= 1
            && room.bytes.saturating_sub(spent.bytes) >= bytes
    }

    pub(super) fn close(&mut self, conn: ConnId, reason: ErrorBody) {
        self.closes.push((conn, reason));
    }
}

/// What the driver is to do after an event: the one output of
/// [`HubSession::handle_event`].
///
/// After an input only `verifications` (and `end_batch`) can be set: nothing
/// else leaves before the batch commits. After [`HubEvent::EndOfBatch`] it holds
/// what the committed batch releases, or, if the batch was lost, the
/// connections to close and the failure.
#[derive(Debug, Default)]
pub struct HubOutput {
    /// Messages, per connection, in order.
    pub sends: Vec<(ConnId, Message)>,
    /// Connections to close, with the reason they are sent.
    pub closes: Vec<(ConnId, ErrorBody)>,
    /// How many document syncs the server started on its own, per connection (a
    /// joining device's catch-up, pushes of others' changes): the device's answers
    /// to them are owed, not counted against its message rate (see
    /// [`crate::connection::ServerConnection::server_started`]).
    pub unsolicited: Vec<(ConnId, u64)>,
    /// The tenant's configuration changed (a plugin was installed): copies kept
    /// elsewhere (the server's for browsers' decisions) are stale.
    pub config_changed: bool,
    /// Answers about recordings, by the ticket they were asked under.
    pub recordings: Vec<(u64, Result<RecordingVerdict, ErrorBody>)>,
    /// Plugin re-checks to run off the hub (and off SQLite's write turn), each
    /// answered with [`HubInput::Verified`]: [`Verification::run`] does the work.
    pub verifications: Vec<Verification>,
    /// A storage failure lost the batch: end it now ([`HubEvent::EndOfBatch`]);
    /// later inputs belong in the next batch.
    pub end_batch: bool,
    /// The batch was lost to this storage failure (it was rolled back, nothing
    /// of it was acknowledged; `closes` drops its senders).
    pub failed: Option<StorageError>,
}

impl HubOutput {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.sends.is_empty()
            && self.closes.is_empty()
            && self.recordings.is_empty()
            && self.verifications.is_empty()
    }
}

impl<D: LoadedDoc> HubSession<D> {
    /// The batch committed: what to send, in order.
    pub(super) fn committed(&mut self, batch: Effects) -> HubOutput {
        let mut unsolicited: Vec<(ConnId, u64)> = batch.unsolicited.into_iter().collect();
        unsolicited.sort_unstable();
        HubOutput {
            sends: batch.sends,
            closes: batch.closes,
            unsolicited,
            config_changed: batch.config_changed,
            recordings: batch.recordings,
            verifications: batch.verifications,
            end_batch: false,
            failed: None,
        }
    }

    /// The batch failed (a storage failure, or the commit): nothing of it was
    /// acknowledged. Everything in memory that may reflect it is forgotten (held
    /// messages included: they were applied to documents that may hold the lost
    /// batch), and the connections that sent something or had a message held are
    /// dropped (told why in `closes`) to sync again from what storage holds. A
    /// recording question of the batch is answered that nothing was written.
    pub(super) fn abandoned(&mut self, batch: Effects, failure: StorageError) -> HubOutput {
        tracing::error!(tenant = %self.tenant, error = %failure, "hub batch failed; nothing of it was acknowledged");
        self.docs.clear();
        self.config_doc = None;
        self.catalog = None;
        self.rule_source = None;
        let body = Refusal::SaveFailed.body();
        let mut closes = Vec::new();
        let mut dropped = batch.senders;
        dropped.extend(self.forget_held());
        let mut dropped: Vec<ConnId> = dropped.into_iter().collect();
        dropped.sort_unstable();
        for conn in dropped {
            if let Some(c) = self.remove_conn(conn) {
                if !self.by_device.contains_key(&c.member.device) {
                    // Nobody can be told here (the batch is gone); devices
                    // that join later are not told a status that went with it.
                    self.phone_uploads.remove(&c.member.device);
                }
                closes.push((conn, body.clone()));
            }
        }
        HubOutput {
            closes,
            recordings: batch
                .recording_tickets
                .into_iter()
                .map(|ticket| (ticket, Err(body.clone())))
                .collect(),
            failed: Some(failure),
            ..HubOutput::default()
        }
    }
}
