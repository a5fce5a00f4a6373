//! The hub's part in recordings: who may upload, attach and read a call's
//! recording, and writing the reference into the customer's document.
//!
//! Owns: the checks against the document (the call exists, this phone dialed
//! it, it was recorded and has started, the recording is not deleted), the
//! `recording-attached` event (the server's, one per call: its id is the
//! call's, so a repeated attach collapses), and marking bytes for deletion
//! when they were stored for a call that cannot take them; and relaying what a
//! phone says of the recordings it still holds (`upload-status`) to the
//! user's other devices, at most one status per [`UPLOAD_STATUS_GAP_MS`] per
//! phone, kept while the phone is connected so a device joining later hears
//! it too.
//! Does not own: the bytes (the server's blob store, driven off the hub), or
//! the upload's order and resumption (the device's upload queue).

use callsync_core::wire::{ErrorBody, Message, Refusal, RpcResult};
use callsync_core::{
    CallEvent, CallId, CallOrigin, CustomerId, DeviceId, DeviceKind, EventId, EventKind,
    RecordingCode, RecordingRef, RecordingState, ResultCatalog, RuleContext, Stamp, Timestamp,
    UploadStatus, UserId,
};

use super::{Batch, HubSession};
use crate::ConnId;
use crate::storage::{HubStore, LoadedDoc, StorageError};

/// What a connection asks of a call's recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordingAsk {
    /// May this phone upload the recording of `call` (on `customer`)?
    Upload {
        /// The customer whose document holds the call.
        customer: CustomerId,
        /// The call.
        call: CallId,
    },
    /// The bytes were verified and stored: reference them in the document.
    Attach {
        /// The customer.
        customer: CustomerId,
        /// The call.
        call: CallId,
        /// What was stored.
        recording: RecordingRef,
    },
    /// May this member play or download the recording of `call`?
    Read {
        /// The call.
        call: CallId,
    },
}

/// The hub's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordingVerdict {
    /// The upload may go ahead: the call waits for its recording.
    MayUpload,
    /// The document references this recording (stored before, or just now).
    Stored(RecordingRef),
    /// The member may read the recording.
    Readable {
        /// The customer whose document holds the call.
        customer: CustomerId,
        /// The recording.
        recording: RecordingRef,
    },
}

/// The shortest time between two upload statuses of one phone the hub relays
/// (a phone sends one when a state changes, at most about once a second).
pub const UPLOAD_STATUS_GAP_MS: i64 = 250;

/// What a connected phone said last of its recordings.
#[derive(Debug, Clone)]
pub(super) struct PhoneUploads {
    user: UserId,
    uploads: Vec<UploadStatus>,
    at: Timestamp,
}

/// A refusal of the recordings' own.
fn refused(code: RecordingCode, detail: impl Into<String>) -> ErrorBody {
    Refusal::RecordingRefused {
        code,
        detail: detail.into(),
    }
    .body()
}

impl<D: LoadedDoc> HubSession<D> {
    /// `upload-status` from connection `conn`: kept and relayed to the user's
    /// other connections. Only a phone says it; only its own user hears it.
    pub(super) fn upload_status(
        &mut self,
        batch: &mut Batch<'_>,
        conn: ConnId,
        uploads: Vec<UploadStatus>,
    ) -> RpcResult {
        let Some(member) = self.conns.get(&conn).map(|c| c.member.clone()) else {
            return RpcResult::Done;
        };
        if member.kind != DeviceKind::Phone {
            return RpcResult::Refused(
                Refusal::BadRequest {
                    detail: "only a phone holds recordings to upload".to_owned(),
                }
                .body(),
            );
        }
        let now = self.now;
        if let Some(last) = self.phone_uploads.get(&member.device)
            && now.as_millis() - last.at.as_millis() < UPLOAD_STATUS_GAP_MS
        {
            return RpcResult::Refused(Refusal::Busy.body());
        }
        self.relay_uploads(batch, &member.user, &member.device, &uploads);
        self.phone_uploads.insert(
            member.device.clone(),
            PhoneUploads {
                user: member.user,
                uploads,
                at: now,
            },
        );
        RpcResult::Done
    }

    /// Tells `user`'s connections other than `device`'s what it holds.
    fn relay_uploads(
        &self,
        batch: &mut Batch<'_>,
        user: &UserId,
        device: &DeviceId,
        uploads: &[UploadStatus],
    ) {
        for target in self.other_devices_of(user, device) {
            batch.send(
                target,
                Message::PhoneUploads {
                    device: device.clone(),
                    uploads: uploads.to_vec(),
                },
            );
        }
    }

    /// A device of `user` joined on `conn`: what each of the user's connected
    /// phones said last.
    pub(super) fn uploads_for_joined(&self, batch: &mut Batch<'_>, conn: ConnId, user: &UserId) {
        let mut said: Vec<(&DeviceId, &PhoneUploads)> = self
            .phone_uploads
            .iter()
            .filter(|(_, p)| &p.user == user && !p.uploads.is_empty())
            .collect();
        said.sort_unstable_by_key(|(device, _)| *device);
        for (device, phone) in said {
            batch.send(
                conn,
                Message::PhoneUploads {
                    device: device.clone(),
                    uploads: phone.uploads.clone(),
                },
            );
        }
    }

    /// A phone's last connection closed: what it said is forgotten, and the
    /// user's other devices hear it holds nothing they can follow.
    pub(super) fn phone_went_away(&mut self, batch: &mut Batch<'_>, device: &DeviceId) {
        if let Some(phone) = self.phone_uploads.remove(device)
            && !phone.uploads.is_empty()
        {
            self.relay_uploads(batch, &phone.user, device, &[]);
        }
    }

    /// Answers `ask` from connection `conn`; the answer is released with the
    /// batch (after its commit: an attach's event is durable before the phone
    /// hears "stored" and forgets its file).
    pub(super) fn recording<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        batch: &mut Batch<'_>,
        conn: ConnId,
        ticket: u64,
        ask: RecordingAsk,
    ) -> Result<(), StorageError> {
        let answer = self.recording_answer(store, batch, conn, ask)?;
        batch.recordings.push((ticket, answer));
        Ok(())
    }

    fn recording_answer<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        batch: &mut Batch<'_>,
        conn: ConnId,
        ask: RecordingAsk,
    ) -> Result<Result<RecordingVerdict, ErrorBody>, StorageError> {
        let Some(member) = self.conns.get(&conn).map(|c| c.member.clone()) else {
            return Ok(Err(Refusal::ShuttingDown.body()));
        };
        let not_found = || Ok(Err(refused(RecordingCode::NotFound, "no such recording")));
        match ask {
            RecordingAsk::Upload { customer, call }
            | RecordingAsk::Attach { customer, call, .. }
                if member.kind != DeviceKind::Phone =>
            {
                tracing::info!(device = %member.device, %customer, %call, "a device that is not a phone offered a recording");
                not_found()
            }
            RecordingAsk::Upload { customer, call } => {
                let Some(view) = self.call_view(store, &customer, &call)? else {
                    return not_found();
                };
                if !dialed_by(&view.origin, &member.device) {
                    return not_found();
                }
                Ok(match (view.recording_state, view.recording) {
                    (RecordingState::Stored, Some(recording)) => {
                        Ok(RecordingVerdict::Stored(recording))
                    }
                    (RecordingState::Deleted, _) => {
                        Err(refused(RecordingCode::Deleted, "the recording was deleted"))
                    }
                    (RecordingState::Pending, _) => Ok(RecordingVerdict::MayUpload),
                    _ if is_recorded(&view.origin) => Err(refused(
                        RecordingCode::NotStarted,
                        "the server does not have the call's start yet",
                    )),
                    _ => Err(refused(RecordingCode::NotFound, "the call is not recorded")),
                })
            }
            RecordingAsk::Attach {
                customer,
                call,
                recording,
            } => self.attach(store, batch, &member.device, customer, call, recording),
            RecordingAsk::Read { call } => {
                let Some(customer) = store.customer_of_call(&self.tenant, &call)? else {
                    return not_found();
                };
                // A customer the member may not see is answered as no such
                // recording: nothing says it exists.
                if !self.may_see(store, &member, &customer)? {
                    return not_found();
                }
                let Some(view) = self.call_view(store, &customer, &call)? else {
                    return not_found();
                };
                Ok(match (view.recording_state, view.recording) {
                    (RecordingState::Stored, Some(recording)) => Ok(RecordingVerdict::Readable {
                        customer,
                        recording,
                    }),
                    (RecordingState::Deleted, _) => {
                        Err(refused(RecordingCode::Deleted, "the recording was deleted"))
                    }
                    _ => Err(refused(
                        RecordingCode::NotFound,
                        "the recording is not on the server",
                    )),
                })
            }
        }
    }

    /// The call as the customer's document derives it (`None`: no such
    /// customer or call, or a document that does not load).
    fn call_view<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        customer: &CustomerId,
        call: &CallId,
    ) -> Result<Option<callsync_core::CallView>, StorageError> {
        if !self.load(store, customer)? {
            return Ok(None);
        }
        Ok(self.docs.get_mut(customer).and_then(|d| d.doc().call(call)))
    }

    /// Writes `recording-attached` for bytes the server has verified and
    /// stored. Bytes that no call can take (the recording was deleted
    /// meanwhile) are marked to leave the blob store.
    fn attach<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        batch: &mut Batch<'_>,
        device: &callsync_core::DeviceId,
        customer: CustomerId,
        call: CallId,
        recording: RecordingRef,
    ) -> Result<Result<RecordingVerdict, ErrorBody>, StorageError> {
        if !self.load(store, &customer)? {
            store.queue_blob_deletion(&self.tenant, &recording.sha256)?;
            return Ok(Err(refused(RecordingCode::NotFound, "no such customer")));
        }
        let now = self.now;
        let server_device = self.settings.server_device.clone();
        let server_user = self.settings.server_user.clone();
        let start_limit_ms = self.settings.start_limit_ms;
        let Some(cached) = self.docs.get_mut(&customer) else {
            return Ok(Err(refused(RecordingCode::NotFound, "no such customer")));
        };
        let Some(view) = cached.doc().call(&call) else {
            store.queue_blob_deletion(&self.tenant, &recording.sha256)?;
            return Ok(Err(refused(RecordingCode::NotFound, "no such call")));
        };
        if !dialed_by(&view.origin, device) {
            store.queue_blob_deletion(&self.tenant, &recording.sha256)?;
            return Ok(Err(refused(
                RecordingCode::NotFound,
                "not this phone's call",
            )));
        }
        match (view.recording_state, view.recording) {
            (RecordingState::Stored, Some(existing)) => {
                if existing.sha256 != recording.sha256 {
                    // The call keeps the recording it has: these other bytes
                    // are referenced by nothing (unless another call holds
                    // them, which the sweeper checks).
                    store.queue_blob_deletion(&self.tenant, &recording.sha256)?;
                }
                return Ok(Ok(RecordingVerdict::Stored(existing)));
            }
            (RecordingState::Deleted, _) => {
                store.queue_blob_deletion(&self.tenant, &recording.sha256)?;
                return Ok(Err(refused(
                    RecordingCode::Deleted,
                    "the recording was deleted",
                )));
            }
            (RecordingState::Pending, _) => {}
            _ => {
                store.queue_blob_deletion(&self.tenant, &recording.sha256)?;
                return Ok(Err(refused(
                    RecordingCode::NotStarted,
                    "the server does not have the call's start yet",
                )));
            }
        }
        let Ok(id) = EventId::new(format!("recording-{call}")) else {
            return Ok(Err(refused(RecordingCode::NotFound, "no such call")));
        };
        let event = CallEvent {
            id,
            call: call.clone(),
            stamp: Stamp {
                at: now,
                device: server_device,
                device_kind: DeviceKind::Server,
                user: server_user,
                device_at: None,
            },
            kind: EventKind::RecordingAttached(recording.clone()),
        };
        let catalog = ResultCatalog::new(Vec::new());
        let ctx = RuleContext {
            // Attaching reads no result types.
            catalog: &catalog,
            start_limit_ms,
            other_open_calls: &[],
        };
        if let Err(e) = cached.doc_mut().record(event, &ctx) {
            tracing::warn!(%call, error = %e, "could not record a recording's attachment");
            self.docs.remove(&customer);
            return Ok(Err(refused(RecordingCode::StoreFailed, e.to_string())));
        }
        match store.save(cached, None) {
            Ok(()) => {}
            Err(e) if e.is_failure() => return Err(e),
            Err(e) => {
                tracing::warn!(%call, error = %e, "could not save a recording's attachment");
                self.docs.remove(&customer);
                return Ok(Err(refused(RecordingCode::StoreFailed, e.to_string())));
            }
        }
        tracing::info!(%call, sha256 = %recording.sha256, bytes = recording.size, "recording attached");
        self.fan_out(store, batch, &customer, None)?;
        Ok(Ok(RecordingVerdict::Stored(recording)))
    }
}

/// Whether the call was dialed by `device`.
fn dialed_by(origin: &CallOrigin, device: &callsync_core::DeviceId) -> bool {
    matches!(origin, CallOrigin::Dialed { origin, .. } if origin == device)
}

/// Whether the call was requested with the recording switch on.
fn is_recorded(origin: &CallOrigin) -> bool {
    matches!(
        origin,
        CallOrigin::Dialed {
            recording: true,
            ..
        }
    )
}
