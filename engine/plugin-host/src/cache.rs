//! Compiled plugins on disk, so a restart loads in well under a millisecond
//! instead of compiling again.
//!
//! Owns: the cache directory's layout (`<component hash>.cwasm`: wasmtime's
//! serialized component followed by the SHA-256 of those bytes) and the one
//! `unsafe` call of the crate.
//!
//! Why the trailer: wasmtime runs serialized code as it finds it, so
//! [`wasmtime::component::Component::deserialize`] is `unsafe` — bytes that are
//! not what `serialize` wrote can do anything. The directory is the host's own,
//! but a torn write or a flipped bit must not become a crash: a file whose digest
//! does not match is ignored and recompiled. wasmtime itself refuses artifacts
//! from another version or configuration; those are recompiled too.

use std::path::{Path, PathBuf};

use callsync_core::plugin::ContentHash;
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::package::content_hash;

/// A directory of compiled plugins.
#[derive(Debug, Clone)]
pub(crate) struct DiskCache {
    dir: PathBuf,
}

impl DiskCache {
    pub(crate) fn new(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, hash: &ContentHash) -> PathBuf {
        self.dir.join(format!("{hash}.cwasm"))
    }

    /// The compiled component for `hash`, if a sound one is on disk.
    pub(crate) fn load(&self, engine: &Engine, hash: &ContentHash) -> Option<Component> {
        let path = self.path(hash);
        let bytes = std::fs::read(&path).ok()?;
        let (artifact, digest) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
        if content_hash(artifact).as_bytes() != digest {
            tracing::warn!(path = %path.display(), "compiled plugin fails its digest; recompiling");
            return None;
        }
        // SAFETY: `artifact` is exactly what `Component::serialize` wrote for this
        // engine configuration (the digest written after it matches), in a
        // directory only this host writes; wasmtime checks version and
        // configuration compatibility itself and errors on a mismatch.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(engine, artifact) };
        match component {
            Ok(component) => Some(component),
            Err(err) => {
                tracing::info!(path = %path.display(), error = %err, "compiled plugin is stale; recompiling");
                None
            }
        }
    }

    /// Saves a compiled component; best effort (a failure only costs a compile on
    /// the next start). Written to a temporary file and renamed, so a reader never
    /// sees half a file.
    pub(crate) fn store(&self, hash: &ContentHash, component: &Component) {
        let result = component
            .serialize()
            .map_err(|err| std::io::Error::other(err.to_string()))
            .and_then(|mut artifact| {
                let digest = content_hash(&artifact);
                artifact.extend_from_slice(digest.as_bytes());
                let path = self.path(hash);
                let temporary = path.with_extension(format!("tmp{}", std::process::id()));
                std::fs::write(&temporary, &artifact)?;
                std::fs::rename(&temporary, &path)
            });
        if let Err(err) = result {
            tracing::warn!(error = %err, "could not cache a compiled plugin");
        }
    }
}
