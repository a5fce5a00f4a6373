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
//! pass a quota only one fits; reading a byte range; deleting for real.
//! Refusals are typed, with a stable code and Japanese text.
//! Does not own: the upload protocol, who may read or delete a recording (the
//! server checks the member and 担当者閲覧制限 first), or the recording's
//! reference in the customer document.

use std::collections::HashMap;
use std::io::Cursor;
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use callsync_core::TenantId;
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
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
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
    /// The store failed.
    #[error("blob store: {0}")]
    Store(#[from] object_store::Error),
}

impl BlobError {
    /// A stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::HashMismatch => "recording-hash-mismatch",
            Self::NotWav(_) => "recording-not-wav",
            Self::TooLarge { .. } => "recording-too-large",
            Self::TooLong { .. } => "recording-too-long",
            Self::QuotaFull { .. } => "recording-quota-full",
            Self::NotFound => "recording-not-found",
            Self::Store(_) => "recording-store-failed",
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
            Self::Store(_) => "録音を保存できませんでした".to_owned(),
        }
    }
}

/// The length of a mono 16-bit PCM WAV in milliseconds, or why it is not one.
pub fn wav_duration_ms(bytes: &[u8]) -> Result<u64, BlobError> {
    let reader =
        hound::WavReader::new(Cursor::new(bytes)).map_err(|e| BlobError::NotWav(e.to_string()))?;
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
    if claimed > bytes.len() as u64 {
        return Err(BlobError::NotWav("cut short".to_owned()));
    }
    Ok(u64::from(reader.duration()) * 1_000 / u64::from(spec.sample_rate))
}

/// The blob store.
#[derive(Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    limits: BlobLimits,
    /// One lock per tenant: a quota check and the write it allows are one step.
    tenants: Arc<Mutex<HashMap<TenantId, Arc<tokio::sync::Mutex<()>>>>>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("store", &self.store.to_string())
            .field("limits", &self.limits)
            .finish()
    }
}

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
    /// A store on the local filesystem under `dir` (created if missing).
    pub fn local(dir: &Path, limits: BlobLimits) -> Result<Self, BlobError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            BlobError::Store(object_store::Error::Generic {
                store: "LocalFileSystem",
                source: Box::new(e),
            })
        })?;
        let store = LocalFileSystem::new_with_prefix(dir)?;
        Ok(Self::new(Arc::new(store), limits))
    }

    /// A store over any `object_store` backend.
    pub fn new(store: Arc<dyn ObjectStore>, limits: BlobLimits) -> Self {
        Self {
            store,
            limits,
            tenants: Arc::default(),
        }
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
        if size > self.limits.max_bytes {
            return Err(BlobError::TooLarge {
                bytes: size,
                max: self.limits.max_bytes,
            });
        }
        // Hashing and parsing run before the tenant's lock: only the quota
        // check and the write are serialized.
        if BlobHash::of(&bytes) != claimed {
            return Err(BlobError::HashMismatch);
        }
        let duration_ms = wav_duration_ms(&bytes)?;
        if duration_ms > self.limits.max_duration_ms {
            return Err(BlobError::TooLong {
                duration_ms,
                max: self.limits.max_duration_ms,
            });
        }
        let lock = self.tenant_lock(tenant);
        let _turn = lock.lock().await;
        let location = path(tenant, &claimed);
        match self.store.head(&location).await {
            Ok(_) => {
                return Ok(StoredBlob {
                    hash: claimed,
                    bytes: size,
                    duration_ms,
                    written: false,
                });
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let needed = self.usage(tenant).await? + size;
        if needed > self.limits.tenant_quota_bytes {
            return Err(BlobError::QuotaFull {
                needed,
                quota: self.limits.tenant_quota_bytes,
            });
        }
        self.store.put(&location, PutPayload::from(bytes)).await?;
        Ok(StoredBlob {
            hash: claimed,
            bytes: size,
            duration_ms,
            written: true,
        })
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

    #[test]
    fn a_recording_is_stored_once_read_by_range_and_really_deleted() {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = BlobStore::local(dir.path(), BlobLimits::default()).unwrap();
            let bytes = wav(16_000, 8_000);
            let hash = BlobHash::of(&bytes);
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
}
