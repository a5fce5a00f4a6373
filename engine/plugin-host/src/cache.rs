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
//! from another version or configuration; those are recompiled too. The trailer
//! is an unkeyed digest, so it guards against accidents, not against someone who
//! can write the directory: that is why the directory is created private (0700)
//! and lives in the server's private data directory.
//!
//! Bounded: at most [`MAX_CACHED_FILES`] compiled plugins are kept; storing one
//! more removes the least recently written, so installs that differ by a byte
//! cannot fill the disk.

use std::path::{Path, PathBuf};

use callsync_core::plugin::ContentHash;
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::package::content_hash;

/// Compiled plugins kept on disk at most (the same number the host keeps loaded).
pub const MAX_CACHED_FILES: usize = 64;

/// A directory of compiled plugins.
#[derive(Debug, Clone)]
pub(crate) struct DiskCache {
    dir: PathBuf,
}

impl DiskCache {
    pub(crate) fn new(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
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
        self.prune(MAX_CACHED_FILES);
    }

    /// Keeps the `keep` most recently written compiled plugins and removes the
    /// rest, with any temporary file a crash left behind.
    pub(crate) fn prune(&self, keep: usize) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut compiled = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if extension == "cwasm" {
                let written = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                compiled.push((written, path));
            } else if extension.starts_with("tmp") {
                // Left by a crash; one another process is writing right now is
                // younger than this.
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|at| at.elapsed().ok())
                    .is_some_and(|age| age > std::time::Duration::from_secs(600));
                if old {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        if compiled.len() <= keep {
            return;
        }
        compiled.sort();
        for (_, path) in compiled.iter().take(compiled.len() - keep) {
            if let Err(err) = std::fs::remove_file(path) {
                tracing::warn!(path = %path.display(), error = %err, "could not remove a cached plugin");
            }
        }
    }

    /// How many compiled plugins are on disk.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        std::fs::read_dir(&self.dir).map_or(0, |entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
                .count()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_keeps_the_newest_files_and_removes_leftovers() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let cache = DiskCache::new(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        for i in 0..10u8 {
            let path = dir.path().join(format!("{i:02}.cwasm"));
            std::fs::write(&path, [i]).unwrap_or_else(|e| panic!("{e}"));
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000 + u64::from(i));
            std::fs::File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(at))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::write(dir.path().join("ab.tmp1"), b"torn").unwrap_or_else(|e| panic!("{e}"));
        std::fs::File::options()
            .write(true)
            .open(dir.path().join("ab.tmp1"))
            .and_then(|f| f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1)))
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("cd.tmp2"), b"being written")
            .unwrap_or_else(|e| panic!("{e}"));
        cache.prune(4);
        assert!(
            dir.path().join("cd.tmp2").exists(),
            "a fresh temporary file stays"
        );
        assert_eq!(cache.len(), 4);
        for i in 6..10u8 {
            assert!(dir.path().join(format!("{i:02}.cwasm")).exists(), "{i}");
        }
        assert!(!dir.path().join("ab.tmp1").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path())
                .unwrap_or_else(|e| panic!("{e}"))
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700);
        }
    }
}
