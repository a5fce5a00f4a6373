//! A batch's effects, held until the driver knows whether its transaction
//! committed: how much room each connection's outgoing queue has, what the batch
//! sends and closes, what a commit releases and what a failed batch forgets.

use std::collections::{HashMap, HashSet};

use callsync_core::wire::{self, ErrorBody, Message, Refusal};

use super::{HubSession, RecordingVerdict};
use crate::ConnId;
use crate::storage::LoadedDoc;

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

fn unlimited(_: ConnId) -> Room {
    Room::UNLIMITED
}

/// The effects of a batch, held until the driver knows whether it committed,
/// and the room each connection's queue had for them.
pub struct Batch<'r> {
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
    /// The room in each connection's queue, as the driver reports it.
    pub(super) room: &'r dyn Fn(ConnId) -> Room,
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("sends", &self.sends.len())
            .field("closes", &self.closes)
            .finish_non_exhaustive()
    }
}

impl Default for Batch<'static> {
    /// A batch whose connections have unlimited room.
    fn default() -> Self {
        Self::with_room(&unlimited)
    }
}

impl<'r> Batch<'r> {
    /// A batch for connections whose queues have the room `room` reports.
    pub fn with_room(room: &'r dyn Fn(ConnId) -> Room) -> Self {
        Self {
            sends: Vec::new(),
            closes: Vec::new(),
            senders: HashSet::new(),
            unsolicited: HashMap::new(),
            spent: HashMap::new(),
            config_changed: false,
            recordings: Vec::new(),
            room,
        }
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

    /// Whether the batch has nothing to send.
    pub fn is_empty(&self) -> bool {
        self.sends.is_empty() && self.closes.is_empty()
    }
}

/// What a committed batch sends: the messages in order, then the connections to
/// close after what is queued for them.
#[derive(Debug, Default)]
pub struct Released {
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
}

impl<D: LoadedDoc> HubSession<D> {
    /// The batch committed: what to send, in order.
    pub fn committed(&mut self, batch: Batch<'_>) -> Released {
        let mut unsolicited: Vec<(ConnId, u64)> = batch.unsolicited.into_iter().collect();
        unsolicited.sort_unstable();
        Released {
            sends: batch.sends,
            closes: batch.closes,
            unsolicited,
            config_changed: batch.config_changed,
            recordings: batch.recordings,
        }
    }

    /// The batch failed (a storage failure, or the commit): nothing of it was
    /// acknowledged. Everything in memory that may reflect it is forgotten, and the
    /// connections that sent something are dropped (returned with the reason to
    /// close them with) to sync again from what storage holds.
    pub fn abandoned(&mut self, batch: Batch<'_>) -> Vec<(ConnId, ErrorBody)> {
        self.docs.clear();
        self.config_doc = None;
        self.catalog = None;
        let body = Refusal::SaveFailed.body();
        let mut closes = Vec::new();
        for conn in batch.senders {
            if let Some(c) = self.remove_conn(conn) {
                if !self.by_device.contains_key(&c.member.device) {
                    // Nobody can be told here (the batch is gone); devices
                    // that join later are not told a status that went with it.
                    self.phone_uploads.remove(&c.member.device);
                }
                closes.push((conn, body.clone()));
            }
        }
        closes
    }
}
