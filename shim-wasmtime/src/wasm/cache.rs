//! The on-disk cache of compiled code: core modules and components.
//!
//! Compiling is the slow part of a first start, so the native code Cranelift
//! produces is kept on disk and shared by every shim on the machine.
//!
//! - **Key**: the module's sha256 together with the engine's compatibility
//!   hash, fed through sha256 (never `DefaultHasher`, whose output may change
//!   between builds). A new Wasmtime or new engine settings miss the cache.
//! - **Trust**: `Module::deserialize` runs native code, so only files this
//!   shim wrote are ever loaded: the folder must be owned by the shim's user
//!   and writable by nobody else, or the cache is not used at all. Nothing
//!   from an image is ever deserialized.
//! - **Writes** go to a temporary file that is renamed into place, so
//!   concurrent shims never see a half-written entry.
//! - **Size** is bounded: after a write, the least recently used entries
//!   (by modification time, refreshed on each hit) are removed until the
//!   folder fits.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, Module};

use super::engine::Digest32;

/// The default bound on the cache's size.
pub const DEFAULT_MAX_BYTES: u64 = 1024 * 1024 * 1024;

/// A `Hasher` that feeds sha256, so that hashes are stable across processes.
struct StableHasher(Sha256);

impl Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let d = self.0.clone().finalize();
        u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    }
}

/// Compiled code the cache holds: a core module or a component.
pub trait Artifact: Sized {
    /// Compiles wasm bytes (CPU-heavy).
    fn compile(engine: &Engine, bytes: &[u8]) -> Result<Self>;
    fn serialize(&self) -> Result<Vec<u8>>;
    /// # Safety
    /// `path` must hold bytes `serialize` wrote, from a compatible engine:
    /// loading them runs them as native code.
    unsafe fn deserialize_file(engine: &Engine, path: &Path) -> Result<Self>;
}

impl Artifact for Module {
    fn compile(engine: &Engine, bytes: &[u8]) -> Result<Self> {
        Module::from_binary(engine, bytes)
            .map_err(anyhow::Error::from)
            .context("the module is not valid WebAssembly")
    }

    fn serialize(&self) -> Result<Vec<u8>> {
        Module::serialize(self).map_err(anyhow::Error::from)
    }

    unsafe fn deserialize_file(engine: &Engine, path: &Path) -> Result<Self> {
        // SAFETY: passed on to the caller.
        unsafe { Module::deserialize_file(engine, path) }.map_err(anyhow::Error::from)
    }
}

impl Artifact for Component {
    fn compile(engine: &Engine, bytes: &[u8]) -> Result<Self> {
        Component::from_binary(engine, bytes)
            .map_err(anyhow::Error::from)
            .context("the component is not valid")
    }

    fn serialize(&self) -> Result<Vec<u8>> {
        Component::serialize(self).map_err(anyhow::Error::from)
    }

    unsafe fn deserialize_file(engine: &Engine, path: &Path) -> Result<Self> {
        // SAFETY: passed on to the caller.
        unsafe { Component::deserialize_file(engine, path) }.map_err(anyhow::Error::from)
    }
}

pub struct DiskCache {
    dir: PathBuf,
    /// sha256 of the engine's compatibility hash.
    engine_key: [u8; 32],
    max_bytes: u64,
}

impl DiskCache {
    /// Opens (creating if needed) the cache folder. Fails when the folder is
    /// not safe to load native code from.
    pub fn open(dir: &Path, engine: &Engine, max_bytes: u64) -> Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("create {}", dir.display()))?;
        let meta = fs::symlink_metadata(dir).with_context(|| format!("stat {}", dir.display()))?;
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if !meta.is_dir() || meta.uid() != euid || meta.permissions().mode() & 0o022 != 0 {
            bail!(
                "{} must be a folder owned by uid {euid} and writable only by it",
                dir.display()
            );
        }
        let mut h = StableHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut h);
        Ok(Self {
            dir: dir.to_path_buf(),
            engine_key: h.0.finalize().into(),
            max_bytes,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Whether there is a file for `module`, whatever it holds.
    pub fn has_file(&self, module: &Digest32) -> bool {
        self.path(module).exists()
    }

    /// Whether there is an entry for `module` that is Wasmtime's code by its
    /// ELF header (not whether it loads). An entry that is not (corrupt, or
    /// cut short) is removed, so the guest is compiled again, in a child.
    pub fn holds(&self, module: &Digest32) -> bool {
        if !self.has_file(module) {
            return false;
        }
        let path = self.path(module);
        match Engine::detect_precompiled_file(&path) {
            Ok(Some(_)) => true,
            other => {
                let err = other.err().map(|e| format!("{e:#}")).unwrap_or_default();
                tracing::warn!(path = %path.display(), err, "dropping an unreadable cache entry");
                let _ = fs::remove_file(&path);
                false
            }
        }
    }

    fn path(&self, module: &Digest32) -> PathBuf {
        let mut h = Sha256::new();
        h.update(module);
        h.update(self.engine_key);
        self.dir
            .join(format!("{}.cwasm", hex::encode(h.finalize())))
    }

    /// Loads code compiled earlier, if there is any.
    pub fn load<A: Artifact>(&self, engine: &Engine, digest: &Digest32) -> Option<A> {
        let path = self.path(digest);
        if !path.exists() {
            return None;
        }
        // SAFETY: the file was written by this shim (see `open` for why no one
        // else can have written it) with `Artifact::serialize` from an engine
        // with the same compatibility hash, which is part of the file name.
        // The digest is that of the wasm bytes, so a module's entry is never
        // read as a component's, and the other way round.
        match unsafe { A::deserialize_file(engine, &path) } {
            Ok(m) => {
                // Refresh the entry's age for eviction.
                if let Ok(f) = fs::File::open(&path) {
                    let _ = f.set_modified(SystemTime::now());
                }
                Some(m)
            }
            Err(err) => {
                tracing::warn!(path = %path.display(), %err, "dropping an unreadable cache entry");
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores compiled code. Errors are logged: the cache is an optimisation.
    pub fn store<A: Artifact>(&self, digest: &Digest32, compiled: &A) {
        if let Err(err) = self.try_store(digest, compiled) {
            tracing::warn!("cannot write the module cache: {err:#}");
        }
    }

    pub fn try_store<A: Artifact>(&self, module: &Digest32, compiled: &A) -> Result<()> {
        let bytes = compiled.serialize()?;
        let final_path = self.path(module);
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            hex::encode(&module[..8])
        ));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("create {}", tmp.display()))?;
        let written = f.write_all(&bytes).and_then(|_| f.sync_data());
        drop(f);
        if let Err(err) = written.and_then(|_| fs::rename(&tmp, &final_path)) {
            let _ = fs::remove_file(&tmp);
            return Err(err).with_context(|| format!("write {}", final_path.display()));
        }
        self.evict()
    }

    /// Removes the oldest entries until the cache fits its bound, and the
    /// temporary files of writers that died (a compiler child killed
    /// mid-write).
    fn evict(&self) -> Result<()> {
        let listing: Vec<fs::DirEntry> = fs::read_dir(&self.dir)?.flatten().collect();
        for e in &listing {
            let name = e.file_name();
            let writer = name
                .to_str()
                .and_then(|n| n.strip_prefix(".tmp-"))
                .and_then(|n| n.split('-').next())
                .and_then(|pid| pid.parse::<i32>().ok());
            if writer.is_some_and(|pid| !process_exists(pid)) {
                let _ = fs::remove_file(e.path());
            }
        }
        let mut entries: Vec<(SystemTime, u64, PathBuf)> = listing
            .iter()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                tracing::info!(path = %path.display(), "evicted from the module cache");
                total = total.saturating_sub(len);
            }
        }
        Ok(())
    }
}

fn process_exists(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let sent = unsafe { libc::kill(pid, 0) };
    sent == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAT: &str = r#"(module (func (export "_start")))"#;

    #[test]
    fn stores_and_loads_and_evicts() {
        let engine = Engine::default();
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("c");
        let module = Module::new(&engine, WAT).unwrap();
        let cache = DiskCache::open(&cache_dir, &engine, u64::MAX).unwrap();
        let key = [7u8; 32];
        assert!(cache.load::<Module>(&engine, &key).is_none());
        cache.store(&key, &module);
        assert!(cache.load::<Module>(&engine, &key).is_some());

        // Components are kept the same way.
        let component = Component::new(&engine, "(component)").unwrap();
        let ckey = [6u8; 32];
        cache.store(&ckey, &component);
        assert!(cache.load::<Component>(&engine, &ckey).is_some());

        // A bound of one byte keeps nothing.
        let tiny = DiskCache::open(&cache_dir, &engine, 1).unwrap();
        tiny.store(&[8u8; 32], &module);
        assert!(tiny.load::<Module>(&engine, &key).is_none());
    }

    #[test]
    fn refuses_a_folder_others_can_write() {
        let engine = Engine::default();
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        assert!(DiskCache::open(dir.path(), &engine, u64::MAX).is_err());
    }

    #[test]
    fn a_corrupt_entry_is_dropped_not_loaded() {
        let engine = Engine::default();
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(&dir.path().join("c"), &engine, u64::MAX).unwrap();
        let key = [9u8; 32];
        fs::write(cache.path(&key), b"\x7fELF garbage").unwrap();
        assert!(cache.load::<Module>(&engine, &key).is_none());
        assert!(!cache.path(&key).exists());
    }

    #[test]
    fn the_key_is_stable_and_depends_on_the_engine() {
        let a = Engine::default();
        let dir = tempfile::tempdir().unwrap();
        let c1 = DiskCache::open(dir.path(), &a, 1).unwrap();
        let c2 = DiskCache::open(dir.path(), &a, 1).unwrap();
        assert_eq!(c1.engine_key, c2.engine_key);
        let mut cfg = wasmtime::Config::new();
        cfg.epoch_interruption(true);
        let b = Engine::new(&cfg).unwrap();
        let c3 = DiskCache::open(dir.path(), &b, 1).unwrap();
        assert_ne!(c1.engine_key, c3.engine_key);
        // Code compiled to keep DWARF for backtraces is cached apart from
        // code compiled without it.
        let key_with = |details| {
            let mut cfg = wasmtime::Config::new();
            cfg.wasm_backtrace_details(details);
            let e = Engine::new(&cfg).unwrap();
            DiskCache::open(dir.path(), &e, 1).unwrap().engine_key
        };
        assert_ne!(
            key_with(wasmtime::WasmBacktraceDetails::Enable),
            key_with(wasmtime::WasmBacktraceDetails::Disable)
        );
    }
}
