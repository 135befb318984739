//! The on-disk cache: one file per key holding a serialized executable behind
//! a header (magic, format version, key, key components, length, checksum).
//!
//! Writes go to a temporary file in the same directory and are renamed into
//! place, so readers see whole entries only and concurrent writers of one key
//! both succeed. A damaged entry is reported and removed, never trusted.
//! Loading an entry runs its code, so the directory must be private: it is
//! created 0700, and one owned by another user or writable by others is refused.

use super::key::{sha256_hex, CacheKey, KeyComponent, CACHE_FORMAT_VERSION};
use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

const MAGIC: &[u8; 8] = b"XLACEXE\0";
const SUFFIX: &str = "xlacexe";
/// The default size cap: 2 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// A valid entry's payload.
    Hit(Vec<u8>),
    /// No entry for the key.
    Miss,
    /// An entry was there but unusable (truncated, corrupted, another format
    /// version, another key); it has been removed. The text says why.
    Invalid(String),
}

/// One entry, as listed.
#[derive(Clone, Debug)]
pub struct EntryInfo {
    pub key: String,
    pub path: PathBuf,
    /// Size of the file in bytes.
    pub size: u64,
    pub last_used: SystemTime,
    pub components: Vec<KeyComponent>,
}

/// A cache directory with a size cap.
#[derive(Clone, Debug)]
pub struct DiskCache {
    dir: PathBuf,
    max_bytes: u64,
}

/// The cache directory to use: `XLAC_CACHE_DIR`, else `$XDG_CACHE_HOME/xlac`, else `~/.cache/xlac`.
pub fn default_dir() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("XLAC_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("xlac")))
        .or_else(|| var("HOME").map(|h| h.join(".cache").join("xlac")))
}

/// The size cap from `XLAC_CACHE_MAX_BYTES`, else [`DEFAULT_MAX_BYTES`].
pub fn default_max_bytes() -> u64 {
    std::env::var("XLAC_CACHE_MAX_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_MAX_BYTES)
}

/// The effective user id of this process (the owner of `/proc/self`).
fn current_uid() -> Option<u32> {
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.into(), source }
}

impl DiskCache {
    /// Opens (creating it 0700 if needed) the cache directory `dir`, refusing
    /// one that another user owns or that others can write.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<DiskCache> {
        if !dir.exists() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io(dir))?;
        }
        let meta = std::fs::metadata(dir).map_err(io(dir))?;
        let refuse = |why: String| {
            Error::Format {
            path: dir.into(),
            message: format!("refusing to use this compilation cache directory: {why}. Loading a cached executable runs its code; use a private directory (chmod 700) or --no-cache"),
        }
        };
        if !meta.is_dir() {
            return Err(refuse("it is not a directory".into()));
        }
        if let Some(uid) = current_uid() {
            if meta.uid() != uid {
                return Err(refuse(format!("it is owned by user id {}, not by this user ({uid})", meta.uid())));
            }
        }
        let mode = meta.permissions().mode();
        if mode & 0o022 != 0 {
            return Err(refuse(format!("others can write to it (mode {:o})", mode & 0o777)));
        }
        Ok(DiskCache { dir: dir.into(), max_bytes })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The size cap in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    fn entry_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.{SUFFIX}"))
    }

    /// Looks `key` up. A hit marks the entry as recently used.
    pub fn get(&self, key: &CacheKey) -> Lookup {
        let path = self.entry_path(&key.hex);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::Miss,
            Err(e) => return Lookup::Invalid(format!("{}: cannot read: {e}", path.display())),
        };
        match parse_entry(&bytes) {
            Ok((entry_key, _, payload)) if entry_key == key.hex => {
                // Best effort: the access time drives eviction.
                let _ =
                    std::fs::File::options().write(true).open(&path).and_then(|f| f.set_modified(SystemTime::now()));
                Lookup::Hit(payload.to_vec())
            }
            Ok((entry_key, _, _)) => {
                let _ = std::fs::remove_file(&path);
                Lookup::Invalid(format!("{}: holds key {entry_key}, not {}; removed", path.display(), key.hex))
            }
            Err(why) => {
                let _ = std::fs::remove_file(&path);
                Lookup::Invalid(format!("{}: {why}; removed", path.display()))
            }
        }
    }

    /// Stores `payload` under `key` atomically, then evicts the least recently
    /// used entries until the cache fits its cap.
    pub fn put(&self, key: &CacheKey, payload: &[u8]) -> Result<()> {
        let components = serde_json::to_vec(
            &key.components
                .iter()
                .map(|c| serde_json::json!({"label": c.label, "digest": c.digest, "shown": c.shown}))
                .collect::<Vec<_>>(),
        )
        .map_err(|e| Error::Tensor(e.to_string()))?;
        let mut bytes = Vec::with_capacity(payload.len() + components.len() + 128);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&CACHE_FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(key.hex.as_bytes());
        bytes.extend_from_slice(&(components.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&components);
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&Sha256::digest(payload));
        bytes.extend_from_slice(payload);
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let tmp = self.dir.join(format!(".tmp-{}-{}-{nanos}", key.hex, std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::options().write(true).create_new(true).open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_data()?;
            std::fs::rename(&tmp, self.entry_path(&key.hex))
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::Io { path: self.entry_path(&key.hex), source: e });
        }
        self.evict()?;
        Ok(())
    }

    /// Every entry, most recently used first. Unreadable entries are skipped.
    pub fn entries(&self) -> Result<Vec<EntryInfo>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir).map_err(io(&self.dir))?.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != SUFFIX) {
                continue;
            }
            let Ok(meta) = e.metadata() else { continue };
            let Ok((key, components)) = read_header(&path) else { continue };
            out.push(EntryInfo {
                key,
                path,
                size: meta.len(),
                last_used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                components,
            });
        }
        out.sort_by(|a, b| b.last_used.cmp(&a.last_used).then(a.key.cmp(&b.key)));
        Ok(out)
    }

    /// Removes least recently used entries until the total size is within the
    /// cap; returns how many were removed.
    pub fn evict(&self) -> Result<usize> {
        let entries = self.entries()?;
        let mut total: u64 = entries.iter().map(|e| e.size).sum();
        let mut removed = 0;
        for e in entries.iter().rev() {
            if total <= self.max_bytes {
                break;
            }
            if std::fs::remove_file(&e.path).is_ok() {
                total -= e.size;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes every entry (and stale temporary files); returns how many entries.
    pub fn clear(&self) -> Result<usize> {
        let mut n = 0;
        for e in std::fs::read_dir(&self.dir).map_err(io(&self.dir))?.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let is_entry = path.extension().is_some_and(|x| x == SUFFIX);
            if !is_entry && !name.starts_with(".tmp-") {
                continue;
            }
            let removed = std::fs::remove_file(&path).is_ok();
            n += usize::from(removed && is_entry);
        }
        Ok(n)
    }
}

/// Splits an entry into (key, components, payload), checking everything.
fn parse_entry(bytes: &[u8]) -> Result<(String, Vec<KeyComponent>, &[u8]), String> {
    let (key, components, rest) = parse_header(bytes)?;
    let len_bytes = rest.get(..8).ok_or("truncated before the payload length")?;
    let len = u64::from_le_bytes(len_bytes.try_into().unwrap_or_default()) as usize;
    let checksum = rest.get(8..40).ok_or("truncated before the checksum")?;
    let payload = &rest[40.min(rest.len())..];
    if payload.len() != len {
        return Err(format!("truncated or padded: payload is {} bytes, header says {len}", payload.len()));
    }
    if Sha256::digest(payload).as_slice() != checksum {
        return Err(format!("corrupted: checksum mismatch (payload digest {})", sha256_hex(payload)));
    }
    Ok((key, components, payload))
}

/// Reads magic, version, key and components; returns the rest.
fn parse_header(bytes: &[u8]) -> Result<(String, Vec<KeyComponent>, &[u8]), String> {
    if bytes.len() < 80 || &bytes[..8] != MAGIC {
        return Err("not an xlac cache entry (bad magic or too short)".into());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default());
    if version != CACHE_FORMAT_VERSION {
        return Err(format!("written by cache format {version}, this xlac uses {CACHE_FORMAT_VERSION}"));
    }
    let key = std::str::from_utf8(&bytes[12..76]).map_err(|_| "bad key")?.to_string();
    let clen = u32::from_le_bytes(bytes[76..80].try_into().unwrap_or_default()) as usize;
    let cjson = bytes.get(80..80 + clen).ok_or("truncated in the key components")?;
    let list: Vec<serde_json::Value> = serde_json::from_slice(cjson).map_err(|e| format!("bad key components: {e}"))?;
    let field = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_string();
    let components = list
        .iter()
        .map(|v| KeyComponent { label: field(v, "label"), digest: field(v, "digest"), shown: field(v, "shown") })
        .collect();
    Ok((key, components, &bytes[80 + clen..]))
}

/// Reads only an entry's header (for listing).
fn read_header(path: &Path) -> std::result::Result<(String, Vec<KeyComponent>), String> {
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut head = vec![0u8; 80];
    f.read_exact(&mut head).map_err(|e| e.to_string())?;
    let clen = u32::from_le_bytes(head[76..80].try_into().unwrap_or_default()) as usize;
    if clen > 1 << 20 {
        return Err("key components too large".into());
    }
    let mut rest = vec![0u8; clen];
    f.read_exact(&mut rest).map_err(|e| e.to_string())?;
    head.extend_from_slice(&rest);
    parse_header(&head).map(|(k, c, _)| (k, c))
}
