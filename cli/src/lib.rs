//! The xlac driver: model.json to results, joining the compiler and the
//! runtime. The `xlac` binary is argument parsing on top of this; a Rust
//! program can do everything the binary does through it.
//!
//! ```no_run
//! use std::collections::BTreeMap;
//! # fn main() -> Result<(), xlac::Error> {
//! let model = xlac::compile_model("fixtures/mlp/model.json".as_ref(), &BTreeMap::new(), &BTreeMap::new())?;
//! let session = xlac::Session::cpu(None)?;
//! let outputs = session.run(&model, &BTreeMap::new(), 0)?;
//! for (name, tensor) in &outputs {
//!     println!("{name}: {}", tensor.summary());
//! }
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use xlac_compiler::format::{Bindings, ModelFile};
use xlac_compiler::ir::{Module, ParamSource};
use xlac_compiler::lower::{lower, Lowered};
use xlac_compiler::verify::verify;
use xlac_compiler::{DType, TensorType};
use xlac_runtime::weights::WeightFiles;
use xlac_runtime::{
    Client, ClientOptions, CompileOptions, ElementType, Executable, HostTensor, Platform, Plugin, Program, TensorRef,
    TensorSpec,
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
    /// An input given to `run` does not fit the model.
    #[error("{model}: input `{name}`: {message}")]
    Input { model: PathBuf, name: String, message: String },
}

/// A model compiled to StableHLO: the IR and its lowering.
pub struct CompiledModel {
    pub path: PathBuf,
    pub bindings: Bindings,
    pub module: Module,
    pub lowered: Lowered,
}

/// Reads, binds, builds, verifies and lowers a model. Symbols are bound by
/// `bindings`, completed from the shapes of `given` inputs.
pub fn compile_model(
    path: &Path,
    bindings: &Bindings,
    given: &BTreeMap<String, HostTensor>,
) -> Result<CompiledModel, Error> {
    let file = ModelFile::load(path)?;
    let shapes = given.iter().map(|(k, v)| (k.clone(), v.shape().iter().map(|&d| d as u64).collect())).collect();
    let bindings = file.bind_from_shapes(bindings, &shapes)?;
    let module = file.build(&bindings)?;
    verify(&module, &path.display().to_string())?;
    let lowered = lower(&module);
    Ok(CompiledModel { path: path.into(), bindings, module, lowered })
}

/// The runtime element type of a compiler dtype (the two crates do not depend on each other).
pub fn element_type(d: DType) -> ElementType {
    ElementType::from_name(d.name()).expect("every compiler dtype has a runtime element type")
}

fn spec(name: &str, ty: &TensorType) -> TensorSpec {
    TensorSpec { name: name.into(), ty: element_type(ty.dtype), shape: ty.shape.iter().map(|&d| d as usize).collect() }
}

impl CompiledModel {
    /// The runtime program: StableHLO text and signature.
    pub fn program(&self) -> Program {
        Program {
            mlir: self.lowered.text.clone(),
            inputs: self.lowered.args.iter().map(|a| spec(&a.name, &a.ty)).collect(),
            outputs: self.lowered.outputs.iter().map(|(n, t)| spec(n, t)).collect(),
        }
    }
}

/// A plugin and a client to compile and run models on.
pub struct Session {
    pub plugin: Plugin,
    pub client: Client,
}

impl Session {
    /// A session on `platform`'s plugin (found as [`Plugin::discover`] does).
    pub fn new(platform: Platform, plugin: Option<&Path>, options: &ClientOptions) -> Result<Session, Error> {
        let plugin = Plugin::discover(platform, plugin)?;
        let client = Client::new(&plugin, options)?;
        Ok(Session { plugin, client })
    }

    /// A session on the CPU plugin with default options.
    pub fn cpu(plugin: Option<&Path>) -> Result<Session, Error> {
        Session::new(Platform::Cpu, plugin, &ClientOptions::default())
    }

    /// Compiles a lowered model with XLA. A rejected program names the IR node
    /// whose lowering produced the line XLA points at.
    pub fn compile(&self, model: &CompiledModel) -> Result<Executable, Error> {
        self.client.compile(&model.program(), &CompileOptions::default()).map_err(|source| {
            let node = error_line(&source.to_string()).and_then(|l| model.lowered.node_at_line(l)).map(str::to_string);
            Error::Xla { model: model.path.clone(), node, source }
        })
    }

    /// Compiles and runs `model`. Inputs not in `given` are filled with values
    /// from a generator seeded by `seed` (see [`HostTensor::random`]);
    /// parameters come from their weight files (memory-mapped) or inline values.
    /// Returns the outputs by name, in the model's order.
    pub fn run(
        &self,
        model: &CompiledModel,
        given: &BTreeMap<String, HostTensor>,
        seed: u64,
    ) -> Result<Vec<(String, HostTensor)>, Error> {
        let exe = self.compile(model)?;
        run_executable(&exe, model, given, seed)
    }
}

/// Runs an already compiled model (see [`Session::run`]).
pub fn run_executable(
    exe: &Executable,
    model: &CompiledModel,
    given: &BTreeMap<String, HostTensor>,
    seed: u64,
) -> Result<Vec<(String, HostTensor)>, Error> {
    let args = Arguments::gather(model, given, seed)?;
    let outputs = exe.run(&args.refs()?)?;
    Ok(model.lowered.outputs.iter().map(|(n, _)| n.clone()).zip(outputs).collect())
}

/// The argument values of one run: inputs, then parameters.
pub struct Arguments {
    inputs: Vec<HostTensor>,
    inline: Vec<Option<HostTensor>>,
    files: Vec<Option<(PathBuf, String)>>,
    weights: WeightFiles,
}

impl Arguments {
    /// Collects inputs (given, converted or random) and parameters for `model`.
    pub fn gather(model: &CompiledModel, given: &BTreeMap<String, HostTensor>, seed: u64) -> Result<Self, Error> {
        let m = &model.module;
        let declared: Vec<&str> = m.inputs().iter().map(|&v| m.value(v).name.as_str()).collect();
        if let Some(extra) = given.keys().find(|k| !declared.contains(&k.as_str())) {
            return Err(Error::Input {
                model: model.path.clone(),
                name: extra.clone(),
                message: format!("the model has no such input (inputs: {})", declared.join(", ")),
            });
        }
        let mut inputs = Vec::new();
        for (i, &v) in m.inputs().iter().enumerate() {
            let data = m.value(v);
            let want = spec(&data.name, &data.ty);
            let t = match given.get(&data.name) {
                Some(t) => convert_input(t, &want).map_err(|message| Error::Input {
                    model: model.path.clone(),
                    name: data.name.clone(),
                    message,
                })?,
                None => HostTensor::random(want.ty, &want.shape, seed.wrapping_add(i as u64))?,
            };
            inputs.push(t);
        }
        let mut inline = Vec::new();
        let mut files = Vec::new();
        let mut weights = WeightFiles::new();
        for p in m.params() {
            let ty = &m.value(p.value).ty;
            match &p.source {
                ParamSource::Inline(data) => {
                    let s = spec("", ty);
                    inline.push(Some(HostTensor::new(s.ty, s.shape, data.to_le_bytes(ty.dtype))?));
                    files.push(None);
                }
                ParamSource::File { path, tensor } => {
                    weights.open(path)?;
                    inline.push(None);
                    files.push(Some((path.clone(), tensor.clone())));
                }
            }
        }
        Ok(Arguments { inputs, inline, files, weights })
    }

    /// Views of every argument, in program order.
    pub fn refs(&self) -> Result<Vec<TensorRef<'_>>, Error> {
        let mut out: Vec<TensorRef<'_>> = self.inputs.iter().map(HostTensor::as_ref).collect();
        for (inline, file) in self.inline.iter().zip(&self.files) {
            match (inline, file) {
                (Some(t), _) => out.push(t.as_ref()),
                (None, Some((path, tensor))) => out.push(self.weights.get(path)?.tensor(tensor)?),
                (None, None) => unreachable!("each parameter is inline or in a file"),
            }
        }
        Ok(out)
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
        (ElementType::F32, ElementType::BF16) => {
            let data = t.to_f64_vec().into_iter().flat_map(|x| half::bf16::from_f64(x).to_le_bytes()).collect();
            HostTensor::new(ElementType::BF16, want.shape.clone(), data).map_err(|e| e.to_string())
        }
        (have, w) => Err(format!("expected dtype {w}, found {have}")),
    }
}

/// The line number in an MLIR diagnostic such as `-:12:5: error: …` or `loc("-":12:5)`.
fn error_line(message: &str) -> Option<usize> {
    let bytes = message.as_bytes();
    (0..bytes.len()).find_map(|i| {
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
    }
}
