//! Connections joining and leaving: the answer to `join` (the cursor, what
//! changed since it), presence to a member's other devices, and the catch-up of
//! a joining device, a slice per batch, paced by the room in its queue.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use automerge::sync;
use callsync_core::wire::{self, Cursor, Message};
use callsync_core::{DeviceId, DeviceKind, Timestamp, UserId};

use super::{
    Batch, CATCH_UP_PER_BATCH, Conn, HubSession, OUT_ROOM_FOR_CATCH_UP, SYNC_ROOM_BYTES, contained,
};
use crate::storage::{HubStore, LoadedDoc, StorageError};
use crate::{Authenticated, ConnId};

impl<D: LoadedDoc> HubSession<D> {
    pub(super) fn remove_conn(&mut self, conn: ConnId) -> Option<Conn> {
        let c = self.conns.remove(&conn)?;
        self.catching_up.remove(&conn);
        self.pending_conns.remove(&conn);
        self.dirty_conns.remove(&conn);
        if let Some(list) = self.by_device.get_mut(&c.member.device) {
            list.retain(|id| *id != conn);
            if list.is_empty() {
                self.by_device.remove(&c.member.device);
            }
        }
        Some(c)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn open<S: HubStore<Doc = D>>(
        &mut self,
        now: Timestamp,
        store: &mut S,
        batch: &mut Batch<'_>,
        conn: ConnId,
        member: Authenticated,
        cursor: Option<Cursor>,
    ) -> Result<(), StorageError> {
        let since = cursor
            .filter(|c| c.epoch == self.settings.epoch)
            .map(|c| c.seq);
        let changed = store.changed_for(&member.device, &member.tenant, since)?;
        let target = Cursor {
            epoch: self.settings.epoch.clone(),
            seq: store.last_change_seq()?,
        };
        let was_online = self.by_device.contains_key(&member.device);
        // Tell the newcomer which of the user's other devices are online.
        let mut others: Vec<(DeviceId, DeviceKind)> = self
            .conns
            .values()
            .filter(|c| c.member.user == member.user && c.member.device != member.device)
            .map(|c| (c.member.device.clone(), c.member.kind))
            .collect();
        others.sort();
        others.dedup();
        self.by_device
            .entry(member.device.clone())
            .or_default()
            .push(conn);
        self.conns.insert(
            conn,
            Conn {
                member: member.clone(),
                states: HashMap::new(),
                dirty: HashSet::new(),
                config_state: sync::State::new(),
                catch_up: VecDeque::new(),
                pending: BTreeMap::new(),
                resets: HashSet::new(),
            },
        );
        let config_heads = contained(self.config_heads(store))?.unwrap_or_else(|e| {
            tracing::error!(tenant = %self.tenant, error = %e, "the tenant configuration cannot be read");
            Vec::new()
        });
        batch.send(
            conn,
            Message::Peer {
                sender_id: self.settings.server_device.to_string(),
                selected_protocol_version: wire::PROTOCOL_VERSION.to_owned(),
                tenant: member.tenant.clone(),
                user: member.user.clone(),
                role: member.role,
                cursor: target,
                changed: changed.clone(),
                config_heads,
                server_time: Some(now),
            },
        );
        for (device, kind) in others {
            batch.send(
                conn,
                Message::Presence {
                    device,
                    kind,
                    online: true,
                },
            );
        }
        if !changed.is_empty() {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.catch_up = changed.into();
            }
            self.catching_up.insert(conn);
        }
        if !was_online {
            self.presence(batch, &member, true);
        }
        self.uploads_for_joined(batch, conn, &member.user);
        tracing::info!(device = %member.device, user = %member.user, "device joined");
        Ok(())
    }

    /// The connections of `user`'s devices other than `device`, in order.
    pub(super) fn other_devices_of(&self, user: &UserId, device: &DeviceId) -> Vec<ConnId> {
        let mut targets: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| &c.member.user == user && &c.member.device != device)
            .map(|(id, _)| *id)
            .collect();
        targets.sort_unstable();
        targets
    }

    /// Tells the user's other connections that `member`'s device came or went.
    pub(super) fn presence(&mut self, batch: &mut Batch<'_>, member: &Authenticated, online: bool) {
        for conn in self.other_devices_of(&member.user, &member.device) {
            batch.send(
                conn,
                Message::Presence {
                    device: member.device.clone(),
                    kind: member.kind,
                    online,
                },
            );
        }
    }

    /// Starts syncing the next slice of joining devices' changed documents: at most
    /// [`CATCH_UP_PER_BATCH`] in all, shared between the devices waiting.
    pub(super) fn advance_catch_up<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        batch: &mut Batch<'_>,
    ) -> Result<(), StorageError> {
        if self.catching_up.is_empty() {
            return Ok(());
        }
        let waiting: Vec<ConnId> = self.catching_up.iter().copied().collect();
        let share = (CATCH_UP_PER_BATCH / waiting.len()).max(1);
        let mut budget = CATCH_UP_PER_BATCH;
        self.catch_up_stalled = true;
        for conn in waiting {
            // A device whose outgoing queue has no room for its share (in
            // frames, and bytes for at least its next document) waits for the
            // next batch, instead of being dropped as too slow.
            if (batch.room)(conn).frames < share.min(OUT_ROOM_FOR_CATCH_UP)
                || !batch.has_room_for(conn, SYNC_ROOM_BYTES)
            {
                continue;
            }
            self.catch_up_stalled = false;
            batch.senders.insert(conn);
            for _ in 0..share {
                if budget == 0 {
                    return Ok(());
                }
                if !batch.has_room_for(conn, SYNC_ROOM_BYTES) {
                    break;
                }
                let Some(c) = self.conns.get_mut(&conn) else {
                    break;
                };
                let Some(doc) = c.catch_up.pop_front() else {
                    break;
                };
                let member = c.member.clone();
                budget -= 1;
                if self.may_see(store, &member, &doc)? {
                    self.start_sync(store, batch, conn, &doc, true)?;
                } else {
                    batch.send(conn, Message::DocUnavailable { document_id: doc });
                }
            }
            if self.conns.get(&conn).is_none_or(|c| c.catch_up.is_empty()) {
                self.catching_up.remove(&conn);
            }
        }
        Ok(())
    }
}
