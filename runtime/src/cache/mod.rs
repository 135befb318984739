//! The compilation cache: loaded executables in memory, serialized ones on
//! disk, keyed by everything that determines the compiled code. On by
//! default, bounded, private, and able to say why it missed.

pub mod disk;
pub mod key;
mod memory;

use crate::error::Result;
use crate::executable::Executable;
use crate::pjrt::client::Client;
use crate::pjrt::compile_options::CompileOptions;
use crate::program::Program;
use disk::{DiskCache, EntryInfo, Lookup};
use key::{sha256_hex, CacheKey, KeyBuilder};
use memory::MemoryCache;
use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where and how much to cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// The disk cache directory; `None` keeps executables in memory only.
    pub dir: Option<PathBuf>,
    /// The disk cache's size cap in bytes.
    pub max_bytes: u64,
    /// How many loaded executables to keep in memory (0: none).
    pub memory_entries: usize,
}

impl CacheConfig {
    /// The defaults: [`disk::default_dir`], [`disk::default_max_bytes`], 64 executables in memory.
    pub fn from_env() -> Self {
        CacheConfig { dir: disk::default_dir(), max_bytes: disk::default_max_bytes(), memory_entries: 64 }
    }

    /// No caching at all.
    pub fn disabled() -> Self {
        CacheConfig { dir: None, max_bytes: 0, memory_entries: 0 }
    }
}

/// How a compile request was served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// A loaded executable from memory.
    MemoryHit,
    /// A serialized executable from disk, loaded.
    DiskHit,
    /// Compiled by XLA; `note` says why a disk entry could not be used, if one was there.
    Compiled { note: Option<String> },
}

/// Why a key missed: the closest existing entry and the components that differ.
#[derive(Clone, Debug)]
pub struct Explanation {
    pub key: CacheKey,
    /// True when an entry for the key is on disk.
    pub hit: bool,
    /// The entry sharing the most components, and the labels of those that differ.
    pub closest: Option<(EntryInfo, Vec<String>)>,
}

/// Memory and disk caches of compiled programs.
pub struct CompilationCache {
    disk: Option<DiskCache>,
    memory: Mutex<MemoryCache>,
}

impl CompilationCache {
    /// A cache as configured; fails when the disk directory is unsafe or cannot be made.
    pub fn new(config: &CacheConfig) -> Result<Self> {
        let disk = match &config.dir {
            Some(dir) => Some(DiskCache::open(dir, config.max_bytes)?),
            None => None,
        };
        Ok(CompilationCache { disk, memory: Mutex::new(MemoryCache::new(config.memory_entries)) })
    }

    /// The disk cache, if any.
    pub fn disk(&self) -> Option<&DiskCache> {
        self.disk.as_ref()
    }

    /// How many executables are loaded in memory.
    pub fn memory_len(&self) -> usize {
        self.memory.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The key of compiling `program` with `options` on `client`: the program
    /// text, the options, the xlac version, everything about the plugin and
    /// devices that decides the compiled code, `XLA_FLAGS` and the plugin's
    /// [workarounds](crate::workarounds).
    pub fn key(&self, client: &Client, program: &Program, options: &CompileOptions) -> Result<CacheKey> {
        let plugin = client.plugin();
        let mut b = KeyBuilder::new();
        b.add("xlac_version", env!("CARGO_PKG_VERSION").as_bytes(), true);
        b.add("program", key::canonical_program(&program.mlir).as_bytes(), false);
        b.add("compile_options", &options.encode(), false);
        b.add("platform_name", client.platform_name().as_bytes(), true);
        b.add("platform_version", client.platform_version().as_bytes(), true);
        let (major, minor) = plugin.api_version();
        b.add("pjrt_api_version", format!("{major}.{minor}").as_bytes(), true);
        let attrs = plugin.attributes();
        for name in ["xla_version", "stablehlo_current_version"] {
            let v = attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.to_string()).unwrap_or_default();
            b.add(name, v.as_bytes(), true);
        }
        b.add("plugin_digest", plugin_digest(plugin.path(), self.disk.as_ref().map(DiskCache::dir))?.as_bytes(), true);
        let kind = client.devices().first().map(|d| d.kind.as_str()).unwrap_or_default();
        b.add("device_kind", kind.as_bytes(), true);
        b.add("device_count", client.device_count().to_string().as_bytes(), true);
        // XLA reads its debug options from XLA_FLAGS too: they change the compiled code.
        b.add("xla_flags", std::env::var("XLA_FLAGS").unwrap_or_default().as_bytes(), true);
        // As do the options set for the plugin's known defects, which a new
        // xlac of the same version number may add.
        let workarounds: Vec<String> =
            options.workarounds(plugin.api_version()).iter().map(|w| format!("{}={}", w.option, w.value)).collect();
        b.add("workarounds", workarounds.join(" ").as_bytes(), true);
        Ok(b.finish())
    }

    /// The executable for `program`: from memory, else from disk, else
    /// compiled by XLA (and then stored in both).
    pub fn get_or_compile(
        &self,
        client: &Client,
        program: &Program,
        options: &CompileOptions,
    ) -> Result<(Arc<Executable>, CacheOutcome)> {
        let key = self.key(client, program, options)?;
        // Executables belong to one client: the memory key names it (the entry keeps it alive).
        let memory_key = format!("{:p}/{}", client.id(), key.hex);
        if let Some(exe) = self.memory.lock().unwrap_or_else(|e| e.into_inner()).get(&memory_key) {
            if exe.inputs() == program.inputs.as_slice() && exe.outputs() == program.outputs.as_slice() {
                return Ok((exe, CacheOutcome::MemoryHit));
            }
        }
        let mut note = None;
        if let Some(disk) = &self.disk {
            match disk.get(&key) {
                Lookup::Hit(bytes) => match client.load_serialized(&bytes, program) {
                    Ok(exe) => {
                        let exe = Arc::new(exe);
                        self.remember(memory_key, &exe);
                        return Ok((exe, CacheOutcome::DiskHit));
                    }
                    Err(e) => {
                        note = Some(format!("cached executable {} could not be loaded ({e}); recompiling", key.hex))
                    }
                },
                Lookup::Invalid(why) => note = Some(format!("invalid cache entry: {why}; recompiling")),
                Lookup::Miss => {}
            }
        }
        let exe = Arc::new(client.compile(program, options)?);
        if let Some(disk) = &self.disk {
            if let Err(e) = exe.serialize().and_then(|bytes| disk.put(&key, &bytes)) {
                let msg = format!("could not store the compiled executable in the cache: {e}");
                note = Some(note.map_or(msg.clone(), |n| format!("{n}; {msg}")));
            }
        }
        self.remember(memory_key, &exe);
        Ok((exe, CacheOutcome::Compiled { note }))
    }

    fn remember(&self, memory_key: String, exe: &Arc<Executable>) {
        self.memory.lock().unwrap_or_else(|e| e.into_inner()).insert(memory_key, exe.clone());
    }

    /// Explains the disk cache's answer for `program`: hit, or which key
    /// components differ from the closest entry.
    pub fn explain(&self, client: &Client, program: &Program, options: &CompileOptions) -> Result<Explanation> {
        let key = self.key(client, program, options)?;
        let entries = match &self.disk {
            Some(d) => d.entries()?,
            None => Vec::new(),
        };
        let hit = entries.iter().any(|e| e.key == key.hex);
        let closest = entries
            .into_iter()
            .filter(|e| e.key != key.hex)
            .map(|e| {
                let differ: Vec<String> = key
                    .components
                    .iter()
                    .filter(|c| !e.components.iter().any(|o| o.label == c.label && o.digest == c.digest))
                    .map(|c| c.label.clone())
                    .collect();
                (e, differ)
            })
            .min_by_key(|(_, d)| d.len());
        Ok(Explanation { key, hit, closest })
    }
}

/// SHA-256 of a plugin library, memoised in this process and, by (path, size,
/// mtime), in the cache directory: hashing a 250 MB plugin takes over a second.
pub fn plugin_digest(path: &Path, cache_dir: Option<&Path>) -> Result<String> {
    static MEMO: Mutex<Option<HashMap<PathBuf, String>>> = Mutex::new(None);
    // Memoised by the path as given: no file-system call on a repeat.
    let given = path.to_path_buf();
    if let Some(d) = MEMO.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(HashMap::new).get(&given) {
        return Ok(d.clone());
    }
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let meta = std::fs::metadata(&path).map_err(|source| crate::Error::Io { path: path.clone(), source })?;
    let stamp = format!("{}\0{}\0{}.{}", path.display(), meta.len(), meta.mtime(), meta.mtime_nsec());
    let memo_file = cache_dir.map(|d| d.join("plugin-digests").join(sha256_hex(stamp.as_bytes())));
    let cached = memo_file
        .as_ref()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()));
    let digest = match cached {
        Some(d) => d,
        None => {
            let bytes = std::fs::read(&path).map_err(|source| crate::Error::Io { path: path.clone(), source })?;
            let d = sha256_hex(&bytes);
            if let Some(f) = &memo_file {
                // Best effort; a missing memo only costs time.
                let tmp = f.with_extension(format!("tmp{}", std::process::id()));
                let _ = std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(f.parent().unwrap_or(Path::new(".")))
                    .and_then(|()| std::fs::write(&tmp, &d))
                    .and_then(|()| std::fs::rename(&tmp, f));
            }
            d
        }
    };
    MEMO.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(HashMap::new).insert(given, digest.clone());
    Ok(digest)
}
