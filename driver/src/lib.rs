//! The xlac driver: model.json to results, joining the compiler and the
//! runtime. The `xlac` binary is argument parsing on top of this; a Rust
//! program can do everything the binary does through it.
//!
//! ```no_run
//! use std::collections::BTreeMap;
//! # fn main() -> Result<(), xlac_driver::Error> {
//! let model = xlac_driver::compile_model("fixtures/mlp/model.json".as_ref(), &Default::default(), &BTreeMap::new())?;
//! let session = xlac_driver::Session::cpu(None)?;
//! let outputs = session.run(&model, &BTreeMap::new(), 0)?;
//! for (name, tensor) in &outputs {
//!     println!("{name}: {}", tensor.summary());
//! }
//! # Ok(()) }
//! ```

pub mod bench;
pub mod check;
pub mod generate;
pub mod huge_pages;
pub mod onnx_suite;
pub mod pipeline_train;
pub mod plan;
pub mod plugin_rules;
pub mod quantize;
pub mod stages;
pub mod sweep;
pub mod text;
pub mod train;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use xlac_compiler::backend::interp::{self, Tensor};
use xlac_compiler::backend::stablehlo::Lowered;
use xlac_compiler::frontend::hf::{self, ImportOptions};
use xlac_compiler::frontend::json::{Bindings, ModelFile};
use xlac_compiler::frontend::onnx;
use xlac_compiler::ir::{Module, ParamSource};
use xlac_compiler::passes::PassStat;
use xlac_compiler::pipeline;
pub use xlac_compiler::pipeline::Options;
use xlac_compiler::train::lora::LoraSite;
use xlac_compiler::train::StepArg;
use xlac_compiler::{DType, TensorType};
use xlac_core::view::{Laid, WeightView};
use xlac_runtime::artifact::{self, ArtifactParts};
use xlac_runtime::cache::key::CacheKey;
use xlac_runtime::calibration::Workload;
use xlac_runtime::memory;
use xlac_runtime::weights::WeightFiles;
use xlac_runtime::{
    Arg, Artifact, CacheConfig, CacheOutcome, Client, ClientOptions, CompilationCache, Executable, HostTensor,
    LoadOutcome, Partitioning, Platform, Plugin, Program, ShardedBuffer, TensorRef, TensorSpec,
};

/// An error of the driver: from the compiler, the runtime, or XLA's compile
/// of the lowered program (with the IR node that produced the failing line).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Compiler(#[from] xlac_compiler::Error),
    #[error(transparent)]
    Runtime(#[from] xlac_runtime::Error),
    /// XLA rejected the lowered program.
    #[error("{model}: XLA could not compile the lowered program{}: {source}", node.as_ref().map(|n| format!(" (at node `{n}`)")).unwrap_or_default())]
    Xla { model: PathBuf, node: Option<String>, source: xlac_runtime::Error },
    /// The pipeline stopped (`--stop-after`) before lowering: nothing to run.
    #[error("{}: the pipeline stopped after stage `{stage}`; nothing was lowered to run (`xlac compile --emit ir` prints the IR there)", model.display())]
    Stopped { model: PathBuf, stage: &'static str },
    /// A value of the model does not fit in the host's memory.
    #[error("{}: {source}", model.display())]
    Memory { model: PathBuf, source: xlac_runtime::Error },
    /// A training data set does not fit the model.
    #[error("{}: {message}", dir.display())]
    Data { dir: PathBuf, message: String },
    /// An input given to `run` does not fit the model.
    #[error("{model}: input `{name}`: {message}")]
    Input { model: PathBuf, name: String, message: String },
}

/// A model compiled to StableHLO: the IR, its lowering and what the passes did.
#[derive(Clone)]
pub struct CompiledModel {
    pub path: PathBuf,
    pub bindings: Bindings,
    pub module: Module,
    pub lowered: Lowered,
    /// Every leaf pass run, in order (for `--stats`).
    pub stats: Vec<PassStat>,
    /// The fixed points that stopped at their iteration cap while still changing the module.
    pub capped: Vec<String>,
    /// For a training step: how each input is fed (see [`train`]).
    pub step_args: Option<Vec<StepArg>>,
    /// For a training step with LoRA: the adapted layers (to merge into their weights).
    pub lora: Vec<LoraSite>,
    /// The devices it runs on, one per partition (a pipeline stage's, see
    /// [`stages`] and [`pipeline_train`]); `None`: the first ones.
    pub devices: Option<Vec<usize>>,
}

/// Compiles a model (model.json, IR text from a `.ir` file, or a Hugging
/// Face checkpoint directory) through the compiler's one pipeline
/// ([`xlac_compiler::pipeline::compile`]) as `options` say; symbols that
/// `options.bindings` leaves open are bound from the shapes of `given` inputs.
/// The pipeline must reach the lower stage (`--stop-after` a stage before it
/// is an error here: there is nothing to run).
pub fn compile_model(
    path: &Path,
    options: &Options,
    given: &BTreeMap<String, HostTensor>,
) -> Result<CompiledModel, Error> {
    let shapes = given.iter().map(|(k, v)| (k.clone(), v.shape().iter().map(|&d| d as u64).collect())).collect();
    let c = if xlac_compiler::frontend::onnx::is_onnx(path) {
        // Small inputs may be what the import needs fixed (axes, a shape or a pad value given as an input).
        let mut options = options.clone();
        for (name, t) in given {
            if t.shape().iter().product::<usize>() <= 64 {
                let shape = t.shape().iter().map(|&d| d as u64).collect();
                let value =
                    onnx::TensorFile { name: name.clone(), dtype: t.element_type(), shape, data: t.data().to_vec() };
                options.onnx_values.insert(name.clone(), value);
            }
        }
        pipeline::compile(path, &shapes, &options)?
    } else {
        pipeline::compile(path, &shapes, options)?
    };
    compiled_model(c)
}

/// Compiles `module`, built in memory (`origin` names it), through the
/// compiler's stages after loading ([`xlac_compiler::pipeline::compile_module`]).
pub fn compile_module(origin: &Path, module: Module, options: &Options) -> Result<CompiledModel, Error> {
    compiled_model(pipeline::compile_module(origin, module, options)?)
}

/// The runnable model of a compilation that reached the lower stage.
fn compiled_model(c: pipeline::Compiled) -> Result<CompiledModel, Error> {
    let path = c.path;
    let Some(lowered) = c.lowered else {
        return Err(Error::Stopped { model: path, stage: c.last_stage.name() });
    };
    Ok(CompiledModel {
        path,
        bindings: c.bindings,
        module: c.module,
        lowered,
        stats: c.stats,
        capped: c.capped,
        step_args: c.step_args,
        lora: c.lora,
        devices: None,
    })
}

/// Compiles the training step `options.train` of a model cut into `count`
/// pipeline stages ([`xlac_compiler::pipeline::compile_staged`]), before the
/// nodes named in `starts` (else balanced); symbols left open are bound from
/// the shapes of `given` inputs (one micro-batch's).
pub fn compile_staged(
    path: &Path,
    options: &Options,
    given: &BTreeMap<String, HostTensor>,
    count: usize,
    starts: &[String],
) -> Result<pipeline::CompiledStages, Error> {
    let shapes = given.iter().map(|(k, v)| (k.clone(), v.shape().iter().map(|&d| d as u64).collect())).collect();
    Ok(pipeline::compile_staged(path, &shapes, options, count, starts)?)
}

/// Writes the Hugging Face checkpoint in `dir` as the model.json `out`; its
/// parameters reference the checkpoint's safetensors files (relative when
/// `out` is in `dir`, else absolute), so no weight is copied.
pub fn import_checkpoint(dir: &Path, out: &Path, options: &ImportOptions) -> Result<(), Error> {
    let mut doc = hf::import(dir, options)?;
    let dir = dir.canonicalize().map_err(|source| xlac_compiler::Error::Read { path: dir.into(), source })?;
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let same_dir = parent.canonicalize().is_ok_and(|p| p == dir);
    if !same_dir {
        for p in doc["parameters"].as_array_mut().into_iter().flatten() {
            let file = dir.join(p["file"].as_str().unwrap_or_default());
            p["file"] = serde_json::Value::String(file.display().to_string());
        }
    }
    ModelFile::from_json(doc.clone(), out)?;
    let text = serde_json::to_string_pretty(&doc).expect("JSON values serialize");
    std::fs::write(out, text + "\n").map_err(|source| xlac_compiler::Error::Read { path: out.into(), source })?;
    Ok(())
}

/// Imports the ONNX model at `path` as the model.json `out`, its large
/// initializers written beside it (`out` with `.safetensors`, named relative
/// to `out`); symbols in `bindings` become sizes. Returns the weights file
/// when one was written. Both files are written complete or not at all.
pub fn import_onnx(path: &Path, out: &Path, bindings: &BTreeMap<String, u64>) -> Result<Option<PathBuf>, Error> {
    let weights = onnx::weights_beside(out);
    let name = weights.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let doc = onnx::import(path, &weights, &name, bindings, &BTreeMap::new(), &BTreeMap::new())?;
    let written = doc["parameters"].as_array().is_some_and(|p| !p.is_empty());
    ModelFile::from_json(doc.clone(), out)?;
    let text = serde_json::to_string_pretty(&doc).expect("JSON values serialize");
    xlac_core::file::replace(out, |f| f.write_all((text + "\n").as_bytes()))
        .map_err(|source| xlac_compiler::Error::Read { path: out.into(), source })?;
    Ok(written.then_some(weights))
}

fn spec(name: &str, ty: &TensorType) -> TensorSpec {
    TensorSpec { name: name.into(), ty: ty.dtype, shape: ty.shape.iter().map(|&d| d as usize).collect() }
}

impl CompiledModel {
    /// Lowers the module anew where `session`'s plugin reads some of its
    /// products better another way than it was lowered
    /// ([`plugin_rules`]): a product of many rows by a matrix it widens
    /// whole, on the 0.81 build; elsewhere, or for a program without such
    /// products, it is left as it is. Call it once the session is chosen,
    /// before compiling or writing an artifact for that session.
    pub fn lower_for(&mut self, session: &Session) {
        let whole = plugin_rules::whole_widening(session);
        if self.lowered.whole_widening.is_some_and(|w| w != whole) {
            self.lowered = xlac_compiler::backend::stablehlo::lower_with(&self.module, whole);
        }
    }

    /// The runtime program: StableHLO text, signature and partitioning.
    pub fn program(&self) -> Program {
        Program {
            mlir: self.lowered.text.clone(),
            inputs: self.lowered.args.iter().map(|a| spec(&a.name, &a.ty)).collect(),
            outputs: self.lowered.outputs.iter().map(|(n, t)| spec(n, t)).collect(),
            partitioning: self.lowered.partitioning.clone(),
            donations: self.lowered.donations.clone(),
            devices: self.devices.clone(),
            xla_flags: self.lowered.xla_flags.clone(),
            products_read_broadcasts: self.lowered.products_read_broadcasts,
        }
    }

    /// Checks, before anything is allocated, that each input, parameter and
    /// output, and all of them together, fit in the host memory available
    /// (on the CPU plugin the devices' memory is the host's; an input given
    /// or filled at random, and each result, are host tensors too).
    pub fn check_host_memory(&self) -> Result<(), Error> {
        let n_inputs = self.module.inputs().len();
        let args = self
            .lowered
            .args
            .iter()
            .enumerate()
            .map(|(i, a)| (if i < n_inputs { "input" } else { "parameter" }, a.name.as_str(), &a.ty));
        let outputs = self.lowered.outputs.iter().map(|(n, t)| ("output", n.as_str(), t));
        let mut total = 0u64;
        let memory = |e| Error::Memory { model: self.path.clone(), source: e };
        let available = memory::Available::now();
        for (kind, name, ty) in args.chain(outputs) {
            available.check_fits(&format!("{kind} `{name}` ({ty})"), ty.size_bytes()).map_err(memory)?;
            total = total.saturating_add(ty.size_bytes());
        }
        available.check_fits("the program's inputs, parameters and outputs together", total).map_err(memory)
    }

    /// What its time goes to, for the choice of a CPU plugin: its largest
    /// matrix product's rows and type ([`xlac_compiler::plan::largest_product`]);
    /// a program without one counts as [`Workload::Dense`].
    pub fn workload(&self) -> Workload {
        let largest = xlac_compiler::plan::largest_product(&self.module);
        largest.map_or(Workload::Dense, |p| Workload::of_products(p.rows, p.low_precision))
    }

    /// How many devices the program runs on (its mesh's, else 1), without building the [`Program`].
    pub fn num_partitions(&self) -> u32 {
        self.lowered.partitioning.as_ref().map_or(1, |p| p.mesh.devices() as u32)
    }

    /// The specs of the model inputs (the program's first arguments, before the parameters).
    pub fn input_specs(&self) -> Vec<TensorSpec> {
        self.lowered.args.iter().take(self.module.inputs().len()).map(|a| spec(&a.name, &a.ty)).collect()
    }
}

/// A plugin, a client and a compilation cache to compile and run models with.
pub struct Session {
    pub plugin: Plugin,
    pub client: Client,
    pub cache: CompilationCache,
}

impl Session {
    /// A session on `platform`'s plugin (found as [`xlac_runtime::calibration::discover`]
    /// does: the one given, else the fastest of those installed at f32
    /// products of a few rows as calibrated, else the first; a caller that
    /// knows its program's workload passes the plugin for it).
    pub fn new(
        platform: Platform,
        plugin: Option<&Path>,
        options: &ClientOptions,
        cache: &CacheConfig,
    ) -> Result<Session, Error> {
        let plugin = xlac_runtime::calibration::discover(platform, plugin, Workload::Dense)?;
        let client = Client::new(&plugin, options)?;
        let cache = CompilationCache::new(cache)?;
        Ok(Session { plugin, client, cache })
    }

    /// A session on the CPU plugin with default options and the default cache.
    pub fn cpu(plugin: Option<&Path>) -> Result<Session, Error> {
        Session::new(Platform::Cpu, plugin, &ClientOptions::default(), &CacheConfig::from_env())
    }

    /// The executable of a lowered model, from the cache or compiled by XLA.
    /// A program XLA rejects names the IR node whose lowering produced the line
    /// XLA points at.
    pub fn compile(&self, model: &CompiledModel) -> Result<(Arc<Executable>, CacheOutcome), Error> {
        let program = model.program();
        self.cache.get_or_compile(&self.client, &program, &program.compile_options()).map_err(|source| match source {
            xlac_runtime::Error::Pjrt { call: "PJRT_Client_Compile", .. } => {
                let line = error_line(&source.to_string());
                let node = line.and_then(|l| model.lowered.node_at_line(l)).map(str::to_string);
                Error::Xla { model: model.path.clone(), node, source }
            }
            other => Error::Runtime(other),
        })
    }

    /// Compiles (or finds in the cache) and runs `model`. Inputs not in
    /// `given` are filled from a generator seeded by `seed` (see
    /// [`HostTensor::random`]); parameters come from their weight files
    /// (memory-mapped) or inline values. Returns the outputs by name, in order.
    pub fn run(
        &self,
        model: &CompiledModel,
        given: &BTreeMap<String, HostTensor>,
        seed: u64,
    ) -> Result<Vec<(String, HostTensor)>, Error> {
        self.load(model, &mut |_| {})?.0.run(given, seed)
    }

    /// Compiles (or finds in the cache) `model` and uploads its weights, both
    /// at once: the weights go to the devices the program will run on while
    /// XLA compiles or the cache deserializes, reporting after each tensor.
    pub fn load(
        &self,
        model: &CompiledModel,
        progress: &mut dyn FnMut(&LoadProgress),
    ) -> Result<(DeviceModel, CacheOutcome), Error> {
        model.check_host_memory()?;
        let program = model.program();
        let devices = program.default_devices();
        let (compiled, uploaded) = std::thread::scope(|s| {
            let compiling = s.spawn(|| self.compile(model));
            let partitioning = program.partitioning_or_single();
            let uploaded = upload_parameters(&self.client, model, &partitioning, &devices, progress);
            (compiling.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)), uploaded)
        });
        let (exe, outcome) = compiled?;
        let device = if exe.devices() == devices {
            DeviceModel::new(exe, model, uploaded?)
        } else {
            // Not where PJRT puts a program by default: upload again, where it runs.
            drop(uploaded);
            DeviceModel::upload(exe, model, progress)?
        };
        Ok((device, outcome))
    }

    /// Loads an artifact (its AOT executable, the cache, or a compile) and runs
    /// it, filling inputs as [`Session::run`] does.
    pub fn run_artifact(
        &self,
        artifact: &Artifact,
        given: &BTreeMap<String, HostTensor>,
        seed: u64,
    ) -> Result<(Vec<(String, HostTensor)>, LoadOutcome), Error> {
        let loaded = artifact.load(&self.client, &self.cache)?;
        let inputs = input_values(artifact.path(), artifact.inputs(), given, seed)?;
        let refs: Vec<TensorRef<'_>> = inputs.iter().map(HostTensor::as_ref).collect();
        let outputs = loaded.run(&refs)?;
        let names = artifact.outputs().iter().map(|s| s.name.clone());
        Ok((names.zip(outputs).collect(), loaded.outcome))
    }

    /// Writes `model` as a self-contained artifact, with an AOT executable for
    /// this session's plugin and devices when `aot`.
    pub fn write_artifact(&self, model: &CompiledModel, path: &Path, aot: bool) -> Result<(), Error> {
        let executable = if aot {
            let (exe, _) = self.compile(model)?;
            let program = model.program();
            let key = self.cache.key(&self.client, &program, &program.compile_options())?;
            Some((exe.serialize()?, key))
        } else {
            None
        };
        write_artifact(model, path, executable)
    }
}

/// How far the upload of a model's weights has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadProgress {
    pub tensors: usize,
    pub total_tensors: usize,
    pub bytes: u64,
    pub total_bytes: u64,
}

/// A compiled model ready on its devices: the executable, and its weights
/// uploaded once, streamed tensor by tensor from their memory maps (each
/// tensor's pages released once it is on the device, so loading needs about
/// the checkpoint's size in host memory). Runs upload only the inputs.
pub struct DeviceModel {
    exe: Arc<Executable>,
    params: Arc<Vec<ShardedBuffer>>,
    /// What each parameter holds, to tell when another program reads the same weights.
    sources: Vec<(ParamSource, TensorType)>,
    path: PathBuf,
    inputs: Vec<TensorSpec>,
    outputs: Vec<String>,
}

impl DeviceModel {
    /// Uploads `model`'s weights for `exe` (compiled from it), reporting after each tensor.
    pub fn upload(
        exe: Arc<Executable>,
        model: &CompiledModel,
        progress: &mut dyn FnMut(&LoadProgress),
    ) -> Result<DeviceModel, Error> {
        let params = upload_parameters(exe.client(), model, exe.partitioning(), exe.devices(), progress)?;
        Ok(DeviceModel::new(exe, model, params))
    }

    fn new(exe: Arc<Executable>, model: &CompiledModel, params: Vec<ShardedBuffer>) -> DeviceModel {
        DeviceModel::with_params(exe, model, Arc::new(params))
    }

    fn with_params(exe: Arc<Executable>, model: &CompiledModel, params: Arc<Vec<ShardedBuffer>>) -> DeviceModel {
        let m = &model.module;
        DeviceModel {
            exe,
            params,
            sources: m.params().iter().map(|p| (p.source.clone(), m.value(p.value).ty.clone())).collect(),
            path: model.path.clone(),
            inputs: model.input_specs(),
            outputs: model.lowered.outputs.iter().map(|(n, _)| n.clone()).collect(),
        }
    }

    /// `model` loaded on `exe` (compiled from it) reading the weights this
    /// model uploaded, without a second copy: for programs of one model at
    /// other shapes (a generation's prefill and decode steps). Their
    /// parameters (sources, views, types) and devices must be this model's.
    pub fn sharing_weights(&self, exe: Arc<Executable>, model: &CompiledModel) -> Result<DeviceModel, Error> {
        let other = DeviceModel::with_params(exe, model, self.params.clone());
        let split = |d: &DeviceModel| d.exe.partitioning().inputs[d.inputs.len()..].to_vec();
        if other.sources != self.sources || other.exe.devices() != self.exe.devices() || split(&other) != split(self) {
            return Err(Error::Input {
                model: model.path.clone(),
                name: "parameters".into(),
                message: "this program reads other weights, or places them otherwise on the devices, than the \
                          loaded model whose weights it would share"
                    .into(),
            });
        }
        Ok(other)
    }

    /// The executable.
    pub fn executable(&self) -> &Executable {
        &self.exe
    }

    /// The model inputs it takes, in argument order (the weights follow them).
    pub fn input_specs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    /// Its outputs' names, in order.
    pub fn output_names(&self) -> &[String] {
        &self.outputs
    }

    /// Uploads the inputs: given ones (checked, converted) and seeded random ones for the rest.
    pub fn upload_inputs(&self, given: &BTreeMap<String, HostTensor>, seed: u64) -> Result<Vec<ShardedBuffer>, Error> {
        let values = input_values(&self.path, &self.inputs, given, seed)?;
        Ok(values.iter().enumerate().map(|(i, v)| self.exe.upload_argument(i, v.as_ref())).collect::<Result<_, _>>()?)
    }

    /// Executes on uploaded inputs; the outputs stay on the devices.
    pub fn execute(&self, inputs: &[ShardedBuffer]) -> Result<Vec<ShardedBuffer>, Error> {
        let args: Vec<&ShardedBuffer> = inputs.iter().chain(self.params.iter()).collect();
        Ok(self.exe.execute_sharded(&args)?)
    }

    /// Executes on uploaded inputs that it consumes: the program may donate
    /// them (a training step updates its weights in place); the weights
    /// uploaded with the model are lent.
    pub fn execute_consuming(&self, inputs: Vec<ShardedBuffer>) -> Result<Vec<ShardedBuffer>, Error> {
        let donated = |i: usize| self.exe.donations().iter().any(|&(d, _)| d == i);
        let mut kept: Vec<Option<ShardedBuffer>> = inputs.into_iter().map(Some).collect();
        let mut given: Vec<Option<ShardedBuffer>> =
            (0..kept.len()).map(|i| if donated(i) { kept[i].take() } else { None }).collect();
        let mut args = Vec::with_capacity(kept.len());
        for (i, slot) in kept.iter().enumerate() {
            args.push(match (given[i].take(), slot) {
                (Some(b), _) => Arg::Give(b),
                (None, Some(b)) => Arg::Lend(b),
                (None, None) => unreachable!("each input is given or kept"),
            });
        }
        self.execute_args(args)
    }

    /// Executes on uploaded inputs, each lent or (where the program donates
    /// it) given; the weights uploaded with the model are lent.
    pub fn execute_args<'a>(&'a self, mut args: Vec<Arg<'a>>) -> Result<Vec<ShardedBuffer>, Error> {
        args.extend(self.params.iter().map(Arg::Lend));
        Ok(self.exe.execute_donating(args)?)
    }

    /// Runs on host inputs (as [`Session::run`] fills them); returns the outputs by name, in order.
    pub fn run(&self, given: &BTreeMap<String, HostTensor>, seed: u64) -> Result<Vec<(String, HostTensor)>, Error> {
        let outputs = self.execute_consuming(self.upload_inputs(given, seed)?)?;
        let hosts = outputs.iter().map(ShardedBuffer::to_host).collect::<Result<Vec<_>, _>>()?;
        Ok(self.outputs.iter().cloned().zip(hosts).collect())
    }
}

/// Uploads `model`'s weights onto `devices`, split as `partitioning` says,
/// streamed from their memory maps (each tensor's pages released once it is
/// on the device), reporting after each tensor.
fn upload_parameters(
    client: &Client,
    model: &CompiledModel,
    partitioning: &Partitioning,
    devices: &[usize],
    progress: &mut dyn FnMut(&LoadProgress),
) -> Result<Vec<ShardedBuffer>, Error> {
    let params = Parameters::load(model)?;
    let n_inputs = model.module.inputs().len();
    let specs = &model.lowered.args[n_inputs..];
    let size = |t: &TensorType| t.num_elements() * t.dtype.size_bytes() as u64;
    let mut done = LoadProgress {
        tensors: 0,
        total_tensors: specs.len(),
        bytes: 0,
        total_bytes: specs.iter().map(|a| size(&a.ty)).sum(),
    };
    let mut uploaded = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let sharding = &partitioning.inputs[n_inputs + i];
        let value = params.value(i)?;
        uploaded.push(ShardedBuffer::upload(
            client,
            &spec.name,
            value.as_ref()?,
            sharding,
            &partitioning.mesh,
            devices,
        )?);
        drop(value);
        params.release(i)?;
        done.tensors += 1;
        done.bytes += size(&spec.ty);
        progress(&done);
    }
    Ok(uploaded)
}

/// Writes `model` as an artifact without an AOT executable (no plugin needed).
pub fn write_artifact(
    model: &CompiledModel,
    path: &Path,
    executable: Option<(Vec<u8>, CacheKey)>,
) -> Result<(), Error> {
    let params = Parameters::load(model)?;
    let values = params.values()?;
    let refs = values.iter().map(ParamValue::as_ref).collect::<Result<Vec<_>, _>>()?;
    let program = model.program();
    let n_inputs = model.module.inputs().len();
    let parts = ArtifactParts {
        name: model.module.name.clone(),
        stablehlo: program.mlir,
        inputs: program.inputs[..n_inputs].to_vec(),
        params: program.inputs[n_inputs..].iter().cloned().zip(refs).collect(),
        outputs: program.outputs,
        executable,
        partitioning: program.partitioning,
        xla_flags: program.xla_flags,
        products_read_broadcasts: program.products_read_broadcasts,
        workload: model.workload(),
    };
    Ok(artifact::write(path, &parts)?)
}

/// Runs `model` on the reference interpreter (no plugin needed), with inputs
/// and parameters gathered as [`Session::run`] does.
pub fn eval_model(
    model: &CompiledModel,
    given: &BTreeMap<String, HostTensor>,
    seed: u64,
) -> Result<Vec<(String, HostTensor)>, Error> {
    // The interpreter holds every value at once, as f64 or i64.
    let m = &model.module;
    let values = m.inputs().iter().copied().chain(m.params().iter().map(|p| p.value));
    let available = memory::Available::now();
    for v in values.chain(m.order().iter().map(|&n| m.node(n).output)).map(|v| m.value(v)) {
        available
            .check_fits(
                &format!("value `{}` ({}, 8 bytes per element in the interpreter)", v.name, v.ty),
                v.ty.num_elements().saturating_mul(8),
            )
            .map_err(|e| Error::Memory { model: model.path.clone(), source: e })?;
    }
    let outputs = interp::eval(m, &interp_args(model, given, seed)?)?;
    let names = model.lowered.outputs.iter().map(|(n, _)| n.clone());
    names
        .zip(outputs)
        .map(|(name, t)| {
            let shape = t.shape().iter().map(|&d| d as usize).collect();
            Ok((name, HostTensor::new(t.dtype, shape, t.to_le_bytes())?))
        })
        .collect()
}

/// The interpreter's arguments of `model`: inputs (given or random) and parameters.
pub(crate) fn interp_args(
    model: &CompiledModel,
    given: &BTreeMap<String, HostTensor>,
    seed: u64,
) -> Result<Vec<Tensor>, Error> {
    let inputs = input_values(&model.path, &model.input_specs(), given, seed)?;
    let params = Parameters::load(model)?;
    let values = params.values()?;
    let refs = values.iter().map(ParamValue::as_ref).collect::<Result<Vec<_>, _>>()?;
    inputs
        .iter()
        .map(HostTensor::as_ref)
        .chain(refs)
        .zip(&model.lowered.args)
        .map(|(r, spec)| {
            Tensor::from_le_bytes(spec.ty.dtype, &spec.ty.shape, &r.dense_bytes()).map_err(|message| Error::Input {
                model: model.path.clone(),
                name: spec.name.clone(),
                message,
            })
        })
        .collect()
}

/// The input values for `specs`: given ones (checked, converted) and seeded
/// random ones for the rest. `origin` names the model in errors.
pub fn input_values(
    origin: &Path,
    specs: &[TensorSpec],
    given: &BTreeMap<String, HostTensor>,
    seed: u64,
) -> Result<Vec<HostTensor>, Error> {
    let input_error = |name: &str, message: String| Error::Input { model: origin.into(), name: name.into(), message };
    if let Some(extra) = given.keys().find(|k| !specs.iter().any(|s| &s.name == *k)) {
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        return Err(input_error(extra, format!("the model has no such input (inputs: {})", names.join(", "))));
    }
    specs
        .iter()
        .enumerate()
        .map(|(i, want)| match given.get(&want.name) {
            Some(t) => convert_input(t, want).map_err(|m| input_error(&want.name, m)),
            None => Ok(HostTensor::random(want.ty, &want.shape, seed.wrapping_add(i as u64))?),
        })
        .collect()
}

/// A model's parameter values: inline ones converted, file ones read from
/// their memory maps one tensor at a time (see [`Parameters::value`]).
pub struct Parameters {
    sources: Vec<Source>,
    weights: WeightFiles,
}

/// Where one parameter's value comes from.
enum Source {
    Inline(HostTensor),
    /// A weight file's tensor, read with its dimensions permuted and its
    /// floats rounded to another type when the IR says so.
    File {
        path: PathBuf,
        tensor: String,
        view: WeightView,
    },
}

/// One parameter's value: bytes borrowed from its weight file's map or
/// inline data, or (rounded to another float type) bytes of its own; dense,
/// or strided for a transposed view.
pub struct ParamValue<'a>(Laid<'a>);

impl ParamValue<'_> {
    /// The value as a tensor to upload.
    pub fn as_ref(&self) -> Result<TensorRef<'_>, Error> {
        let v = &self.0;
        Ok(match &v.byte_strides {
            None => TensorRef::new(v.dtype, &v.shape, &v.bytes)?,
            Some(strides) => TensorRef::strided(v.dtype, &v.shape, &v.bytes, strides)?,
        })
    }
}

impl Parameters {
    /// Opens the weight files and converts the inline values of `model`'s parameters.
    pub fn load(model: &CompiledModel) -> Result<Self, Error> {
        let m = &model.module;
        Parameters::of(m.params().iter().map(|p| (&p.source, &m.value(p.value).ty)))
    }

    /// Opens the weight files and converts the inline values of `sources` (each with its parameter's type).
    pub fn of<'a>(sources: impl IntoIterator<Item = (&'a ParamSource, &'a TensorType)>) -> Result<Self, Error> {
        let mut p = Parameters { sources: Vec::new(), weights: WeightFiles::new() };
        for (source, ty) in sources {
            p.sources.push(match source {
                ParamSource::Inline(data) => {
                    let s = spec("", ty);
                    Source::Inline(HostTensor::new(s.ty, s.shape, data.to_le_bytes(ty.dtype))?)
                }
                ParamSource::File { path, tensor, view } => {
                    p.weights.open(path)?;
                    Source::File { path: path.clone(), tensor: tensor.clone(), view: view.clone() }
                }
            });
        }
        Ok(p)
    }

    /// Parameter `i`'s value. A converted view is rounded here, into a buffer
    /// that lives as long as the value: upload it, drop it, take the next.
    pub fn value(&self, i: usize) -> Result<ParamValue<'_>, Error> {
        let (path, tensor, view) = match &self.sources[i] {
            Source::Inline(t) => {
                let bytes = std::borrow::Cow::Borrowed(t.data());
                let shape = t.shape().to_vec();
                return Ok(ParamValue(Laid { dtype: t.element_type(), shape, bytes, byte_strides: None }));
            }
            Source::File { path, tensor, view } => (path, tensor, view),
        };
        let stored = self.weights.get(path)?.tensor(tensor)?;
        // The file may have changed since the model was compiled.
        let laid = view.layout(stored.ty, stored.shape, stored.data).map_err(|e| xlac_runtime::Error::Format {
            path: path.clone(),
            message: format!("tensor `{tensor}`: {e}"),
        })?;
        Ok(ParamValue(laid))
    }

    /// Every parameter's value, in program order.
    pub fn values(&self) -> Result<Vec<ParamValue<'_>>, Error> {
        (0..self.sources.len()).map(|i| self.value(i)).collect()
    }

    /// Releases parameter `i`'s memory-mapped pages once it was uploaded (inline ones stay).
    pub fn release(&self, i: usize) -> Result<(), Error> {
        if let Some(Source::File { path, tensor, .. }) = self.sources.get(i) {
            self.weights.get(path)?.release(tensor)?;
        }
        Ok(())
    }
}

/// Checks a given input against its declaration. A float32 array is accepted
/// for a bf16 input (NumPy has no bf16) and rounded to nearest even.
fn convert_input(t: &HostTensor, want: &TensorSpec) -> Result<HostTensor, String> {
    if t.shape() != want.shape.as_slice() {
        return Err(format!("expected shape {:?}, found {:?}", want.shape, t.shape()));
    }
    match (t.element_type(), want.ty) {
        (have, w) if have == w => Ok(t.clone()),
        (DType::F32, DType::BF16) => {
            let data = t.to_f64_vec().into_iter().flat_map(|x| half::bf16::from_f64(x).to_le_bytes()).collect();
            HostTensor::new(DType::BF16, want.shape.clone(), data).map_err(|e| e.to_string())
        }
        (have, w) => Err(format!("expected dtype {w}, found {have}")),
    }
}

/// The line number in an MLIR diagnostic such as `-:12:5: error: …` or `loc("-":12:5)`.
fn error_line(message: &str) -> Option<usize> {
    message.char_indices().find_map(|(i, _)| {
        let rest = &message[i..];
        let rest = rest.strip_prefix("-:").or_else(|| rest.strip_prefix("\"-\":"))?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if rest[digits.len()..].starts_with(':') {
            digits.parse().ok()
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_line_of_an_mlir_error() {
        assert_eq!(error_line("UNKNOWN: -:12:5: error: bad op"), Some(12));
        assert_eq!(error_line("at loc(\"-\":3:7): oops"), Some(3));
        assert_eq!(error_line("no position here"), None);
        assert_eq!(error_line("ünïcödé → -:7:1: fehlgeschlagen"), Some(7), "non-ASCII text around the position");
        assert_eq!(error_line("-:"), None);
    }
}
