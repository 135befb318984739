//! Deployable artifacts (`.xlac`): one self-contained file with a program's
//! StableHLO, its signature, its weights and optionally an ahead-of-time
//! compiled executable. The runtime loads and runs one without the compiler.
//! The format is documented in `docs/artifact.md`.

use crate::cache::key::{sha256_hex, CacheKey};
use crate::cache::{CacheOutcome, CompilationCache};
use crate::calibration::Workload;
use crate::error::{Error, Result};
use crate::executable::Executable;
use crate::host::{byte_len, HostTensor, TensorRef, TensorSpec};
use crate::pjrt::buffer::Buffer;
use crate::pjrt::client::Client;
use crate::program::Program;
use crate::sharding::{Mesh, Partitioning, ShardedBuffer, Sharding};
use crate::DType;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAGIC: &[u8; 8] = b"XLACART\0";
/// The artifact format version this runtime reads and writes.
pub const ARTIFACT_VERSION: u32 = 1;
const ALIGN: usize = 64;

/// The parts of an artifact, to write one.
pub struct ArtifactParts<'a> {
    pub name: String,
    pub stablehlo: String,
    pub inputs: Vec<TensorSpec>,
    /// Parameters (passed after the inputs) with their data.
    pub params: Vec<(TensorSpec, TensorRef<'a>)>,
    pub outputs: Vec<TensorSpec>,
    /// An AOT executable and the cache key it was compiled under.
    pub executable: Option<(Vec<u8>, CacheKey)>,
    /// The mesh and shardings of an SPMD program (arguments: inputs, then parameters).
    pub partitioning: Option<Partitioning>,
    /// XLA debug options the program is compiled with ([`Program::xla_flags`]).
    pub xla_flags: BTreeMap<String, bool>,
    /// Whether some product may read a broadcast ([`Program::products_read_broadcasts`]).
    pub products_read_broadcasts: bool,
    /// What its time goes to, for the choice of a CPU plugin to run it on.
    pub workload: Workload,
}

fn partitioning_json(p: &Partitioning) -> Value {
    let shardings = |list: &[Sharding]| list.iter().map(|s| json!(s.0)).collect::<Vec<_>>();
    json!({
        "mesh": p.mesh.axes().iter().map(|(n, s)| json!([n, s])).collect::<Vec<_>>(),
        "arguments": shardings(&p.inputs),
        "outputs": shardings(&p.outputs),
    })
}

fn partitioning_from(v: &Value) -> std::result::Result<Partitioning, String> {
    let axes = v["mesh"]
        .as_array()
        .and_then(|a| a.iter().map(|x| Some((x[0].as_str()?.to_string(), x[1].as_u64()?))).collect::<Option<Vec<_>>>())
        .ok_or("partitioning: the mesh is not a list of [axis, size]")?;
    let mesh = if axes.is_empty() {
        Mesh::single()
    } else {
        Mesh::new(axes).map_err(|e| format!("partitioning.mesh: {e}"))?
    };
    let shardings = |key: &str| {
        serde_json::from_value::<Vec<Vec<Option<String>>>>(v[key].clone())
            .map(|list| list.into_iter().map(Sharding).collect())
            .map_err(|e| format!("partitioning.{key}: {e}"))
    };
    Ok(Partitioning { mesh, inputs: shardings("arguments")?, outputs: shardings("outputs")? })
}

fn spec_json(s: &TensorSpec) -> Value {
    json!({"name": s.name, "dtype": s.ty.name(), "shape": s.shape})
}

/// A section laid out in the body: where, how long, and its digest.
struct Placed {
    at: usize,
    len: usize,
    sha256: String,
}

impl Placed {
    /// The section's header entry, the body starting at `base`.
    fn json(&self, base: usize) -> Value {
        json!({"offset": base + self.at, "length": self.len, "sha256": self.sha256})
    }
}

/// Writes an artifact atomically (temporary file, then rename), streaming
/// the weights: host memory holds one parameter at a time, not the file.
pub fn write(path: &Path, parts: &ArtifactParts<'_>) -> Result<()> {
    // Lay out the sections after a header whose size is only known once the
    // offsets are: lay out relative to 0 (hashing each section once), then
    // shift by the aligned header size.
    let mut body_len = 0usize;
    let mut place = |bytes: &[u8]| {
        let at = body_len.div_ceil(ALIGN) * ALIGN;
        body_len = at + bytes.len();
        Placed { at, len: bytes.len(), sha256: sha256_hex(bytes) }
    };
    let hlo = place(parts.stablehlo.as_bytes());
    // Parameters are stored dense, in the program's layout (strided views gathered one at a time).
    let param_at: Vec<Placed> = parts.params.iter().map(|(_, t)| place(&t.dense_bytes())).collect();
    let exe = parts.executable.as_ref().map(|(bytes, _)| place(bytes));
    let header_for = |base: usize| {
        let params: Vec<Value> = parts
            .params
            .iter()
            .zip(&param_at)
            .map(|((s, _), placed)| {
                let mut v = spec_json(s);
                v["data"] = placed.json(base);
                v
            })
            .collect();
        let mut h = json!({
            "xlac_version": env!("CARGO_PKG_VERSION"),
            "name": parts.name,
            "inputs": parts.inputs.iter().map(spec_json).collect::<Vec<_>>(),
            "parameters": params,
            "outputs": parts.outputs.iter().map(spec_json).collect::<Vec<_>>(),
            "stablehlo": hlo.json(base),
        });
        if let Some(p) = &parts.partitioning {
            h["partitioning"] = partitioning_json(p);
        }
        if !parts.xla_flags.is_empty() {
            h["xla_flags"] = json!(parts.xla_flags);
        }
        if !parts.products_read_broadcasts {
            h["products_read_broadcasts"] = json!(false);
        }
        h["workload"] = json!(parts.workload.name());
        if let (Some((_, key)), Some(placed)) = (&parts.executable, &exe) {
            let mut s = placed.json(base);
            s["cache_key"] = json!(key.hex);
            s["compiled_for"] = json!(key
                .components
                .iter()
                .filter(|c| c.shown.len() < 200)
                .map(|c| (c.label.clone(), Value::from(c.shown.clone())))
                .collect::<serde_json::Map<_, _>>());
            h["executable"] = s;
        }
        serde_json::to_vec(&h).expect("JSON values serialize")
    };
    // The header's length depends on the offsets' digits: iterate to a fixed point.
    let mut base = (24 + header_for(0).len()).div_ceil(ALIGN) * ALIGN;
    let header = loop {
        let h = header_for(base);
        let needed = (24 + h.len()).div_ceil(ALIGN) * ALIGN;
        if needed <= base {
            break h;
        }
        base = needed;
    };
    let mut start = Vec::with_capacity(base);
    start.extend_from_slice(MAGIC);
    start.extend_from_slice(&ARTIFACT_VERSION.to_le_bytes());
    start.extend_from_slice(&0u32.to_le_bytes());
    start.extend_from_slice(&(header.len() as u64).to_le_bytes());
    start.extend_from_slice(&header);
    start.resize(base, 0);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let io = |source| Error::Io { path: path.into(), source };
    let write_all = |f: std::fs::File| -> std::io::Result<()> {
        let mut w = std::io::BufWriter::new(f);
        w.write_all(&start)?;
        let mut written = 0;
        let mut section = |w: &mut std::io::BufWriter<std::fs::File>, placed: &Placed, bytes: &[u8]| {
            w.write_all(&[0; ALIGN][..placed.at - written])?;
            written = placed.at + bytes.len();
            w.write_all(bytes)
        };
        section(&mut w, &hlo, parts.stablehlo.as_bytes())?;
        for ((_, t), placed) in parts.params.iter().zip(&param_at) {
            section(&mut w, placed, &t.dense_bytes())?;
        }
        if let (Some((bytes, _)), Some(placed)) = (&parts.executable, &exe) {
            section(&mut w, placed, bytes)?;
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_data()
    };
    write_all(std::fs::File::create(&tmp).map_err(io)?).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// A section of the file, checked to lie inside it: what it is (for errors),
/// its byte range, and the SHA-256 the header gives.
struct Section {
    what: String,
    start: usize,
    end: usize,
    sha256: String,
}

impl Section {
    /// The section's bytes in `map`.
    fn of<'m>(&self, map: &'m [u8]) -> &'m [u8] {
        &map[self.start..self.end]
    }
}

/// The first of `sections` (in their order) whose bytes in `map` do not hash
/// to their SHA-256, if any, hashed on at most `threads` threads, largest
/// section first (hashing the weights is most of checking a large artifact);
/// a few MiB in all are hashed on the calling thread.
fn first_corrupt<'s>(map: &[u8], sections: impl IntoIterator<Item = &'s Section>, threads: usize) -> Option<&'s str> {
    const THREADED_FROM: usize = 4 << 20;
    let mut order: Vec<(usize, &Section)> = sections.into_iter().enumerate().collect();
    let total: usize = order.iter().map(|(_, s)| s.end - s.start).sum();
    let threads = if total < THREADED_FROM { 1 } else { threads.clamp(1, order.len().max(1)) };
    order.sort_by_key(|(_, s)| std::cmp::Reverse(s.end - s.start));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let corrupt = || -> Vec<(usize, &'s Section)> {
        let mut found = Vec::new();
        while let Some(&(i, section)) = order.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
            if sha256_hex(section.of(map)) != section.sha256 {
                found.push((i, section));
            }
        }
        found
    };
    let found: Vec<(usize, &Section)> = if threads == 1 {
        corrupt()
    } else {
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads).map(|_| scope.spawn(corrupt)).collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect()
        })
    };
    found.into_iter().min_by_key(|&(i, _)| i).map(|(_, s)| s.what.as_str())
}

/// An artifact opened read-only through a memory map: its structure and
/// program checked (its weights when loaded: [`Artifact::open`]).
pub struct Artifact {
    path: PathBuf,
    /// Shared with the loaded models whose weights the plugin reads in place.
    map: Arc<memmap2::Mmap>,
    name: String,
    inputs: Vec<TensorSpec>,
    params: Vec<(TensorSpec, Section)>,
    outputs: Vec<TensorSpec>,
    stablehlo: Section,
    executable: Option<(Section, String)>,
    partitioning: Option<Partitioning>,
    xla_flags: BTreeMap<String, bool>,
    products_read_broadcasts: bool,
    workload: Workload,
}

impl Artifact {
    /// Opens and checks `path`: magic, version, header, every section inside
    /// the file, the program's sections against their SHA-256, every
    /// parameter's size matching its shape. The weights' checksums, most of
    /// the file, are checked by [`Artifact::load`] while the executable loads
    /// (or by [`Artifact::verify_weights`]): no weight reaches a device unchecked.
    pub fn open(path: &Path) -> Result<Artifact> {
        let map = Arc::new(crate::mapped::map(path)?);
        let bad = |message: String| Error::Format { path: path.into(), message };
        if map.len() < 24 || &map[..8] != MAGIC {
            return Err(bad("not an xlac artifact (bad magic or too short)".into()));
        }
        let version = u32::from_le_bytes(map[8..12].try_into().unwrap_or_default());
        if version != ARTIFACT_VERSION {
            return Err(bad(format!(
                "artifact format version {version}; this runtime reads version {ARTIFACT_VERSION}"
            )));
        }
        let hlen = u64::from_le_bytes(map[16..24].try_into().unwrap_or_default()) as usize;
        let header = map.get(24..24usize.saturating_add(hlen)).ok_or_else(|| bad("truncated in the header".into()))?;
        let h: Value = serde_json::from_slice(header).map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
        let section = |v: &Value, what: &str| -> Result<Section> {
            let (Some(start), Some(len)) = (v["offset"].as_u64(), v["length"].as_u64()) else {
                return Err(bad(format!("{what}: no offset or length")));
            };
            let (start, len) = (start as usize, len as usize);
            let end = start.checked_add(len).filter(|&e| e <= map.len()).ok_or_else(|| {
                bad(format!(
                    "{what}: bytes {start}..{} lie outside the file ({} bytes): truncated?",
                    start.saturating_add(len),
                    map.len()
                ))
            })?;
            let sha256 = v["sha256"].as_str().unwrap_or_default().to_string();
            Ok(Section { what: what.to_string(), start, end, sha256 })
        };
        let specs = |key: &str| -> Result<Vec<TensorSpec>> {
            h[key]
                .as_array()
                .ok_or_else(|| bad(format!("header has no `{key}`")))?
                .iter()
                .map(|v| spec_from(v).map_err(|m| bad(format!("{key}: {m}"))))
                .collect()
        };
        let inputs = specs("inputs")?;
        let outputs = specs("outputs")?;
        let mut params = Vec::new();
        for v in h["parameters"].as_array().ok_or_else(|| bad("header has no `parameters`".into()))? {
            let s = spec_from(v).map_err(|m| bad(format!("parameters: {m}")))?;
            let r = section(&v["data"], &format!("parameter `{}`", s.name))?;
            if byte_len(s.ty, &s.shape)? != r.end - r.start {
                return Err(bad(format!(
                    "parameter `{}`: {} bytes do not hold {}{:?}",
                    s.name,
                    r.end - r.start,
                    s.ty,
                    s.shape
                )));
            }
            params.push((s, r));
        }
        let stablehlo = section(&h["stablehlo"], "StableHLO")?;
        let executable = match h.get("executable") {
            None | Some(Value::Null) => None,
            Some(e) => Some((section(e, "executable")?, e["cache_key"].as_str().unwrap_or_default().to_string())),
        };
        let program = [Some(&stablehlo), executable.as_ref().map(|(s, _)| s)];
        if let Some(corrupt) = first_corrupt(&map, program.into_iter().flatten(), 1) {
            return Err(bad(format!("{corrupt}: checksum mismatch: the file is corrupted")));
        }
        std::str::from_utf8(stablehlo.of(&map)).map_err(|_| bad("StableHLO is not UTF-8".into()))?;
        let name = h["name"].as_str().unwrap_or("model").to_string();
        let partitioning = match h.get("partitioning") {
            None | Some(Value::Null) => None,
            Some(p) => {
                let p = partitioning_from(p).map_err(bad)?;
                if p.inputs.len() != inputs.len() + params.len() || p.outputs.len() != outputs.len() {
                    return Err(bad("partitioning: one sharding per argument and result is needed".into()));
                }
                Some(p)
            }
        };
        let xla_flags = match h.get("xla_flags") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(f) => serde_json::from_value(f.clone())
                .map_err(|e| bad(format!("xla_flags: expected an object of true or false by name: {e}")))?,
        };
        // Written before the lowering told: taken to read broadcasts.
        let products_read_broadcasts = match h.get("products_read_broadcasts") {
            None | Some(Value::Null) => true,
            Some(v) => v
                .as_bool()
                .ok_or_else(|| bad(format!("products_read_broadcasts: expected true or false, found {v}")))?,
        };
        // Written before workloads were: ranked as the default's.
        let workload = match h.get("workload") {
            None | Some(Value::Null) => Workload::Dense,
            Some(w) => w.as_str().and_then(Workload::from_name).ok_or_else(|| {
                let names: Vec<_> = Workload::ALL.iter().map(|w| format!("\"{}\"", w.name())).collect();
                bad(format!("workload: expected one of {}, found {w}", names.join(", ")))
            })?,
        };
        Ok(Artifact {
            path: path.into(),
            map,
            name,
            inputs,
            params,
            outputs,
            stablehlo,
            executable,
            partitioning,
            xla_flags,
            products_read_broadcasts,
            workload,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The inputs a caller passes, in order.
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    /// The outputs returned, in order.
    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// The stored parameters' specs.
    pub fn params(&self) -> impl Iterator<Item = &TensorSpec> {
        self.params.iter().map(|(s, _)| s)
    }

    /// The StableHLO text.
    pub fn stablehlo(&self) -> &str {
        std::str::from_utf8(self.stablehlo.of(&self.map)).unwrap_or_default()
    }

    /// True when an AOT executable is stored.
    pub fn has_executable(&self) -> bool {
        self.executable.is_some()
    }

    /// How many devices its program runs on (its mesh's, else 1).
    pub fn num_partitions(&self) -> u32 {
        crate::sharding::partitions(self.partitioning.as_ref())
    }

    /// What its time goes to, for the choice of a CPU plugin (as when it was
    /// compiled from its model; [`Workload::Dense`] for an artifact written
    /// before workloads were recorded).
    pub fn workload(&self) -> Workload {
        self.workload
    }

    /// The program: StableHLO with inputs then parameters as arguments.
    pub fn program(&self) -> Program {
        let mut inputs = self.inputs.clone();
        inputs.extend(self.params().cloned());
        Program {
            mlir: self.stablehlo().to_string(),
            inputs,
            outputs: self.outputs.clone(),
            partitioning: self.partitioning.clone(),
            // Artifacts hold inference programs; a training step runs through the driver.
            donations: Vec::new(),
            devices: None,
            xla_flags: self.xla_flags.clone(),
            products_read_broadcasts: self.products_read_broadcasts,
        }
    }

    /// Checks every weight against its SHA-256 (sections hashed on up to
    /// `threads` threads, the largest first); the error names the first corrupt one.
    fn check_weights(&self, threads: usize) -> Result<()> {
        match first_corrupt(&self.map, self.params.iter().map(|(_, s)| s), threads) {
            None => Ok(()),
            Some(corrupt) => Err(Error::Format {
                path: self.path.clone(),
                message: format!("{corrupt}: checksum mismatch: the file is corrupted"),
            }),
        }
    }

    /// Checks every weight against its SHA-256, on as many threads as the
    /// machine has cores ([`Artifact::load`] does so while the executable loads).
    pub fn verify_weights(&self) -> Result<()> {
        self.check_weights(cores())
    }

    /// Loads the artifact on `client`: its executable (the stored AOT one when
    /// it was built for this plugin and devices, else from `cache`, else
    /// compiled) and its weights, once, after checking them against their
    /// SHA-256 (on the other cores while the executable loads). A
    /// single-device program's weights stay where they are: a plugin that
    /// reads host memory (the CPU plugins) uses the artifact's memory map in
    /// place, without a copy, the pages shared with every process that maps
    /// the same file; the loaded model keeps the map alive (the `Artifact`
    /// may be dropped first). Other plugins copy.
    pub fn load(&self, client: &Client, cache: &CompilationCache) -> Result<LoadedModel> {
        let (loaded, checked) = std::thread::scope(|scope| {
            let checking = scope.spawn(|| self.check_weights(cores().saturating_sub(1)));
            let loaded = self.load_executable(client, cache);
            (loaded, checking.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
        });
        checked?;
        let (exe, outcome) = loaded?;
        let params = self
            .params
            .iter()
            .enumerate()
            .map(|(i, (s, section))| {
                let data = TensorRef { ty: s.ty, shape: &s.shape, data: section.of(&self.map), byte_strides: None };
                exe.upload_argument_in_place(self.inputs.len() + i, data, self.map.clone())
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(LoadedModel { exe, params, inputs: self.inputs.clone(), outcome })
    }

    /// The executable: the stored AOT one when it was built for this plugin
    /// and devices, else from `cache`, else compiled (saying why).
    fn load_executable(&self, client: &Client, cache: &CompilationCache) -> Result<(Arc<Executable>, LoadOutcome)> {
        let program = self.program();
        let options = program.compile_options();
        match &self.executable {
            Some((section, stored)) if cache.key(client, &program, &options)?.hex == *stored => {
                Ok((Arc::new(client.load_serialized(section.of(&self.map), &program)?), LoadOutcome::Aot))
            }
            stored => {
                let (exe, outcome) = cache.get_or_compile(client, &program, &options)?;
                let outcome = match outcome {
                    CacheOutcome::Compiled { note } if stored.is_some() => {
                        let why = "the stored AOT executable was built for another plugin or device set";
                        CacheOutcome::Compiled { note: Some(note.map_or(why.to_string(), |n| format!("{why}; {n}"))) }
                    }
                    o => o,
                };
                Ok((exe, LoadOutcome::Cache(outcome)))
            }
        }
    }
}

/// The machine's cores (1 if it cannot tell).
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn spec_from(v: &Value) -> std::result::Result<TensorSpec, String> {
    let name = v["name"].as_str().ok_or("an entry has no name")?.to_string();
    let ty = v["dtype"].as_str().and_then(DType::from_name).ok_or_else(|| format!("`{name}` has no known dtype"))?;
    let shape = v["shape"]
        .as_array()
        .and_then(|a| a.iter().map(|d| d.as_u64().map(|x| x as usize)).collect::<Option<Vec<_>>>())
        .ok_or_else(|| format!("`{name}` has no shape"))?;
    Ok(TensorSpec { name, ty, shape })
}

/// Where a loaded model's executable came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadOutcome {
    /// The artifact's own AOT executable.
    Aot,
    /// The compilation cache (or a compile), as it says.
    Cache(CacheOutcome),
}

/// A model ready to run: executable loaded, weights on the device.
pub struct LoadedModel {
    exe: Arc<Executable>,
    params: Vec<ShardedBuffer>,
    inputs: Vec<TensorSpec>,
    /// Where the executable came from.
    pub outcome: LoadOutcome,
}

impl LoadedModel {
    /// The inputs to pass to [`LoadedModel::run`], in order.
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    /// The outputs returned, in order.
    pub fn outputs(&self) -> &[TensorSpec] {
        self.exe.outputs()
    }

    /// How many of the weights the plugin reads in place from the artifact's
    /// memory map (the rest were copied: see [`Artifact::load`]).
    pub fn weights_in_place(&self) -> usize {
        self.params.iter().filter(|p| p.shards().iter().all(Buffer::reads_host_memory)).count()
    }

    /// Runs on host inputs, checked against the signature (count, dtype, shape).
    pub fn run(&self, inputs: &[TensorRef<'_>]) -> Result<Vec<HostTensor>> {
        if inputs.len() != self.inputs.len() {
            let names: Vec<&str> = self.inputs.iter().map(|s| s.name.as_str()).collect();
            return Err(Error::Argument {
                index: inputs.len().min(self.inputs.len()),
                name: names.get(inputs.len()).copied().unwrap_or("?").into(),
                message: format!(
                    "expected {} inputs ({}), found {}",
                    self.inputs.len(),
                    names.join(", "),
                    inputs.len()
                ),
            });
        }
        let uploaded =
            inputs.iter().enumerate().map(|(i, t)| self.exe.upload_argument(i, *t)).collect::<Result<Vec<_>>>()?;
        let args: Vec<&ShardedBuffer> = uploaded.iter().chain(&self.params).collect();
        self.exe.execute_sharded(&args)?.iter().map(ShardedBuffer::to_host).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sections of `sizes` bytes, their checksums as written, with the named ones spoiled after.
    fn sections(map: &mut [u8], sizes: &[usize], spoiled: &[usize]) -> Vec<Section> {
        let mut start = 0;
        let mut list = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let end = start + n;
            map[start..end].iter_mut().enumerate().for_each(|(j, b)| *b = (i * 31 + j) as u8);
            list.push(Section { what: format!("section {i}"), start, end, sha256: sha256_hex(&map[start..end]) });
            start = end;
        }
        for &i in spoiled {
            map[list[i].start + 7] ^= 1;
        }
        list
    }

    #[test]
    fn the_first_corrupt_section_is_named_whichever_thread_finds_it() {
        // Large enough to be hashed on several threads (the largest first).
        let sizes = [1 << 20, 3 << 20, 2 << 20, 1 << 10];
        let mut map = vec![0u8; sizes.iter().sum()];
        for threads in [1, 2, 3, 8] {
            let intact = sections(&mut map, &sizes, &[]);
            assert_eq!(first_corrupt(&map, &intact, threads), None);
            for spoiled in [vec![3], vec![2, 1], vec![0, 3]] {
                let list = sections(&mut map, &sizes, &spoiled);
                let want = format!("section {}", spoiled.iter().min().unwrap());
                assert_eq!(first_corrupt(&map, &list, threads), Some(want.as_str()), "{spoiled:?} on {threads}");
            }
        }
        // A small artifact, hashed on the calling thread, the same way.
        let mut small = vec![0u8; 300];
        let list = sections(&mut small, &[100, 200], &[1]);
        assert_eq!(first_corrupt(&small, &list, 4), Some("section 1"));
        assert_eq!(first_corrupt(&small, &[], 4), None);
    }
}
