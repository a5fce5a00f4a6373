//! The recordings' blob store: where the server keeps a recording's bytes.
//!
//! Owns: content-addressed storage behind the `object_store` interface (the
//! local filesystem as the embedded default; S3 comes with the scale-out step)
//! under `tenants/<tenant>/recordings/<sha-256>`; verifying a blob before it is
//! stored (its SHA-256 is the one claimed, it is a mono 16-bit PCM WAV within the
//! size and duration limits); whole writes only (the filesystem store writes to
//! a temporary file and renames it, so no half-written blob is ever readable
//! under its name); storing a blob twice stores it once; per-tenant quotas,
//! checked and written under that tenant's own lock so two uploads cannot both
//! pass a quota only one fits; reading a byte range; deleting for real; and the
//! staging area a resumable upload grows in ([`BlobStore::stage`],
//! [`StagedUpload::append`], [`BlobStore::complete`]): local files on the
//! server, appended only at the offset they have reached and hashed as they
//! grow, verified and stored whole at the end.
//! Refusals are typed, with a stable code and Japanese text.
//! Does not own: the upload protocol, who may read or delete a recording (the
//! server checks the member and 担当者閲覧制限 first), or the recording's
//! reference in the customer document.

use std::collections::HashMap;
use std::io::Cursor;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use callsync_core::{RecordingCode, TenantId};
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// What a recording may be: the server's limits, per blob and per tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLimits {
    /// Most bytes one recording may have.
    pub max_bytes: u64,
    /// Longest a recording may last, in milliseconds.
    pub max_duration_ms: u64,
    /// Most bytes of recordings one tenant may store.
    pub tenant_quota_bytes: u64,
}

impl Default for BlobLimits {
    fn default() -> Self {
        Self {
            // Two hours at 16 kHz, 16-bit mono is 230 MB: a call is not that long.
            max_bytes: 128 * 1024 * 1024,
            max_duration_ms: 2 * 60 * 60 * 1_000,
            tenant_quota_bytes: 50 * 1024 * 1024 * 1024,
        }
    }
}

/// A SHA-256 digest, the name of a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobHash(pub [u8; 32]);

impl BlobHash {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::of_digest(&ring::digest::digest(&ring::digest::SHA256, bytes))
    }

    /// The digest a lower-case hex string names (`None` if it names none).
    pub fn from_hex(hex: &str) -> Option<Self> {
        if !callsync_core::wire::stream::is_sha256_hex(hex) {
            return None;
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks(2)) {
            let text = std::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(text, 16).ok()?;
        }
        Some(Self(out))
    }

    fn of_digest(digest: &ring::digest::Digest) -> Self {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }

    /// Lower-case hex.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What is known of a stored recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredBlob {
    /// Its name.
    pub hash: BlobHash,
    /// Its size.
    pub bytes: u64,
    /// How long it plays, in milliseconds.
    pub duration_ms: u64,
    /// Whether this call wrote it (false: it was stored already).
    pub written: bool,
}

/// Why a blob was refused or could not be read. Nothing was stored.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The bytes do not hash to what the device said.
    #[error("the recording's SHA-256 is not the one announced")]
    HashMismatch,
    /// Not a mono 16-bit PCM WAV.
    #[error("not a recording: {0}")]
    NotWav(String),
    /// Larger than a recording may be.
    #[error("the recording is {bytes} bytes; at most {max} are accepted")]
    TooLarge {
        /// Its size.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// Longer than a recording may be.
    #[error("the recording lasts {duration_ms} ms; at most {max} ms are accepted")]
    TooLong {
        /// Its length.
        duration_ms: u64,
        /// The limit.
        max: u64,
    },
    /// The tenant's recordings would pass its quota.
    #[error("the tenant's recordings would use {needed} bytes of its {quota}")]
    QuotaFull {
        /// What storing it would bring the tenant to.
        needed: u64,
        /// The quota.
        quota: u64,
    },
    /// No such blob (or not this tenant's).
    #[error("no such recording")]
    NotFound,
    /// A chunk that does not start where the staged upload has reached.
    #[error("the upload holds {held} bytes; a chunk at {offset} does not follow")]
    OffsetMismatch {
        /// Where the chunk starts.
        offset: u64,
        /// What the staging area holds.
        held: u64,
    },
    /// Nothing is staged for this upload (another stream completed it, or
    /// it was thrown away): the device offers again.
    #[error("no upload of this recording is in progress")]
    NothingStaged,
    /// More uploads in progress for the tenant than it may have.
    #[error("at most {0} uploads may be in progress for a tenant")]
    TooManyUploads(usize),
    /// The store failed.
    #[error("blob store: {0}")]
    Store(#[from] object_store::Error),
}

impl BlobError {
    /// The code every device matches on.
    pub fn recording_code(&self) -> RecordingCode {
        match self {
            Self::HashMismatch => RecordingCode::HashMismatch,
            Self::NotWav(_) => RecordingCode::NotWav,
            Self::TooLarge { .. } => RecordingCode::TooLarge,
            Self::TooLong { .. } => RecordingCode::TooLong,
            Self::QuotaFull { .. } => RecordingCode::QuotaFull,
            Self::NotFound => RecordingCode::NotFound,
            Self::OffsetMismatch { .. } | Self::NothingStaged => RecordingCode::OffsetMismatch,
            Self::TooManyUploads(_) => RecordingCode::TooManyUploads,
            Self::Store(_) => RecordingCode::StoreFailed,
        }
    }

    /// A stable code.
    pub fn code(&self) -> &'static str {
        self.recording_code().as_str()
    }

    /// The refusal a device is sent.
    pub fn refusal(&self) -> callsync_core::wire::Refusal {
        callsync_core::wire::Refusal::RecordingRefused {
            code: self.recording_code(),
            detail: self.to_string(),
        }
    }

    /// The message in Japanese.
    pub fn message_ja(&self) -> String {
        match self {
            Self::HashMismatch => "録音データが破損しています（ハッシュが一致しません）".to_owned(),
            Self::NotWav(_) => {
                "録音ファイルの形式が正しくありません（WAV ではありません）".to_owned()
            }
            Self::TooLarge { bytes, max } => {
                format!("録音ファイルが大きすぎます（{bytes} バイト、上限 {max} バイト）")
            }
            Self::TooLong { duration_ms, max } => format!(
                "録音が長すぎます（{} 秒、上限 {} 秒）",
                duration_ms / 1_000,
                max / 1_000
            ),
            Self::QuotaFull { .. } => "録音の保存容量の上限に達しています".to_owned(),
            Self::NotFound => "録音が見つかりません".to_owned(),
            Self::OffsetMismatch { held, .. } => {
                format!(
                    "アップロードの位置が一致しません（サーバーは {held} バイトまで受信済みです）"
                )
            }
            Self::NothingStaged => "進行中のアップロードがありません".to_owned(),
            Self::TooManyUploads(max) => {
                format!("同時に進行できるアップロードは {max} 件までです")
            }
            Self::Store(_) => "録音を保存できませんでした".to_owned(),
        }
    }
}

/// The length of a mono 16-bit PCM WAV in milliseconds, or why it is not one.
pub fn wav_duration_ms(bytes: &[u8]) -> Result<u64, BlobError> {
    wav_duration_of(Cursor::new(bytes), bytes.len() as u64)
}

/// [`wav_duration_ms`] of a WAV of `size` bytes read from `reader`: only its
/// header is read.
fn wav_duration_of<R: std::io::Read>(reader: R, size: u64) -> Result<u64, BlobError> {
    let reader = hound::WavReader::new(reader).map_err(|e| BlobError::NotWav(e.to_string()))?;
    let spec = reader.spec();
    if spec.channels != 1
        || spec.bits_per_sample != 16
        || spec.sample_format != hound::SampleFormat::Int
        || spec.sample_rate == 0
    {
        return Err(BlobError::NotWav("not mono 16-bit PCM".to_owned()));
    }
    // The data chunk must be all there: a header claiming more than the file
    // holds is a cut file.
    let claimed = u64::from(reader.len()) * 2;
    if claimed > size {
        return Err(BlobError::NotWav("cut short".to_owned()));
    }
    Ok(u64::from(reader.duration()) * 1_000 / u64::from(spec.sample_rate))
}

/// An upload in progress, open for one stream to append to: its staged file
/// and the SHA-256 of what that holds so far. Opened by [`BlobStore::stage`],
/// ended by [`BlobStore::complete`].
///
/// The bytes are hashed as they are written, and what the file held before
/// this stream (a resumed upload, a restarted server) is read back and hashed
/// when it opens: bytes a crash or the disk damaged while no stream held them
/// fail the hash at the end. So the end does not read the whole again (on a
/// 19 MB recording that second read was 14 of the 18 ms the end took). That
/// rests on one writer per staged file: the server runs one stream per
/// recording and never cancels a write under way. As a second line, each
/// chunk is written at its own offset (never appended, so a stray write could
/// not shift the bytes after it) and the end checks that the file holds
/// exactly as many bytes as were hashed.
pub struct StagedUpload {
    hash: BlobHash,
    /// The size the device announced.
    total: u64,
    path: PathBuf,
    /// The tenant's staging directory.
    dir: PathBuf,
    tenant_lock: Arc<tokio::sync::Mutex<()>>,
    held: u64,
    /// `None` until the file exists (its first chunk), or after a write failed.
    writer: Option<Writer>,
    /// A write failed: what the file holds is not known here any more; the
    /// device offers again and the next stream reads it.
    failed: bool,
    background_sync: Option<tokio::task::JoinHandle<()>>,
}

/// The staged file open for writing, and the digest of what it holds.
struct Writer {
    file: std::fs::File,
    digest: ring::digest::Context,
}

impl std::fmt::Debug for StagedUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedUpload")
            .field("hash", &self.hash.hex())
            .field("total", &self.total)
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

/// Opens a staged file to write to and hashes what it holds (`None` if
/// there is none). A file a crash cut short resumes from its length; bytes a
/// crash mangled fail the hash at the end, so they are never stored.
fn resume_staged(path: &Path) -> Result<Option<(u64, Writer)>, BlobError> {
    use std::io::Read;
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buffer = vec![0u8; 256 * 1024];
    let mut held = 0u64;
    loop {
        let read = file.read(&mut buffer).map_err(io)?;
        if read == 0 {
            break;
        }
        digest.update(&buffer[..read]);
        held += read as u64;
    }
    Ok(Some((held, Writer { file, digest })))
}

impl StagedUpload {
    /// The bytes staged: where the device resumes.
    pub fn held(&self) -> u64 {
        self.held
    }

    /// Appends `chunk` at `offset`; returns the bytes now held. A chunk that
    /// does not start where the upload has reached, or that would pass the
    /// announced size, is refused and changes nothing.
    pub async fn append(&mut self, offset: u64, chunk: Bytes) -> Result<u64, BlobError> {
        self.append_all(vec![(offset, chunk)]).await
    }

    /// Appends chunks that follow one another, in one trip to the disk (those
    /// that arrived while the last were written); returns the bytes now held.
    /// If one does not start where the one before it ends, or the last would
    /// pass the announced size, none is appended.
    pub async fn append_all(&mut self, chunks: Vec<(u64, Bytes)>) -> Result<u64, BlobError> {
        if self.failed {
            return Err(BlobError::NothingStaged);
        }
        let mut end = self.held;
        for (offset, chunk) in &chunks {
            if *offset != end {
                return Err(BlobError::OffsetMismatch {
                    offset: *offset,
                    held: end,
                });
            }
            end += chunk.len() as u64;
        }
        if end > self.total {
            return Err(BlobError::TooLarge {
                bytes: end,
                max: self.total,
            });
        }
        let writer = match self.writer.take() {
            Some(writer) => writer,
            None => self.create().await?,
        };
        // Until the writes are known to have happened whole.
        self.failed = true;
        // One trip to the blocking pool: the writes (at their offset) and the
        // hash.
        let start = self.held;
        let (writer, written) = tokio::task::spawn_blocking(move || {
            use std::io::{Seek, Write};
            let mut writer = writer;
            if let Err(e) = writer.file.seek(std::io::SeekFrom::Start(start)) {
                return (writer, Err(e));
            }
            for (_, chunk) in &chunks {
                if let Err(e) = writer.file.write_all(chunk) {
                    return (writer, Err(e));
                }
                writer.digest.update(chunk);
            }
            (writer, Ok(()))
        })
        .await
        .map_err(joined)?;
        written.map_err(io)?;
        self.failed = false;
        if self.held / BACKGROUND_SYNC_BYTES != end / BACKGROUND_SYNC_BYTES {
            self.sync_in_background(&writer.file);
        }
        self.writer = Some(writer);
        self.held = end;
        Ok(end)
    }

    /// Creates the staged file, unless the tenant has as many uploads in
    /// progress as it may.
    async fn create(&self) -> Result<Writer, BlobError> {
        let _turn = self.tenant_lock.lock().await;
        let (dir, path) = (self.dir.clone(), self.path.clone());
        tokio::task::spawn_blocking(move || -> Result<Writer, BlobError> {
            std::fs::create_dir_all(&dir).map_err(io)?;
            let in_progress = std::fs::read_dir(&dir).map_err(io)?.count();
            if in_progress >= MAX_STAGED_PER_TENANT {
                return Err(BlobError::TooManyUploads(MAX_STAGED_PER_TENANT));
            }
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(io)?;
            Ok(Writer {
                file,
                digest: ring::digest::Context::new(&ring::digest::SHA256),
            })
        })
        .await
        .map_err(joined)?
    }

    /// Starts writing what is appended to the disk while more arrives, so the
    /// sync before `stored` has little left to do. Chunks are not synced one
    /// by one: the staging area only ever holds a claim the next offer reads
    /// back, checked against the SHA-256 before anything is stored. Syncing
    /// each 256 KiB in line cost three quarters of an upload's time here.
    fn sync_in_background(&mut self, file: &std::fs::File) {
        if self
            .background_sync
            .as_ref()
            .is_some_and(|s| !s.is_finished())
        {
            return;
        }
        if let Ok(file) = file.try_clone() {
            self.background_sync = Some(tokio::task::spawn_blocking(move || {
                // Only spreads the disk's work: the sync that makes the blob
                // durable runs (and is checked) before `stored` is said.
                let _ = file.sync_data();
            }));
        }
    }
}

/// How a checked blob reaches the store.
enum Admit<'a> {
    /// Written through the object store.
    Put(Bytes),
    /// A staged file renamed into the local store's directory.
    Rename {
        /// The staged file.
        from: &'a Path,
        /// Its place in the store.
        to: &'a Path,
    },
}

/// The blob store.
#[derive(Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    limits: BlobLimits,
    /// Where uploads in progress grow, one file per tenant and recording.
    staging: PathBuf,
    /// One lock per tenant: a quota check and the write it allows are one step.
    tenants: Arc<Mutex<HashMap<TenantId, Arc<tokio::sync::Mutex<()>>>>>,
    /// Streams reading back a resumed upload's staged bytes at once,
    /// server-wide (each reads up to the size limit from the disk).
    rehashing: Arc<tokio::sync::Semaphore>,
    /// The directory a local filesystem store writes under: `object_store`'s
    /// local backend does not sync what it writes, so a stored blob is synced
    /// here before the phone is told it may forget its copy.
    local_root: Option<PathBuf>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("store", &self.store.to_string())
            .field("limits", &self.limits)
            .finish()
    }
}

fn io(e: std::io::Error) -> BlobError {
    BlobError::Store(object_store::Error::Generic {
        store: "staging",
        source: Box::new(e),
    })
}

/// A staged file gone (thrown away while its stream ran) is nothing staged:
/// the device offers again.
fn staged_io(e: std::io::Error) -> BlobError {
    if e.kind() == std::io::ErrorKind::NotFound {
        BlobError::NothingStaged
    } else {
        io(e)
    }
}

fn joined(e: tokio::task::JoinError) -> BlobError {
    io(std::io::Error::other(e))
}

/// How often (in bytes appended) an upload in progress is synced in the
/// background.
const BACKGROUND_SYNC_BYTES: u64 = 4 * 1024 * 1024;

/// Resumed uploads whose staged bytes are read back and hashed at once.
const REHASHING_AT_ONCE: usize = 2;

/// Most uploads in progress for one tenant.
pub const MAX_STAGED_PER_TENANT: usize = 64;

fn path(tenant: &TenantId, hash: &BlobHash) -> StorePath {
    StorePath::from(format!(
        "tenants/{}/recordings/{}",
        tenant.as_str(),
        hash.hex()
    ))
}

fn prefix(tenant: &TenantId) -> StorePath {
    StorePath::from(format!("tenants/{}/recordings", tenant.as_str()))
}

impl BlobStore {
    /// A store on the local filesystem under `dir/blobs` (created if
    /// missing), staging uploads under `dir/staging`.
    pub fn local(dir: &Path, limits: BlobLimits) -> Result<Self, BlobError> {
        let blobs = dir.join("blobs");
        std::fs::create_dir_all(&blobs).map_err(io)?;
        let store = LocalFileSystem::new_with_prefix(&blobs)?;
        let mut local = Self::new(Arc::new(store), &dir.join("staging"), limits);
        local.local_root = Some(blobs);
        Ok(local)
    }

    /// A store over any `object_store` backend, staging uploads in `staging`
    /// (a local directory of the server's).
    pub fn new(store: Arc<dyn ObjectStore>, staging: &Path, limits: BlobLimits) -> Self {
        Self {
            store,
            limits,
            staging: staging.to_owned(),
            tenants: Arc::default(),
            rehashing: Arc::new(tokio::sync::Semaphore::new(REHASHING_AT_ONCE)),
            local_root: None,
        }
    }

    /// The limits every recording is held to.
    pub fn limits(&self) -> BlobLimits {
        self.limits
    }

    fn tenant_lock(&self, tenant: &TenantId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(tenant.clone()).or_default().clone()
    }

    /// Bytes of recordings `tenant` stores now.
    pub async fn usage(&self, tenant: &TenantId) -> Result<u64, BlobError> {
        let prefix = prefix(tenant);
        let sizes: Vec<u64> = self
            .store
            .list(Some(&prefix))
            .map_ok(|meta| meta.size)
            .try_collect()
            .await?;
        Ok(sizes.iter().sum())
    }

    /// Stores a recording the device says hashes to `claimed`, after checking
    /// the hash, that it is a WAV within the limits, and the tenant's quota.
    /// A blob stored already is not written again.
    pub async fn put(
        &self,
        tenant: &TenantId,
        claimed: BlobHash,
        bytes: Bytes,
    ) -> Result<StoredBlob, BlobError> {
        let size = bytes.len() as u64;
        self.within_size(size)?;
        // Hashing and parsing run before the tenant's lock: only the quota
        // check and the write are serialized.
        if BlobHash::of(&bytes) != claimed {
            return Err(BlobError::HashMismatch);
        }
        let duration_ms = self.within_duration(wav_duration_ms(&bytes)?)?;
        self.admit(tenant, claimed, size, duration_ms, Admit::Put(bytes))
            .await
    }

    fn within_size(&self, size: u64) -> Result<(), BlobError> {
        if size > self.limits.max_bytes {
            return Err(BlobError::TooLarge {
                bytes: size,
                max: self.limits.max_bytes,
            });
        }
        Ok(())
    }

    fn within_duration(&self, duration_ms: u64) -> Result<u64, BlobError> {
        if duration_ms > self.limits.max_duration_ms {
            return Err(BlobError::TooLong {
                duration_ms,
                max: self.limits.max_duration_ms,
            });
        }
        Ok(duration_ms)
    }

    /// Stores a blob checked already (its hash, a WAV within the limits):
    /// under the tenant's lock the quota is checked, then the blob stored as
    /// `how` says, unless it is stored already.
    async fn admit(
        &self,
        tenant: &TenantId,
        claimed: BlobHash,
        size: u64,
        duration_ms: u64,
        how: Admit<'_>,
    ) -> Result<StoredBlob, BlobError> {
        let lock = self.tenant_lock(tenant);
        let _turn = lock.lock().await;
        let location = path(tenant, &claimed);
        let replaced = match self.store.head(&location).await {
            Ok(meta) if meta.size == size => {
                // Stored already, and confirmed on the disk again before
                // anyone hears so (an earlier sync may have failed).
                self.sync_stored(&location, true).await?;
                return Ok(StoredBlob {
                    hash: claimed,
                    bytes: size,
                    duration_ms,
                    written: false,
                });
            }
            // One of another size was cut short (a crash before its sync):
            // the checked bytes replace it, and it does not count twice.
            Ok(meta) => meta.size,
            Err(object_store::Error::NotFound { .. }) => 0,
            Err(e) => return Err(e.into()),
        };
        let needed = self.usage(tenant).await?.saturating_sub(replaced) + size;
        if needed > self.limits.tenant_quota_bytes {
            return Err(BlobError::QuotaFull {
                needed,
                quota: self.limits.tenant_quota_bytes,
            });
        }
        // The tenant's first recording creates its directories: their names
        // are synced too, up to the store's root.
        let fresh_dirs = match self.local_root.as_ref() {
            Some(root) => match root.join(location.as_ref()).parent() {
                Some(dir) => !tokio::fs::try_exists(dir).await.map_err(io)?,
                None => false,
            },
            None => false,
        };
        match how {
            Admit::Put(bytes) => {
                self.store.put(&location, PutPayload::from(bytes)).await?;
            }
            Admit::Rename { from, to } => {
                if let Some(dir) = to.parent() {
                    tokio::fs::create_dir_all(dir).await.map_err(io)?;
                }
                tokio::fs::rename(from, to).await.map_err(staged_io)?;
            }
        }
        if let Err(e) = self.sync_stored(&location, fresh_dirs).await {
            // Not confirmed on the disk, so not left under its name: the next
            // upload writes it again. Removing it is best effort; if that
            // fails too, the next upload's "stored already" syncs it first.
            let _ = self.store.delete(&location).await;
            return Err(e);
        }
        Ok(StoredBlob {
            hash: claimed,
            bytes: size,
            duration_ms,
            written: true,
        })
    }

    /// Puts a stored blob on the local disk (`object_store`'s local backend
    /// does not sync): the file and the directory holding its name, and with
    /// `up_to_root` every directory up to the store's root. Nothing to do on
    /// another backend.
    async fn sync_stored(&self, location: &StorePath, up_to_root: bool) -> Result<(), BlobError> {
        let Some(root) = self.local_root.clone() else {
            return Ok(());
        };
        let file = root.join(location.as_ref());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::File::open(&file)?.sync_all()?;
            let mut dir = file.parent();
            while let Some(d) = dir {
                std::fs::File::open(d)?.sync_all()?;
                if !up_to_root || d == root {
                    break;
                }
                dir = d.parent();
            }
            Ok(())
        })
        .await
        .map_err(joined)?
        .map_err(io)
    }

    /// The blob's size.
    pub async fn size(&self, tenant: &TenantId, hash: &BlobHash) -> Result<u64, BlobError> {
        match self.store.head(&path(tenant, hash)).await {
            Ok(meta) => Ok(meta.size),
            Err(object_store::Error::NotFound { .. }) => Err(BlobError::NotFound),
            Err(e) => Err(e.into()),
        }
    }

    /// Bytes `range` of a blob (for a player's range requests and resumed
    /// downloads).
    pub async fn read(
        &self,
        tenant: &TenantId,
        hash: &BlobHash,
        range: Range<u64>,
    ) -> Result<Bytes, BlobError> {
        match self.store.get_range(&path(tenant, hash), range).await {
            Ok(bytes) => Ok(bytes),
            Err(object_store::Error::NotFound { .. }) => Err(BlobError::NotFound),
            Err(e) => Err(e.into()),
        }
    }

    fn staged_path(&self, tenant: &TenantId, hash: &BlobHash) -> PathBuf {
        self.staging
            .join(tenant.as_str())
            .join(format!("{}.part", hash.hex()))
    }

    /// Opens the upload of a recording of `total` bytes named `hash`, for one
    /// stream to append to. It resumes at what is staged (0 for none), whether
    /// or not the recording is stored already: a device proves it holds a
    /// recording by sending its bytes, never by naming its hash. What is staged
    /// is hashed here, once, so the end needs no second read.
    pub async fn stage(
        &self,
        tenant: &TenantId,
        hash: &BlobHash,
        total: u64,
    ) -> Result<StagedUpload, BlobError> {
        self.within_size(total)?;
        let path = self.staged_path(tenant, hash);
        // A fresh offer waits for nobody: only reading back a resumed upload
        // takes a turn.
        let resumed = if !tokio::fs::try_exists(&path).await.map_err(io)? {
            None
        } else {
            let Ok(_turn) = self.rehashing.acquire().await else {
                return Err(io(std::io::Error::other("the blob store is closing")));
            };
            let path = path.clone();
            tokio::task::spawn_blocking(move || resume_staged(&path))
                .await
                .map_err(joined)??
        };
        let (held, writer) = match resumed {
            Some((held, writer)) => (held, Some(writer)),
            None => (0, None),
        };
        Ok(StagedUpload {
            hash: *hash,
            total,
            path,
            dir: self.staging.join(tenant.as_str()),
            tenant_lock: self.tenant_lock(tenant),
            held,
            writer,
            failed: false,
            background_sync: None,
        })
    }

    /// Removes uploads in progress untouched for `idle` (a recording deleted
    /// mid-upload, a phone that never came back): they would otherwise hold
    /// disk and a tenant's places for good. Returns how many went.
    pub async fn prune_staged(&self, idle: std::time::Duration) -> Result<usize, BlobError> {
        let staging = self.staging.clone();
        tokio::task::spawn_blocking(move || -> Result<usize, BlobError> {
            let Ok(tenants) = std::fs::read_dir(&staging) else {
                return Ok(0);
            };
            let mut removed = 0;
            for tenant in tenants.filter_map(Result::ok) {
                let Ok(files) = std::fs::read_dir(tenant.path()) else {
                    continue;
                };
                for file in files.filter_map(Result::ok) {
                    let stale = file
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|at| at.elapsed().ok())
                        .is_some_and(|age| age > idle);
                    if stale && std::fs::remove_file(file.path()).is_ok() {
                        removed += 1;
                    }
                }
            }
            Ok(removed)
        })
        .await
        .map_err(joined)?
    }

    /// Ends an upload whose staged bytes are complete: verified (the SHA-256
    /// taken as the chunks arrived, a WAV within the limits) and stored like
    /// [`BlobStore::put`], then the staged file removed. A hash that does not
    /// match throws the staged bytes away, so the upload starts again from 0.
    pub async fn complete(
        &self,
        tenant: &TenantId,
        mut staged: StagedUpload,
    ) -> Result<StoredBlob, BlobError> {
        let Some(Writer { file, digest }) = staged.writer.take() else {
            return Err(BlobError::NothingStaged);
        };
        // The file holds exactly the bytes hashed, and they are on the disk
        // before the file takes the recording's name.
        let held = staged.held;
        let whole = tokio::task::spawn_blocking(move || -> Result<bool, BlobError> {
            if file.metadata().map_err(io)?.len() != held {
                return Ok(false);
            }
            file.sync_data().map_err(io)?;
            Ok(true)
        })
        .await
        .map_err(joined)??;
        let outcome = if whole {
            self.store_staged(tenant, &staged, BlobHash::of_digest(&digest.finish()))
                .await
        } else {
            Err(BlobError::HashMismatch)
        };
        match &outcome {
            // A full quota may pass: the staged bytes wait for the next try.
            Err(BlobError::QuotaFull { .. } | BlobError::Store(_)) => {}
            _ => match tokio::fs::remove_file(&staged.path).await {
                // Renamed into the store already.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                other => other.map_err(io)?,
            },
        }
        outcome
    }

    async fn store_staged(
        &self,
        tenant: &TenantId,
        staged: &StagedUpload,
        digest: BlobHash,
    ) -> Result<StoredBlob, BlobError> {
        let size = staged.held;
        self.within_size(size)?;
        if digest != staged.hash {
            return Err(BlobError::HashMismatch);
        }
        let Some(root) = &self.local_root else {
            // Another backend is sent the bytes: read, and checked again as
            // any blob put whole is.
            let bytes = tokio::fs::read(&staged.path).await.map_err(staged_io)?;
            return self.put(tenant, staged.hash, Bytes::from(bytes)).await;
        };
        // Only the header is read: the hash covered every byte.
        let header = staged.path.clone();
        let duration_ms = tokio::task::spawn_blocking(move || -> Result<u64, BlobError> {
            let file = std::fs::File::open(&header).map_err(staged_io)?;
            wav_duration_of(std::io::BufReader::new(file), size)
        })
        .await
        .map_err(joined)??;
        let duration_ms = self.within_duration(duration_ms)?;
        // On the local filesystem the checked file takes its place by a
        // rename: the bytes are not written a second time.
        let target = root.join(path(tenant, &staged.hash).as_ref());
        self.admit(
            tenant,
            staged.hash,
            size,
            duration_ms,
            Admit::Rename {
                from: &staged.path,
                to: &target,
            },
        )
        .await
    }

    /// Throws away an upload in progress (its recording was deleted, or will
    /// never be accepted); none in progress is not an error.
    pub async fn discard_staged(
        &self,
        tenant: &TenantId,
        hash: &BlobHash,
    ) -> Result<(), BlobError> {
        let lock = self.tenant_lock(tenant);
        let _turn = lock.lock().await;
        match tokio::fs::remove_file(self.staged_path(tenant, hash)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(e)),
        }
    }

    /// Deletes a blob: its bytes are gone from the store, not hidden.
    pub async fn delete(&self, tenant: &TenantId, hash: &BlobHash) -> Result<(), BlobError> {
        let lock = self.tenant_lock(tenant);
        let _turn = lock.lock().await;
        let location = path(tenant, hash);
        match self.store.head(&location).await {
            Ok(_) => Ok(self.store.delete(&location).await?),
            Err(object_store::Error::NotFound { .. }) => Err(BlobError::NotFound),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(samples: usize, rate: u32) -> Bytes {
        let mut out = Cursor::new(Vec::new());
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut writer = hound::WavWriter::new(&mut out, spec).unwrap();
        for i in 0..samples {
            writer.write_sample((i % 1_000) as i16).unwrap();
        }
        writer.finalize().unwrap();
        Bytes::from(out.into_inner())
    }

    fn acme() -> TenantId {
        TenantId::new("acme").unwrap()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Every file under `dir`, as the filesystem holds them.
    fn files(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let p = entry.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p);
                }
            }
        }
        out
    }

    /// How many bytes of the recording `hash` are held: all of it if stored,
    /// else what its upload in progress has reached (0 for none).
    async fn held_by(store: &BlobStore, tenant: &TenantId, hash: &BlobHash) -> u64 {
        if let Ok(size) = store.size(tenant, hash).await {
            return size;
        }
        std::fs::metadata(store.staged_path(tenant, hash)).map_or(0, |meta| meta.len())
    }

    /// A local store in a fresh directory, and one recording of `samples` at
    /// 8 kHz: its bytes, name and size.
    struct Fixture {
        dir: tempfile::TempDir,
        store: BlobStore,
        bytes: Bytes,
        hash: BlobHash,
        total: u64,
    }

    impl Fixture {
        fn new(samples: usize) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store = BlobStore::local(dir.path(), BlobLimits::default()).unwrap();
            let bytes = wav(samples, 8_000);
            Self {
                dir,
                store,
                hash: BlobHash::of(&bytes),
                total: bytes.len() as u64,
                bytes,
            }
        }
    }

    fn assert_nothing_kept(dir: &Path) {
        assert!(files(dir).is_empty(), "nothing stored, nothing staged");
    }

    /// The upload ends refused by its hash, and neither stored nor staged.
    async fn assert_refused_for_its_hash(store: &BlobStore, upload: StagedUpload, dir: &Path) {
        let err = store.complete(&acme(), upload).await.unwrap_err();
        assert_eq!(err.code(), "recording-hash-mismatch");
        assert_nothing_kept(dir);
    }

    #[test]
    fn a_recording_is_stored_once_read_by_range_and_really_deleted() {
        runtime().block_on(async {
            let Fixture {
                dir,
                store,
                bytes,
                hash,
                ..
            } = Fixture::new(16_000);
            assert_eq!(BlobHash::from_hex(&hash.hex()), Some(hash));
            assert_eq!(BlobHash::from_hex(&hash.hex().to_uppercase()), None);
            assert_eq!(BlobHash::from_hex("00"), None);
            let first = store.put(&acme(), hash, bytes.clone()).await.unwrap();
            assert!(first.written);
            assert_eq!(first.duration_ms, 2_000);
            let again = store.put(&acme(), hash, bytes.clone()).await.unwrap();
            assert!(!again.written, "uploading twice stores once");
            assert_eq!(store.usage(&acme()).await.unwrap(), bytes.len() as u64);
            assert_eq!(files(dir.path()).len(), 1);

            let middle = store.read(&acme(), &hash, 100..200).await.unwrap();
            assert_eq!(&middle[..], &bytes[100..200]);
            let other = TenantId::new("globex").unwrap();
            assert!(matches!(
                store.read(&other, &hash, 0..10).await,
                Err(BlobError::NotFound)
            ));

            store.delete(&acme(), &hash).await.unwrap();
            assert!(
                files(dir.path()).is_empty(),
                "the bytes are gone from the disk"
            );
            assert!(matches!(
                store.size(&acme(), &hash).await,
                Err(BlobError::NotFound)
            ));
            assert!(matches!(
                store.delete(&acme(), &hash).await,
                Err(BlobError::NotFound)
            ));
        });
    }

    #[test]
    fn what_is_not_a_whole_recording_within_the_limits_is_refused_and_nothing_is_stored() {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let limits = BlobLimits {
                max_bytes: 100_000,
                max_duration_ms: 3_000,
                tenant_quota_bytes: 40_000,
            };
            let store = BlobStore::local(dir.path(), limits).unwrap();
            let good = wav(8_000, 8_000);
            let cut = good.slice(..good.len() - 100);
            let text = Bytes::from_static(b"not a wav at all");
            let cases: Vec<(Bytes, BlobHash, &str)> = vec![
                (good.clone(), BlobHash([0; 32]), "recording-hash-mismatch"),
                (text.clone(), BlobHash::of(&text), "recording-not-wav"),
                (cut.clone(), BlobHash::of(&cut), "recording-not-wav"),
                (
                    wav(32_000, 8_000),
                    BlobHash::of(&wav(32_000, 8_000)),
                    "recording-too-long",
                ),
                (
                    wav(60_000, 16_000),
                    BlobHash::of(&wav(60_000, 16_000)),
                    "recording-too-large",
                ),
            ];
            for (bytes, hash, code) in cases {
                let err = store.put(&acme(), hash, bytes).await.unwrap_err();
                assert_eq!(err.code(), code, "{err}");
                assert!(!err.message_ja().is_empty());
            }
            assert!(files(dir.path()).is_empty());

            // The quota: the first fits, the second would not.
            store
                .put(&acme(), BlobHash::of(&good), good.clone())
                .await
                .unwrap();
            let second = wav(16_000, 16_000);
            let err = store
                .put(&acme(), BlobHash::of(&second), second)
                .await
                .unwrap_err();
            assert_eq!(err.code(), "recording-quota-full");
            assert_eq!(err.message_ja(), "録音の保存容量の上限に達しています");
            assert_eq!(files(dir.path()).len(), 1);
            // Another tenant has a quota of its own.
            let globex = TenantId::new("globex").unwrap();
            let theirs = wav(16_000, 16_000);
            store
                .put(&globex, BlobHash::of(&theirs), theirs)
                .await
                .unwrap();
        });
    }

    #[test]
    fn two_uploads_racing_for_the_last_of_a_quota_cannot_both_pass() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let one = wav(8_000, 8_000);
            let limits = BlobLimits {
                tenant_quota_bytes: one.len() as u64 * 3 / 2,
                ..BlobLimits::default()
            };
            let store = BlobStore::local(dir.path(), limits).unwrap();
            let uploads: Vec<_> = (0..8)
                .map(|i| {
                    let store = store.clone();
                    // Eight different recordings of the same size.
                    let mut bytes = one.to_vec();
                    let last = bytes.len() - 1;
                    bytes[last] = i;
                    let bytes = Bytes::from(bytes);
                    tokio::spawn(
                        async move { store.put(&acme(), BlobHash::of(&bytes), bytes).await },
                    )
                })
                .collect();
            let mut stored = 0;
            for upload in uploads {
                if upload.await.unwrap().is_ok() {
                    stored += 1;
                }
            }
            assert_eq!(stored, 1, "only one fits the quota");
            assert_eq!(files(dir.path()).len(), 1);
        });
    }
    #[test]
    fn an_upload_grows_in_order_resumes_where_it_reached_and_is_verified_at_the_end() {
        runtime().block_on(async {
            let Fixture {
                dir,
                store,
                bytes,
                hash,
                total,
            } = Fixture::new(40_000);
            let chunk = 16_384u64;
            let piece =
                |offset: u64| bytes.slice(offset as usize..(offset + chunk).min(total) as usize);
            let mut upload = store.stage(&acme(), &hash, total).await.unwrap();
            assert_eq!(upload.held(), 0);
            assert!(
                files(dir.path()).is_empty(),
                "an offer alone stages nothing"
            );
            // Half of it, then the connection is cut.
            let mut offset = 0;
            while offset < total / 2 {
                offset = upload.append(offset, piece(offset)).await.unwrap();
            }
            drop(upload);
            // Offered again: the server says where it reached, and what it
            // holds is hashed from the file.
            let mut upload = store.stage(&acme(), &hash, total).await.unwrap();
            let held = upload.held();
            assert_eq!(held, offset);
            assert_eq!(held_by(&store, &acme(), &hash).await, held);
            // A chunk that does not follow changes nothing.
            let err = upload.append(0, piece(0)).await.unwrap_err();
            assert_eq!(err.code(), "upload-offset-mismatch");
            assert_eq!(held_by(&store, &acme(), &hash).await, held);
            // Past the announced size: refused, and nothing changes.
            let mut smaller = store.stage(&acme(), &hash, held + 10).await.unwrap();
            let err = smaller.append(held, piece(held)).await.unwrap_err();
            assert_eq!(err.code(), "recording-too-large");
            assert_eq!(held_by(&store, &acme(), &hash).await, held);
            // Past the size limit: refused at the offer.
            let err = store
                .stage(&acme(), &hash, BlobLimits::default().max_bytes + 1)
                .await
                .unwrap_err();
            assert_eq!(err.code(), "recording-too-large");
            let mut offset = held;
            while offset < total {
                offset = upload.append(offset, piece(offset)).await.unwrap();
            }
            let stored = store.complete(&acme(), upload).await.unwrap();
            assert!(stored.written);
            assert_eq!(stored.duration_ms, 5_000);
            assert_eq!(store.read(&acme(), &hash, 0..total).await.unwrap(), bytes);
            assert_eq!(
                files(&dir.path().join("staging")).len(),
                0,
                "the staged file is gone"
            );
            assert_eq!(held_by(&store, &acme(), &hash).await, total);
        });
    }

    #[test]
    fn a_corrupted_upload_is_refused_at_the_end_and_starts_again_from_zero() {
        runtime().block_on(async {
            let Fixture {
                dir,
                store,
                bytes,
                hash,
                ..
            } = Fixture::new(8_000);
            let mut corrupted = bytes.to_vec();
            corrupted[1_000] ^= 0xff;
            let total = bytes.len() as u64;
            let mut upload = store.stage(&acme(), &hash, total).await.unwrap();
            upload.append(0, Bytes::from(corrupted)).await.unwrap();
            let err = store.complete(&acme(), upload).await.unwrap_err();
            assert_eq!(err.code(), "recording-hash-mismatch");
            assert_eq!(held_by(&store, &acme(), &hash).await, 0);
            assert_nothing_kept(dir.path());
            // Nothing staged is not "no such recording": the device offers
            // again (a retryable code).
            let upload = store.stage(&acme(), &hash, total).await.unwrap();
            let nothing = store.complete(&acme(), upload).await.unwrap_err();
            assert!(matches!(nothing, BlobError::NothingStaged));
            assert!(!nothing.recording_code().is_final());
        });
    }

    #[test]
    fn bytes_mangled_on_the_disk_between_two_streams_fail_the_hash_and_are_never_stored() {
        runtime().block_on(async {
            let Fixture {
                dir,
                store,
                bytes,
                hash,
                total,
            } = Fixture::new(8_000);
            let half = total / 2;
            let mut upload = store.stage(&acme(), &hash, total).await.unwrap();
            upload
                .append(0, bytes.slice(..half as usize))
                .await
                .unwrap();
            drop(upload);
            // A crash mangles a staged byte.
            let staged = files(&dir.path().join("staging")).remove(0);
            let mut on_disk = std::fs::read(&staged).unwrap();
            on_disk[100] ^= 0xff;
            std::fs::write(&staged, on_disk).unwrap();
            let mut upload = store.stage(&acme(), &hash, total).await.unwrap();
            assert_eq!(upload.held(), half);
            upload
                .append(half, bytes.slice(half as usize..))
                .await
                .unwrap();
            assert_refused_for_its_hash(&store, upload, dir.path()).await;
        });
    }

    #[test]
    fn an_upload_thrown_away_while_its_stream_runs_is_not_stored() {
        runtime().block_on(async {
            let Fixture {
                dir,
                store,
                bytes,
                hash,
                ..
            } = Fixture::new(8_000);
            let mut upload = store
                .stage(&acme(), &hash, bytes.len() as u64)
                .await
                .unwrap();
            upload.append(0, bytes.clone()).await.unwrap();
            // The recording is deleted before the stream ends.
            store.discard_staged(&acme(), &hash).await.unwrap();
            let err = store.complete(&acme(), upload).await.unwrap_err();
            assert!(matches!(err, BlobError::NothingStaged), "{err:?}");
            assert_nothing_kept(dir.path());
        });
    }

    #[test]
    fn a_write_an_earlier_stream_left_running_puts_only_the_recording_s_own_bytes_in_place() {
        runtime().block_on(async {
            let Fixture {
                dir: _dir,
                store,
                bytes,
                hash,
                total,
            } = Fixture::new(40_000);
            let (chunk, half) = (16_384usize, 32_768usize);
            let mut earlier = store.stage(&acme(), &hash, total).await.unwrap();
            earlier.append(0, bytes.slice(..half)).await.unwrap();
            // The phone offers again while the earlier stream's last write
            // has not landed yet: the new stream resumes at half.
            let mut later = store.stage(&acme(), &hash, total).await.unwrap();
            assert_eq!(later.held(), half as u64);
            // The earlier write lands now, over what the new stream sends.
            earlier
                .append(half as u64, bytes.slice(half..half + chunk))
                .await
                .unwrap();
            let mut offset = later.held();
            while offset < total {
                let end = (offset + chunk as u64).min(total) as usize;
                offset = later
                    .append(offset, bytes.slice(offset as usize..end))
                    .await
                    .unwrap();
            }
            let stored = store.complete(&acme(), later).await.unwrap();
            assert!(stored.written);
            assert_eq!(store.read(&acme(), &hash, 0..total).await.unwrap(), bytes);
        });
    }

    #[test]
    fn a_staged_file_that_does_not_hold_exactly_the_bytes_hashed_is_refused_at_the_end() {
        runtime().block_on(async {
            let Fixture {
                dir,
                store,
                bytes,
                hash,
                total,
            } = Fixture::new(8_000);
            let mut upload = store.stage(&acme(), &hash, total).await.unwrap();
            upload.append(0, bytes.clone()).await.unwrap();
            let staged = files(&dir.path().join("staging")).remove(0);
            std::fs::OpenOptions::new()
                .write(true)
                .open(&staged)
                .unwrap()
                .set_len(total - 1)
                .unwrap();
            assert_refused_for_its_hash(&store, upload, dir.path()).await;
        });
    }

    #[test]
    fn a_stored_recording_a_crash_cut_short_is_replaced_by_the_next_upload_of_it() {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let bytes = wav(8_000, 8_000);
            let hash = BlobHash::of(&bytes);
            let total = bytes.len() as u64;
            // A quota this one recording fills: the cut-short copy it
            // replaces does not count against it.
            let limits = BlobLimits {
                tenant_quota_bytes: total + 10,
                ..BlobLimits::default()
            };
            let store = BlobStore::local(dir.path(), limits).unwrap();
            assert!(
                store
                    .put(&acme(), hash, bytes.clone())
                    .await
                    .unwrap()
                    .written
            );
            let stored = files(&dir.path().join("blobs")).remove(0);
            std::fs::OpenOptions::new()
                .write(true)
                .open(&stored)
                .unwrap()
                .set_len(total / 2)
                .unwrap();
            // Whole again, through the staging area: written, not "stored already".
            let mut upload = store.stage(&acme(), &hash, total).await.unwrap();
            upload.append(0, bytes.clone()).await.unwrap();
            assert!(store.complete(&acme(), upload).await.unwrap().written);
            assert_eq!(store.read(&acme(), &hash, 0..total).await.unwrap(), bytes);
            // And one of the right size is stored once.
            assert!(
                !store
                    .put(&acme(), hash, bytes.clone())
                    .await
                    .unwrap()
                    .written
            );
        });
    }
}
