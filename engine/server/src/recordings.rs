//! Recordings on the server: the upload and download streams beside a
//! connection's sync stream, and removing deleted recordings' bytes.
//!
//! Owns: accepting a joined connection's extra bidirectional streams (at most
//! [`STREAMS_PER_CONNECTION`] at once), each one upload or one download (see
//! `callsync_core::wire::stream`); the per-device rates of offers and
//! downloads; carrying chunks into the blob store's staging area (each
//! acknowledged once written there; the phone keeps its file until `stored`);
//! completing an upload (the blob
//! store verifies the hash, that it is a WAV, the size and duration limits
//! and the tenant's quota, and stores it whole) before the hub references it
//! in the customer's document; and the sweeper that removes the bytes of
//! recordings whose tombstones have committed (never bytes an upload has just
//! stored for a call the hub is still referencing: [`AttachGate`]).
//! Does not own: who may upload, attach or read (the hub session decides,
//! from the document: `callsync_session::hub::RecordingAsk`), or the bytes'
//! verification (`callsync-blobs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use callsync_blobs::{BlobError, BlobHash, BlobStore, StagedUpload};
use callsync_core::wire::stream::{
    self, MAX_OPEN_FRAME_BYTES, MAX_STREAM_FRAME_BYTES, StreamOpen, StreamReply,
};
use callsync_core::wire::{self, ErrorBody, Refusal};
use callsync_core::{CallId, CustomerId, RecordingCode, RecordingRef, TenantId};
use callsync_net::framing::{read_frame_within, write_frame};
use callsync_session::hub::{RecordingAsk, RecordingVerdict};
use callsync_session::{Authenticated, ConnId};
use callsync_store::Store;
use tokio::sync::Semaphore;
use web_transport_quinn::{RecvStream, SendStream, Session as Link};

use crate::connection::Shared;

/// Recording streams one connection may have open at once; another is
/// refused (`too-many-uploads`) until one ends.
pub const STREAMS_PER_CONNECTION: usize = 2;
/// How long a stream may stay silent (no first frame, no next chunk) before
/// the server ends it.
pub const STREAM_IDLE: Duration = Duration::from_secs(30);
/// Upload offers a device may make at once, then one per second: an honest
/// phone offers one recording after each call, and again after a cut.
pub const OFFERS_BURST: f64 = 20.0;
/// See [`OFFERS_BURST`].
pub const OFFERS_PER_SEC: f64 = 1.0;
/// Downloads a member may start at once, then one per second.
pub const DOWNLOADS_BURST: f64 = 20.0;
/// See [`DOWNLOADS_BURST`].
pub const DOWNLOADS_PER_SEC: f64 = 1.0;
/// Bytes of a recording sent per download chunk.
const DOWNLOAD_CHUNK: u64 = 256 * 1024;
/// The format every recording has (the blob store admits nothing else).
pub const FORMAT: &str = "wav/pcm16";
/// Uploads completed (checked and stored) at once, server-wide: on another
/// backend than the local disk each holds the recording in memory, up to its
/// size limit.
const COMPLETING_AT_ONCE: usize = 2;

/// Chunks of an upload read from its stream but not yet written: the disk
/// may fall this far behind the network before the stream stops reading
/// (the phone's window is four).
const CHUNKS_QUEUED_TO_DISK: usize = 4;
/// An upload in progress untouched this long is thrown away.
pub const STAGED_IDLE: Duration = Duration::from_secs(24 * 3600);
/// How often the sweeper looks for stale uploads in progress.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// How often the sweeper looks for recordings to remove.
const SWEEP_EVERY: Duration = Duration::from_millis(500);

/// Keeps the sweeper from removing bytes an upload has just stored for a
/// call the hub has not referenced yet: an upload completes under a read
/// guard and marks its recording as being attached until the hub answers;
/// the sweeper checks and removes each recording under the write guard and
/// leaves a marked one for its next pass (by then the reference has
/// committed, and the bytes are in use).
#[derive(Default)]
pub(crate) struct AttachGate {
    gate: tokio::sync::RwLock<()>,
    attaching: std::sync::Mutex<std::collections::HashMap<(TenantId, BlobHash), usize>>,
}

/// A recording being attached; unmarked when this drops.
struct Attaching {
    key: (TenantId, BlobHash),
    gate: Arc<AttachGate>,
}

impl Drop for Attaching {
    fn drop(&mut self) {
        let mut marks = self
            .gate
            .attaching
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = marks.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                marks.remove(&self.key);
            }
        }
    }
}

impl AttachGate {
    fn mark(self: &Arc<Self>, tenant: &TenantId, hash: &BlobHash) -> Attaching {
        let key = (tenant.clone(), *hash);
        *self
            .attaching
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key.clone())
            .or_default() += 1;
        Attaching {
            key,
            gate: self.clone(),
        }
    }

    fn is_attaching(&self, tenant: &TenantId, hash: &BlobHash) -> bool {
        self.attaching
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(&(tenant.clone(), *hash))
    }
}

/// What the recording streams share.
pub(crate) struct Recordings {
    /// The blob store.
    pub(crate) blobs: Arc<BlobStore>,
    /// Offers per device.
    pub(crate) offers: crate::limits::RatePerKey<callsync_core::DeviceId>,
    /// Downloads per member.
    pub(crate) downloads: crate::limits::RatePerKey<callsync_core::UserId>,
    /// Uploads being received, one stream per recording at a time.
    uploading: Arc<std::sync::Mutex<std::collections::HashSet<(TenantId, BlobHash)>>>,
    /// Uploads being completed (checked and stored) at once.
    completing: Semaphore,
    /// Shared with the sweeper.
    attach_gate: Arc<AttachGate>,
}

/// An upload being received; its recording is free for another stream once
/// this drops.
struct Uploading {
    key: (TenantId, BlobHash),
    set: Arc<std::sync::Mutex<std::collections::HashSet<(TenantId, BlobHash)>>>,
}

impl Drop for Uploading {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.key);
    }
}

impl Recordings {
    pub(crate) fn new(blobs: Arc<BlobStore>, attach_gate: Arc<AttachGate>) -> Self {
        Self {
            attach_gate,
            blobs,
            offers: crate::limits::RatePerKey::new(OFFERS_BURST, OFFERS_PER_SEC),
            downloads: crate::limits::RatePerKey::new(DOWNLOADS_BURST, DOWNLOADS_PER_SEC),
            uploading: Arc::default(),
            completing: Semaphore::new(COMPLETING_AT_ONCE),
        }
    }

    /// Marks the upload of `hash` as being received, unless another stream
    /// is receiving it.
    fn begin(&self, tenant: &TenantId, hash: &BlobHash) -> Option<Uploading> {
        let key = (tenant.clone(), *hash);
        let mut set = self
            .uploading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        set.insert(key.clone()).then(|| Uploading {
            key,
            set: self.uploading.clone(),
        })
    }
}

/// Who a stream serves.
#[derive(Clone)]
struct Asker {
    conn: ConnId,
    member: Authenticated,
}

/// Accepts the connection's recording streams until it closes.
pub(crate) async fn accept_streams(
    connection: Link,
    shared: Arc<Shared>,
    conn: ConnId,
    member: Authenticated,
) {
    let permits = Arc::new(Semaphore::new(STREAMS_PER_CONNECTION));
    let asker = Asker { conn, member };
    while let Ok((mut send, recv)) = connection.accept_bi().await {
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            let body = refusal(RecordingCode::TooManyUploads, "too many recording streams");
            let _ = reply(&mut send, &StreamReply::Refused(body)).await;
            let _ = send.finish();
            continue;
        };
        let shared = shared.clone();
        let asker = asker.clone();
        tokio::spawn(async move {
            serve_stream(&shared, &asker, send, recv).await;
            drop(permit);
        });
    }
}

fn refusal(code: RecordingCode, detail: impl Into<String>) -> ErrorBody {
    Refusal::RecordingRefused {
        code,
        detail: detail.into(),
    }
    .body()
}

async fn reply(send: &mut SendStream, message: &StreamReply) -> Result<(), ()> {
    let frame = stream::encode_stream_frame(message).map_err(|_| ())?;
    write_frame(send, &frame).await.map_err(|_| ())
}

/// Answers `refused` and ends the stream.
async fn refuse(send: &mut SendStream, body: ErrorBody) {
    tracing::info!(code = %body.code, "recording stream refused");
    let _ = reply(send, &StreamReply::Refused(body)).await;
    let _ = send.finish();
}

async fn serve_stream(shared: &Shared, asker: &Asker, mut send: SendStream, mut recv: RecvStream) {
    let first = tokio::time::timeout(
        STREAM_IDLE,
        read_frame_within(&mut recv, MAX_OPEN_FRAME_BYTES),
    )
    .await;
    let open = match first {
        Ok(Ok(Some(body))) => match stream::decode_stream_frame::<StreamOpen>(&body) {
            Ok(open) => open,
            Err(e) => return refuse(&mut send, Refusal::from(&e).body()).await,
        },
        Ok(Ok(None)) | Err(_) => return,
        Ok(Err(e)) => {
            let body = Refusal::BadRequest {
                detail: e.to_string(),
            }
            .body();
            return refuse(&mut send, body).await;
        }
    };
    match open {
        StreamOpen::Upload {
            customer,
            call,
            sha256,
            bytes,
        } => {
            let offer = Offer {
                customer,
                call,
                sha256,
                bytes,
            };
            if let Err(body) = upload(shared, asker, offer, &mut send, &mut recv).await {
                refuse(&mut send, body).await;
            }
        }
        StreamOpen::Download { call, offset } => {
            if let Err(body) = download(shared, asker, call, offset, &mut send).await {
                refuse(&mut send, body).await;
            }
        }
    }
}

/// Asks the tenant's hub about a recording.
async fn ask_hub(
    shared: &Shared,
    asker: &Asker,
    ask: RecordingAsk,
) -> Result<RecordingVerdict, ErrorBody> {
    shared
        .hubs
        .recording(&asker.member.tenant, asker.conn, ask)
        .await
}

struct Offer {
    customer: CustomerId,
    call: CallId,
    sha256: String,
    bytes: u64,
}

async fn upload(
    shared: &Shared,
    asker: &Asker,
    offer: Offer,
    send: &mut SendStream,
    recv: &mut RecvStream,
) -> Result<(), ErrorBody> {
    let recordings = &shared.recordings;
    let tenant = &asker.member.tenant;
    if !recordings
        .offers
        .allow(&asker.member.device, Instant::now())
    {
        return Err(Refusal::Busy.body());
    }
    let Some(hash) = BlobHash::from_hex(&offer.sha256) else {
        return Err(Refusal::BadRequest {
            detail: "sha256 is not a lower-case hex SHA-256".to_owned(),
        }
        .body());
    };
    let limits = recordings.blobs.limits();
    if offer.bytes > limits.max_bytes || offer.bytes == 0 {
        let e = BlobError::TooLarge {
            bytes: offer.bytes,
            max: limits.max_bytes,
        };
        return Err(e.refusal().body());
    }
    let verdict = ask_hub(
        shared,
        asker,
        RecordingAsk::Upload {
            customer: offer.customer.clone(),
            call: offer.call.clone(),
        },
    )
    .await;
    match verdict {
        Ok(RecordingVerdict::Stored(recording)) => {
            let _ = reply(send, &StreamReply::Stored { recording }).await;
            let _ = send.finish();
            return Ok(());
        }
        Ok(RecordingVerdict::MayUpload) => {}
        Ok(RecordingVerdict::Readable { .. }) => return Err(Refusal::ServerTrouble.body()),
        Err(body) => {
            if body.code == RecordingCode::Deleted.as_str() {
                // Bytes staged before the deletion are not kept either.
                let _ = recordings.blobs.discard_staged(tenant, &hash).await;
            }
            return Err(body);
        }
    }
    // One stream at a time per recording: a phone that reconnects while its
    // old stream is still being completed waits for it.
    let Some(_uploading) = recordings.begin(tenant, &hash) else {
        return Err(Refusal::Busy.body());
    };
    let mut staged = recordings
        .blobs
        .stage(tenant, &hash, offer.bytes)
        .await
        .map_err(|e| e.refusal().body())?;
    let held = staged.held();
    reply(send, &StreamReply::Held { held })
        .await
        .map_err(|()| Refusal::ShuttingDown.body())?;
    if held < offer.bytes && !receive_chunks(recv, send, &mut staged, offer.bytes).await? {
        // The phone went (or went quiet): what is staged waits for its next
        // offer.
        return Ok(());
    }
    // At most two at once: another backend than the local disk reads the
    // whole into memory.
    let (stored, _attaching) = {
        let Ok(_permit) = recordings.completing.acquire().await else {
            return Err(Refusal::ShuttingDown.body());
        };
        let _no_sweeping = recordings.attach_gate.gate.read().await;
        let stored = recordings
            .blobs
            .complete(tenant, staged)
            .await
            .map_err(|e| e.refusal().body())?;
        (stored, recordings.attach_gate.mark(tenant, &hash))
    };
    let recording = RecordingRef {
        sha256: hash.hex(),
        size: stored.bytes,
        duration_ms: stored.duration_ms,
        format: FORMAT.to_owned(),
    };
    let verdict = ask_hub(
        shared,
        asker,
        RecordingAsk::Attach {
            customer: offer.customer,
            call: offer.call,
            recording,
        },
    )
    .await?;
    match verdict {
        RecordingVerdict::Stored(recording) => {
            let _ = reply(send, &StreamReply::Stored { recording }).await;
            let _ = send.finish();
            Ok(())
        }
        _ => Err(Refusal::ServerTrouble.body()),
    }
}

/// Receives an upload's chunks until `total` bytes are staged (true) or the
/// phone goes (false). Reading from the stream and writing to the disk
/// overlap: the chunks that arrive while the last are written go to the disk
/// together, and each write is acknowledged (the staging area holds it), so
/// the phone's window of chunks in flight stays full. Chunks read when the
/// phone goes are still written, so a cut connection sends again only what
/// the network held.
async fn receive_chunks(
    recv: &mut RecvStream,
    send: &mut SendStream,
    staged: &mut StagedUpload,
    total: u64,
) -> Result<bool, ErrorBody> {
    let (queue, mut queued) = tokio::sync::mpsc::channel::<(u64, Bytes)>(CHUNKS_QUEUED_TO_DISK);
    let mut next = staged.held();
    let read = async move {
        while next < total {
            let frame =
                tokio::time::timeout(STREAM_IDLE, read_frame_within(recv, MAX_STREAM_FRAME_BYTES))
                    .await;
            let body = match frame {
                Ok(Ok(Some(body))) => Bytes::from(body),
                Ok(Ok(None)) | Err(_) => return Ok(()),
                Ok(Err(e)) => {
                    return Err(Refusal::BadRequest {
                        detail: e.to_string(),
                    }
                    .body());
                }
            };
            let (offset, data) =
                stream::decode_chunk(&body).map_err(|e| Refusal::from(&e).body())?;
            if offset != next {
                let held = next;
                return Err(BlobError::OffsetMismatch { offset, held }.refusal().body());
            }
            let data = body.slice(body.len() - data.len()..);
            next = offset.saturating_add(data.len() as u64);
            // The receiver outlives this reader: a closed queue only means
            // the upload is over.
            if queue.send((offset, data)).await.is_err() {
                return Ok(());
            }
        }
        Ok(())
    };
    let write = async {
        while let Some(first) = queued.recv().await {
            // With those that arrived while the last were written.
            let mut chunks = vec![first];
            while let Ok(next) = queued.try_recv() {
                chunks.push(next);
            }
            let held = staged
                .append_all(chunks)
                .await
                .map_err(|e| e.refusal().body())?;
            // A phone that stops reading its acknowledgements has gone.
            match tokio::time::timeout(STREAM_IDLE, reply(send, &StreamReply::Acked { upto: held }))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(())) => return Err(Refusal::ShuttingDown.body()),
                Err(_) => return Ok(false),
            }
            if held >= total {
                return Ok(true);
            }
        }
        Ok(false)
    };
    // A write under way is never cancelled: a reader that ends (the phone
    // went, or sent something refused) only closes the queue, and what it
    // queued is written before its answer is given. A refused write ends the
    // reader at once, which is only ever waiting on the network.
    tokio::pin!(read, write);
    let mut read_outcome = None;
    let written: Result<bool, ErrorBody> = loop {
        tokio::select! {
            outcome = &mut read, if read_outcome.is_none() => read_outcome = Some(outcome),
            written = &mut write => break written,
        }
    };
    match written? {
        true => Ok(true),
        false => read_outcome.unwrap_or(Ok(())).map(|()| false),
    }
}

/// Answers `recording-link`: the hub decides whether the member may read the
/// call's recording (as for a download stream, under the same rate), then a
/// link to play it is signed.
pub(crate) async fn link(
    shared: &Shared,
    conn: ConnId,
    member: &Authenticated,
    call: CallId,
) -> wire::RpcResult {
    if !shared
        .recordings
        .downloads
        .allow(&member.user, Instant::now())
    {
        return wire::RpcResult::Refused(Refusal::Busy.body());
    }
    let asker = Asker {
        conn,
        member: member.clone(),
    };
    match ask_hub(shared, &asker, RecordingAsk::Read { call }).await {
        Ok(RecordingVerdict::Readable { recording, .. }) => wire::RpcResult::RecordingLink(
            shared
                .playback
                .link(&member.tenant, recording, crate::clock::now()),
        ),
        Ok(_) => wire::RpcResult::Refused(Refusal::ServerTrouble.body()),
        Err(body) => wire::RpcResult::Refused(body),
    }
}

async fn download(
    shared: &Shared,
    asker: &Asker,
    call: CallId,
    offset: u64,
    send: &mut SendStream,
) -> Result<(), ErrorBody> {
    if !shared
        .recordings
        .downloads
        .allow(&asker.member.user, Instant::now())
    {
        return Err(Refusal::Busy.body());
    }
    let (customer, recording) = match ask_hub(shared, asker, RecordingAsk::Read { call }).await? {
        RecordingVerdict::Readable {
            customer,
            recording,
        } => (customer, recording),
        _ => return Err(Refusal::ServerTrouble.body()),
    };
    let Some(hash) = BlobHash::from_hex(&recording.sha256) else {
        return Err(refusal(RecordingCode::NotFound, "no such recording"));
    };
    if offset > recording.size {
        return Err(Refusal::BadRequest {
            detail: format!(
                "offset {offset} is past the recording's {} bytes",
                recording.size
            ),
        }
        .body());
    }
    let size = recording.size;
    reply(
        send,
        &StreamReply::Found {
            recording,
            customer,
            offset,
        },
    )
    .await
    .map_err(|()| Refusal::ShuttingDown.body())?;
    let tenant = &asker.member.tenant;
    let mut at = offset;
    while at < size {
        let end = (at + DOWNLOAD_CHUNK).min(size);
        let bytes: Bytes = shared
            .recordings
            .blobs
            .read(tenant, &hash, at..end)
            .await
            .map_err(|e| e.refusal().body())?;
        let frame = stream::encode_chunk(at, &bytes).map_err(|e| Refusal::from(&e).body())?;
        if tokio::time::timeout(STREAM_IDLE, write_frame(send, &frame))
            .await
            .map_or(true, |written| written.is_err())
        {
            return Ok(());
        }
        at = end;
    }
    let _ = send.finish();
    Ok(())
}

/// Removes the bytes of recordings whose tombstones have committed, until the
/// server stops: each row is cleared only once its bytes are gone (or still
/// held by another call's stored recording), so a crash in between only
/// delays the removal to the next start.
pub(crate) async fn sweep_deletions(store: Store, blobs: Arc<BlobStore>, gate: Arc<AttachGate>) {
    let store = Arc::new(std::sync::Mutex::new(store));
    let mut ticks = tokio::time::interval(SWEEP_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pruned_at = Instant::now();
    loop {
        ticks.tick().await;
        if let Err(e) = sweep_once(&store, &blobs, &gate).await {
            tracing::warn!(error = %e, "could not remove deleted recordings; trying again");
        }
        if pruned_at.elapsed() >= PRUNE_EVERY {
            pruned_at = Instant::now();
            match blobs.prune_staged(STAGED_IDLE).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "stale uploads in progress removed"),
                Err(e) => tracing::warn!(error = %e, "could not prune uploads in progress"),
            }
        }
    }
}

type SharedStore = Arc<std::sync::Mutex<Store>>;

async fn with_store<T: Send + 'static>(
    store: &SharedStore,
    work: impl FnOnce(&mut Store) -> Result<T, callsync_store::StoreError> + Send + 'static,
) -> Result<T, String> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let mut store = store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        work(&mut store).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// One pass of the sweeper: the deletions pending now.
pub(crate) async fn sweep_once(
    store: &SharedStore,
    blobs: &BlobStore,
    gate: &AttachGate,
) -> Result<usize, String> {
    let pending = with_store(store, |s| s.pending_blob_deletions(100)).await?;
    let mut removed = 0;
    for (tenant, sha256) in pending {
        let hash = BlobHash::from_hex(&sha256);
        // No upload completes while this recording is looked at and removed.
        let _sweeping = gate.gate.write().await;
        if hash.is_some_and(|h| gate.is_attaching(&tenant, &h)) {
            // Just stored again for a call the hub is referencing now: the
            // next pass finds it in use.
            continue;
        }
        let key = (tenant.clone(), sha256.clone());
        let in_use = with_store(store, move |s| s.recording_in_use(&key.0, &key.1)).await?;
        if !in_use && let Some(hash) = hash {
            remove_bytes(blobs, &tenant, &hash).await?;
            removed += 1;
            tracing::info!(tenant = %tenant, %sha256, "a deleted recording's bytes were removed");
        }
        with_store(store, move |s| s.blob_deletion_done(&tenant, &sha256)).await?;
    }
    Ok(removed)
}

async fn remove_bytes(blobs: &BlobStore, tenant: &TenantId, hash: &BlobHash) -> Result<(), String> {
    match blobs.delete(tenant, hash).await {
        Ok(()) | Err(BlobError::NotFound) => {}
        Err(e) => return Err(e.to_string()),
    }
    blobs
        .discard_staged(tenant, hash)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_stored_again_for_a_call_being_attached_outlive_a_sweep_of_their_old_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(std::sync::Mutex::new(
            Store::open(&dir.path().join("callsync.db")).unwrap(),
        ));
        let blobs = BlobStore::local(
            &dir.path().join("recordings"),
            callsync_blobs::BlobLimits::default(),
        )
        .unwrap();
        let gate = Arc::new(AttachGate::default());
        let tenant = TenantId::new("acme").unwrap();
        let wav = callsync_testkit::tone_wav(1, 8_000, 440.0);
        let hash = BlobHash::of(&wav);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            // One call's recording was deleted; the same audio is stored again
            // for another call, which the hub is referencing right now.
            {
                let mut s = store.lock().unwrap();
                let mut tx = s.write().unwrap();
                tx.queue_blob_deletion(&tenant, &hash.hex()).unwrap();
                tx.commit().unwrap();
            }
            blobs
                .put(&tenant, hash, Bytes::from(wav.clone()))
                .await
                .unwrap();
            let attaching = gate.mark(&tenant, &hash);
            assert_eq!(sweep_once(&store, &blobs, &gate).await.unwrap(), 0);
            assert_eq!(blobs.size(&tenant, &hash).await.unwrap(), wav.len() as u64);
            let pending = store.lock().unwrap().pending_blob_deletions(10).unwrap();
            assert_eq!(pending.len(), 1, "looked at again next pass");
            // Once no upload holds it (here: its attach failed, so nothing
            // references it), the next pass removes it.
            drop(attaching);
            assert_eq!(sweep_once(&store, &blobs, &gate).await.unwrap(), 1);
            assert!(matches!(
                blobs.size(&tenant, &hash).await,
                Err(BlobError::NotFound)
            ));
            assert!(
                store
                    .lock()
                    .unwrap()
                    .pending_blob_deletions(10)
                    .unwrap()
                    .is_empty()
            );
        });
    }
}
