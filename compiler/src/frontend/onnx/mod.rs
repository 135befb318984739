//! ONNX models (`.onnx`, opsets 6–28 of the default domain) become model
//! documents: each ONNX node becomes the xlac ops of its semantics (see
//! `ops.rs`), initializers become parameters in a safetensors file (or
//! inline constants when small), and shape computations (`Shape`, `Gather`,
//! `Concat`, ... on shapes, as PyTorch's exporter writes them) fold away at
//! import, symbolically where a dimension is a symbol.
//!
//! Everything the importer cannot translate (operator, opset, element type,
//! attribute) is listed in one [`Error::Unsupported`], never a silent wrong
//! result.

mod attention;
mod einsum;
mod fold;
mod loss;
mod ops;
mod proto;
mod resize;
mod tensor;
mod window;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use prost::Message;
use serde_json::{json, Value as Json};
use xlac_core::DType;

use self::proto::{DimensionValue, GraphProto, ModelProto, NodeProto, ValueInfoProto};
use self::tensor::{Dim, Elem, Known};
use super::json::ModelFile;
use crate::error::{Diagnostic, Error};

/// The default domain's opsets the importer reads.
pub const OPSETS: std::ops::RangeInclusive<i64> = 6..=28;

/// True for a path xlac reads as ONNX: a file named `*.onnx`.
pub fn is_onnx(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "onnx") && !path.is_dir()
}

/// A host tensor read from an ONNX `TensorProto` file (the conformance
/// suite's `input_0.pb`), or given for an input: its type, shape and
/// little-endian bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorFile {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub data: Vec<u8>,
}

/// Reads a serialized `TensorProto` (`.pb`).
pub fn read_tensor(path: &Path) -> Result<TensorFile, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Read { path: path.into(), source })?;
    let t = proto::TensorProto::decode(bytes.as_slice())
        .map_err(|e| invalid(path, "$", format!("not a TensorProto: {e}")))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let k = tensor::from_proto(&t, dir).map_err(|m| {
        let d = vec![Diagnostic::new(format!("tensor `{}`", t.name), m.clone())];
        if m.starts_with("unsupported") {
            Error::Unsupported { origin: path.display().to_string(), diagnostics: d }
        } else {
            Error::Invalid { origin: path.display().to_string(), diagnostics: d }
        }
    })?;
    let data = k.bytes().expect("a tensor read from a file has no symbols");
    Ok(TensorFile { name: t.name, dtype: k.dtype, shape: k.shape, data })
}

/// The names of the graph's inputs (initializers excluded), in order.
pub fn input_names(path: &Path) -> Result<Vec<String>, Error> {
    let model = read_model(path)?;
    let graph = model.graph.unwrap_or_default();
    let inits: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    Ok(graph.input.iter().filter(|i| !inits.contains(i.name.as_str())).map(|i| value_name(&i.name)).collect())
}

/// The operator types of the model's graph, each once, in order of first use.
pub fn operators(path: &Path) -> Result<Vec<String>, Error> {
    let mut ops: Vec<String> = Vec::new();
    for n in read_model(path)?.graph.unwrap_or_default().node {
        if !ops.contains(&n.op_type) {
            ops.push(n.op_type);
        }
    }
    Ok(ops)
}

/// Whether the importer translates operator `op` of the default domain (at
/// some opset, with some attributes and element types).
pub fn translates(op: &str) -> bool {
    ops::SUPPORTED.contains(&op)
}

/// Imports the ONNX model at `path` as a model.json document whose large
/// initializers are written to the safetensors file `weights` (named in the
/// document as `weights_ref`). Symbols in `bindings`, and the dimensions of
/// inputs given in `shapes`, are substituted before translating, so the
/// shape computations that depend on them fold to sizes; an input the
/// translation needs the value of (axes, a shape, pads) is read from `values`.
pub fn import(
    path: &Path,
    weights: &Path,
    weights_ref: &str,
    bindings: &BTreeMap<String, u64>,
    shapes: &BTreeMap<String, Vec<u64>>,
    values: &BTreeMap<String, TensorFile>,
) -> Result<Json, Error> {
    let given = Given { bindings, shapes, values };
    translate(path, &read_model(path)?, WeightsFile::At { path: weights, name: weights_ref }, &given)
}

/// Imports the ONNX model at `path` for compiling it directly (`xlac run
/// model.onnx`): bound as [`import`] binds; its weights written under the
/// system's temporary directory in a file named by their content (a later
/// import that translates to the same weights finds them there).
pub fn load(
    path: &Path,
    bindings: &BTreeMap<String, u64>,
    shapes: &BTreeMap<String, Vec<u64>>,
    values: &BTreeMap<String, TensorFile>,
) -> Result<ModelFile, Error> {
    let given = Given { bindings, shapes, values };
    let doc = translate(path, &read_model(path)?, WeightsFile::ByContent, &given)?;
    ModelFile::from_json(doc, path)
}

/// What the caller gives an import: symbol sizes, input shapes, input values.
struct Given<'a> {
    bindings: &'a BTreeMap<String, u64>,
    shapes: &'a BTreeMap<String, Vec<u64>>,
    values: &'a BTreeMap<String, TensorFile>,
}

/// Where an import writes its weights.
enum WeightsFile<'a> {
    /// This file, rewritten, named `name` in the document.
    At { path: &'a Path, name: &'a str },
    /// A file under the temporary directory named by the hash of the
    /// weights' names, types, shapes and bytes: written once, then reused.
    ByContent,
}

fn translate(path: &Path, model: &ModelProto, weights: WeightsFile, given: &Given) -> Result<Json, Error> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut im = Importer::new(path, dir, model)?;
    im.given = given.values.clone();
    let graph = model.graph.as_ref().ok_or_else(|| invalid(path, "model", "the model has no graph"))?;
    im.graph(graph, given.bindings, given.shapes)?;
    let written = std::mem::take(&mut im.weights);
    let tensors: Vec<_> = written.iter().map(|(n, d, s, b)| (n.as_str(), *d, s.as_slice(), b.as_slice())).collect();
    let (file, name, rewrite) = match weights {
        WeightsFile::At { path, name } => (path.to_path_buf(), name.to_string(), true),
        WeightsFile::ByContent => {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            for (name, dtype, shape, bytes) in &tensors {
                h.update(format!("{name}:{dtype}:{shape:?}:{}\n", bytes.len()).as_bytes());
                h.update(bytes);
            }
            let key: String = h.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect();
            let dir = std::env::temp_dir().join("xlac-onnx");
            std::fs::create_dir_all(&dir).map_err(|source| Error::Read { path: dir.clone(), source })?;
            let file = dir.join(format!("{key}.safetensors"));
            let name = file.display().to_string();
            (file, name, false)
        }
    };
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
    let doc = im.finish(stem, &name)?;
    if !tensors.is_empty() && (rewrite || !file.is_file()) {
        xlac_core::safetensors::write(&file, &tensors).map_err(|source| Error::Read { path: file.clone(), source })?;
    }
    Ok(doc)
}

fn read_model(path: &Path) -> Result<ModelProto, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Read { path: path.into(), source })?;
    decode_model(path, &bytes)
}

fn decode_model(path: &Path, bytes: &[u8]) -> Result<ModelProto, Error> {
    ModelProto::decode(bytes).map_err(|e| invalid(path, "$", format!("not an ONNX model (ModelProto): {e}")))
}

fn invalid(path: &Path, at: &str, message: impl Into<String>) -> Error {
    Error::Invalid { origin: path.display().to_string(), diagnostics: vec![Diagnostic::new(at, message)] }
}

/// Why a node could not be translated.
#[derive(Debug)]
enum Problem {
    /// ONNX allows it; xlac does not translate it (yet).
    Unsupported(String),
    /// The model is wrong (a missing input, a shape that does not fit).
    Invalid(String),
}

fn unsupported<T>(m: impl Into<String>) -> Result<T, Problem> {
    Err(Problem::Unsupported(m.into()))
}

fn bad<T>(m: impl Into<String>) -> Result<T, Problem> {
    Err(Problem::Invalid(m.into()))
}

/// A value computed at run time: its model.json name, type and dimensions.
#[derive(Clone, Debug)]
struct Rt {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<Dim>,
}

/// An ONNX value while importing.
#[derive(Clone, Debug)]
enum Val {
    Rt(Rt),
    Known(Rc<Known>),
    /// The output of a node that failed to translate: its users are skipped.
    Missing,
}

/// Known tensors up to this many elements are folded and written inline;
/// larger ones become parameters.
const INLINE: usize = 4096;

/// One node being translated: its proto, opset and which attributes it read.
struct Node<'a> {
    pub proto: &'a NodeProto,
    pub opset: i64,
    read: std::cell::RefCell<Vec<&'a str>>,
}

impl<'a> Node<'a> {
    fn attr(&self, name: &str) -> Option<&'a proto::AttributeProto> {
        let a = self.proto.attribute.iter().find(|a| a.name == name)?;
        self.read.borrow_mut().push(&a.name);
        Some(a)
    }

    /// True when the attribute is present.
    pub fn has(&self, name: &str) -> bool {
        self.attr(name).is_some()
    }

    pub fn int(&self, name: &str, default: i64) -> i64 {
        self.attr(name).map_or(default, |a| a.i)
    }

    pub fn float(&self, name: &str, default: f64) -> f64 {
        self.attr(name).map_or(default, |a| a.f as f64)
    }

    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.attr(name).map(|a| a.ints.clone())
    }

    pub fn floats(&self, name: &str) -> Option<Vec<f32>> {
        self.attr(name).map(|a| a.floats.clone())
    }

    pub fn string(&self, name: &str, default: &str) -> String {
        self.attr(name).map_or(default.to_string(), |a| String::from_utf8_lossy(&a.s).into_owned())
    }

    pub fn tensor(&self, name: &str) -> Option<&'a proto::TensorProto> {
        self.attr(name).and_then(|a| a.t.as_ref())
    }

    /// The attributes present that the translation did not read.
    fn unread(&self) -> Vec<&'a str> {
        let read = self.read.borrow();
        self.proto.attribute.iter().map(|a| a.name.as_str()).filter(|n| !read.contains(n)).collect()
    }

    /// The number of inputs given (trailing empty names do not count).
    pub fn inputs(&self) -> usize {
        self.proto.input.iter().rposition(|i| !i.is_empty()).map_or(0, |i| i + 1)
    }
}

/// The importer's state: ONNX values, the document being written, weights.
struct Importer<'m> {
    path: &'m Path,
    dir: &'m Path,
    opset: i64,
    values: HashMap<String, Val>,
    /// Known tensors already written as run-time values, by ONNX name.
    written: HashMap<String, Rt>,
    names: HashSet<String>,
    inputs: Vec<Json>,
    params: Vec<Json>,
    nodes: Vec<Json>,
    outputs: Vec<String>,
    weights: Vec<(String, DType, Vec<u64>, Vec<u8>)>,
    /// The ONNX output name the node being translated writes (names its values).
    hint: String,
    /// Values given for inputs (by model.json name), read where the translation needs a value.
    given: BTreeMap<String, TensorFile>,
    /// Graph inputs by ONNX name: their model.json names.
    input_names: HashMap<String, String>,
}

impl<'m> Importer<'m> {
    fn new(path: &'m Path, dir: &'m Path, model: &ModelProto) -> Result<Self, Error> {
        let mut opset = None;
        let mut d = Vec::new();
        for o in &model.opset_import {
            if o.domain.is_empty() || o.domain == "ai.onnx" {
                opset = Some(o.version);
            }
        }
        let opset = opset.unwrap_or(1);
        if !OPSETS.contains(&opset) {
            d.push(Diagnostic::new(
                "opset_import",
                format!(
                    "unsupported: opset {opset} of the default domain (xlac reads {}..={})",
                    OPSETS.start(),
                    OPSETS.end()
                ),
            ));
        }
        for f in &model.functions {
            d.push(Diagnostic::new(format!("function `{}`", f.name), "unsupported: model-local functions"));
        }
        if !d.is_empty() {
            return Err(Error::Unsupported { origin: path.display().to_string(), diagnostics: d });
        }
        Ok(Importer {
            path,
            dir,
            opset,
            values: HashMap::new(),
            written: HashMap::new(),
            names: HashSet::new(),
            inputs: vec![],
            params: vec![],
            nodes: vec![],
            outputs: vec![],
            weights: vec![],
            hint: String::new(),
            given: BTreeMap::new(),
            input_names: HashMap::new(),
        })
    }

    fn graph(
        &mut self,
        g: &GraphProto,
        bindings: &BTreeMap<String, u64>,
        shapes: &BTreeMap<String, Vec<u64>>,
    ) -> Result<(), Error> {
        let mut unsupported = Vec::new();
        let mut invalid = Vec::new();
        if !g.sparse_initializer.is_empty() {
            unsupported.push(Diagnostic::new("graph.sparse_initializer", "unsupported: sparse initializers"));
        }
        for t in &g.initializer {
            match tensor::from_proto(t, self.dir) {
                Ok(k) => {
                    self.values.insert(t.name.clone(), Val::Known(Rc::new(k)));
                }
                Err(m) if m.starts_with("unsupported") => {
                    unsupported.push(Diagnostic::new(format!("initializer `{}`", t.name), m));
                    self.values.insert(t.name.clone(), Val::Missing);
                }
                Err(m) => invalid.push(Diagnostic::new(format!("initializer `{}`", t.name), m)),
            }
        }
        for (i, input) in g.input.iter().enumerate() {
            if self.values.contains_key(&input.name) {
                continue; // an initializer listed among the inputs (IR version < 4)
            }
            match self.graph_input(input, bindings, shapes) {
                Ok(()) => {}
                Err(Problem::Unsupported(m)) => {
                    unsupported.push(Diagnostic::new(
                        format!("graph.input[{i}] `{}`", input.name),
                        format!("unsupported: {m}"),
                    ));
                    self.values.insert(input.name.clone(), Val::Missing);
                }
                Err(Problem::Invalid(m)) => {
                    invalid.push(Diagnostic::new(format!("graph.input[{i}] `{}`", input.name), m))
                }
            }
        }
        let mut symbols: Vec<String> = g
            .input
            .iter()
            .flat_map(|i| i.r#type.iter().flat_map(|t| t.tensor_type.iter()).flat_map(|t| t.shape.iter()))
            .flat_map(|s| s.dim.iter())
            .filter_map(|d| match &d.value {
                Some(DimensionValue::DimParam(p)) if !p.is_empty() => Some(symbol_name(p)),
                _ => None,
            })
            .collect();
        symbols.sort();
        symbols.dedup();
        for name in bindings.keys().filter(|b| !symbols.contains(b)) {
            let known = if symbols.is_empty() { "none".to_string() } else { symbols.join(", ") };
            invalid.push(Diagnostic::new(
                format!("binding `{name}`"),
                format!("the model has no such symbol (symbols: {known})"),
            ));
        }
        // Every operator the importer does not know, listed before translating any.
        let mut unknown = HashSet::new();
        for (i, n) in g.node.iter().enumerate() {
            let domain_ok = n.domain.is_empty() || n.domain == "ai.onnx";
            if !domain_ok || !translates(&n.op_type) {
                let what = if domain_ok {
                    format!("unsupported: operator {} (opset {})", n.op_type, self.opset)
                } else {
                    format!("unsupported: operator {} of domain `{}`", n.op_type, n.domain)
                };
                unknown.insert(i);
                unsupported.push(Diagnostic::new(node_place(n, i), what));
            }
        }
        if !invalid.is_empty() {
            invalid.extend(unsupported);
            return Err(Error::Invalid { origin: self.path.display().to_string(), diagnostics: invalid });
        }
        for (i, n) in g.node.iter().enumerate() {
            if unknown.contains(&i) {
                for o in &n.output {
                    self.values.insert(o.clone(), Val::Missing);
                }
                continue;
            }
            let missing =
                n.input.iter().filter(|x| !x.is_empty()).any(|x| matches!(self.values.get(x), Some(Val::Missing)));
            if missing {
                for o in &n.output {
                    self.values.insert(o.clone(), Val::Missing);
                }
                continue;
            }
            let node = Node { proto: n, opset: self.opset, read: Default::default() };
            self.hint = value_name(n.output.first().map_or(n.name.as_str(), String::as_str));
            let start = self.nodes.len();
            let result = self.translate(&node).map(|vals| self.name_result(start, vals)).and_then(|vals| {
                let unread = node.unread();
                if !unread.is_empty() {
                    return Err(Problem::Unsupported(format!("attribute(s) {} of {}", unread.join(", "), n.op_type)));
                }
                Ok(vals)
            });
            match result {
                Ok(vals) => {
                    for (k, o) in n.output.iter().enumerate() {
                        if o.is_empty() {
                            continue;
                        }
                        match vals.get(k) {
                            Some(v) => {
                                self.values.insert(o.clone(), v.clone());
                            }
                            None => {
                                unsupported.push(Diagnostic::new(
                                    node_place(n, i),
                                    format!("unsupported: output {k} (`{o}`) of {}", n.op_type),
                                ));
                                self.values.insert(o.clone(), Val::Missing);
                            }
                        }
                    }
                }
                Err(p) => {
                    let (list, m) = match p {
                        Problem::Unsupported(m) => (&mut unsupported, format!("unsupported: {m}")),
                        Problem::Invalid(m) => (&mut invalid, m),
                    };
                    list.push(Diagnostic::new(format!("{} (opset {})", node_place(n, i), self.opset), m));
                    for o in &n.output {
                        self.values.insert(o.clone(), Val::Missing);
                    }
                }
            }
        }
        for o in &g.output {
            match self.values.get(&o.name).cloned() {
                None => {
                    invalid.push(Diagnostic::new(format!("graph.output `{}`", o.name), "no node or input computes it"))
                }
                Some(Val::Missing) => {}
                Some(v) => {
                    self.hint = value_name(&o.name);
                    let rt = match self.rt(&o.name, &v) {
                        Ok(rt) => rt,
                        Err(Problem::Unsupported(m)) | Err(Problem::Invalid(m)) => {
                            invalid.push(Diagnostic::new(format!("graph.output `{}`", o.name), m));
                            continue;
                        }
                    };
                    let name = self.output_name(&o.name, rt);
                    self.outputs.push(name);
                }
            }
        }
        if !invalid.is_empty() {
            invalid.extend(unsupported);
            return Err(Error::Invalid { origin: self.path.display().to_string(), diagnostics: invalid });
        }
        if !unsupported.is_empty() {
            return Err(Error::Unsupported { origin: self.path.display().to_string(), diagnostics: unsupported });
        }
        Ok(())
    }

    fn graph_input(
        &mut self,
        input: &ValueInfoProto,
        bindings: &BTreeMap<String, u64>,
        shapes: &BTreeMap<String, Vec<u64>>,
    ) -> Result<(), Problem> {
        let Some(t) = input.r#type.as_ref().and_then(|t| t.tensor_type.as_ref()) else {
            return unsupported("an input that is not a tensor (sequence, map, optional)");
        };
        let dtype = tensor::dtype(t.elem_type).or_else(|name| unsupported(format!("element type {name}")))?;
        let name = self.fresh(&value_name(&input.name));
        let given = shapes.get(&name);
        let dims = t.shape.as_ref().map(|s| s.dim.as_slice()).unwrap_or_default();
        if let Some(g) = given {
            if g.len() != dims.len() {
                return bad(format!("given with shape {g:?}, the model declares {} dimensions", dims.len()));
            }
        }
        let mut shape = Vec::new();
        let mut json_shape = Vec::new();
        for (i, d) in dims.iter().enumerate() {
            let dim = match &d.value {
                Some(DimensionValue::DimValue(v)) if *v >= 0 => Dim::size(*v as u64),
                Some(DimensionValue::DimValue(v)) => return bad(format!("dimension {i} is {v}")),
                Some(DimensionValue::DimParam(p)) if !p.is_empty() => {
                    let s = symbol_name(p);
                    match (given, bindings.get(&s)) {
                        (Some(g), _) => Dim::size(g[i]),
                        (None, Some(&n)) => Dim::size(n),
                        _ => Dim::sym(&s),
                    }
                }
                _ => match given {
                    Some(g) => Dim::size(g[i]),
                    None => Dim::sym(&symbol_name(&format!("{name}_{i}"))),
                },
            };
            json_shape.push(dim.to_json().expect("an input's dimension is a size or one symbol"));
            shape.push(dim);
        }
        self.inputs.push(json!({"name": name, "dtype": dtype.name(), "shape": json_shape}));
        self.input_names.insert(input.name.clone(), name.clone());
        self.values.insert(input.name.clone(), Val::Rt(Rt { name, dtype, shape }));
        Ok(())
    }

    /// Gives the first result of the node just translated (whose emitted
    /// nodes start at `start`) the plain name of its ONNX output, swapping
    /// names with the intermediate value that took it.
    fn name_result(&mut self, start: usize, mut vals: Vec<Val>) -> Vec<Val> {
        let Some(Val::Rt(r)) = vals.first() else { return vals };
        let (hint, last) = (self.hint.clone(), r.name.clone());
        let made = |name: &str| self.nodes[start..].iter().any(|n| n["outputs"][0] == name);
        if last == hint || !made(&hint) || !made(&last) {
            return vals;
        }
        let swap = |v: &mut Json| {
            if *v == hint.as_str() {
                *v = last.as_str().into();
            } else if *v == last.as_str() {
                *v = hint.as_str().into();
            }
        };
        for n in &mut self.nodes[start..] {
            n["inputs"].as_array_mut().into_iter().flatten().for_each(swap);
            n["outputs"].as_array_mut().into_iter().flatten().for_each(swap);
        }
        for v in &mut vals {
            if let Val::Rt(r) = v {
                if r.name == hint {
                    r.name.clone_from(&last);
                } else if r.name == last {
                    r.name.clone_from(&hint);
                }
            }
        }
        vals
    }

    /// The document, once every node is translated.
    fn finish(&mut self, stem: &str, weights_ref: &str) -> Result<Json, Error> {
        for p in &mut self.params {
            p["file"] = weights_ref.into();
        }
        Ok(json!({
            "format_version": 1,
            "name": symbol_name(stem),
            "inputs": self.inputs,
            "parameters": self.params,
            "nodes": self.nodes,
            "outputs": self.outputs,
        }))
    }

    /// A graph output's model.json name: its ONNX name where that is free,
    /// renaming the value that computes it.
    fn output_name(&mut self, onnx: &str, rt: Rt) -> String {
        let want = value_name(onnx);
        if rt.name == want || self.names.contains(&want) {
            return rt.name;
        }
        let produced = self.nodes.iter_mut().find(|n| n["outputs"][0] == rt.name.as_str());
        match produced {
            Some(n) => {
                n["outputs"][0] = want.as_str().into();
                for n in &mut self.nodes {
                    for i in n["inputs"].as_array_mut().into_iter().flatten() {
                        if *i == rt.name.as_str() {
                            *i = want.as_str().into();
                        }
                    }
                }
                for o in &mut self.outputs {
                    if *o == rt.name {
                        o.clone_from(&want);
                    }
                }
                self.names.insert(want.clone());
                want
            }
            None => rt.name,
        }
    }

    /// A model.json name not used yet, `base` where free.
    fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 1;
        while self.names.contains(&name) {
            name = format!("{base}.{k}");
            k += 1;
        }
        self.names.insert(name.clone());
        name
    }

    /// Appends the node `op(inputs)` with `attrs`, of the given result type.
    fn emit(&mut self, op: &str, inputs: &[&Rt], attrs: Json, dtype: DType, shape: Vec<Dim>) -> Rt {
        let name = self.fresh(&self.hint.clone());
        let mut node =
            json!({"op": op, "inputs": inputs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), "outputs": [name]});
        if attrs.as_object().is_some_and(|a| !a.is_empty()) {
            node["attrs"] = attrs;
        }
        self.nodes.push(node);
        Rt { name, dtype, shape }
    }

    /// Input `i` of `n`, `None` when absent (optional inputs).
    fn input(&self, n: &Node, i: usize) -> Result<Option<Val>, Problem> {
        match n.proto.input.get(i).filter(|x| !x.is_empty()) {
            None => Ok(None),
            Some(x) => match self.values.get(x) {
                Some(v) => Ok(Some(v.clone())),
                None => bad(format!("input {i} `{x}` is not computed before this node")),
            },
        }
    }

    /// Input `i` of `n` whose value the translation needs (`what`: "axes",
    /// "the shape"): known at import, or a graph input whose value is given;
    /// `None` when absent.
    fn const_input(&self, n: &Node, i: usize, what: &str) -> Result<Option<Rc<Known>>, Problem> {
        match self.input(n, i)? {
            None => Ok(None),
            Some(Val::Known(k)) => Ok(Some(k)),
            Some(_) => {
                let onnx = &n.proto.input[i];
                let given = self.input_names.get(onnx).and_then(|name| self.given.get(name));
                match given {
                    Some(t) => {
                        let k = Known::from_bytes(t.dtype, t.shape.clone(), t.data.clone());
                        Ok(Some(Rc::new(k)))
                    }
                    None => unsupported(format!("{what} computed at run time (input {i} `{onnx}`)")),
                }
            }
        }
    }

    /// Optional input `i` of `n` as a run-time value, `None` when absent.
    fn optional_rt(&mut self, n: &Node, i: usize) -> Result<Option<Rt>, Problem> {
        match self.input(n, i)? {
            Some(_) => self.rt_input(n, i).map(Some),
            None => Ok(None),
        }
    }

    /// Input `i` of `n` as a run-time value (a known tensor written as a constant or parameter).
    fn rt_input(&mut self, n: &Node, i: usize) -> Result<Rt, Problem> {
        let v = self.input(n, i)?.map_or_else(|| bad(format!("input {i} is required")), Ok)?;
        let name = n.proto.input[i].clone();
        self.rt(&name, &v)
    }

    /// `v` (the ONNX value `onnx`) as a run-time value.
    fn rt(&mut self, onnx: &str, v: &Val) -> Result<Rt, Problem> {
        match v {
            Val::Rt(r) => Ok(r.clone()),
            Val::Missing => bad("an input that failed to translate"),
            Val::Known(k) => {
                if let Some(r) = self.written.get(onnx) {
                    return Ok(r.clone());
                }
                let hint = value_name(onnx);
                let r = self.write_known(k, &hint)?;
                self.written.insert(onnx.to_string(), r.clone());
                Ok(r)
            }
        }
    }

    /// A known tensor as a run-time value: inline when small and finite, else a parameter.
    fn write_known(&mut self, k: &Known, hint: &str) -> Result<Rt, Problem> {
        if k.has_symbols() {
            return self.write_symbolic(k, hint);
        }
        let shape = Dim::sizes(&k.shape);
        let finite = k.floats().is_some_and(|f| f.iter().all(|x| x.is_finite()));
        if k.len() <= 64 && finite {
            let value: Vec<Json> = k
                .elems()
                .iter()
                .map(|e| match e {
                    Elem::Float(f) => json!(f),
                    Elem::Int(i) if k.dtype == DType::U64 => json!(*i as u64),
                    Elem::Int(i) => json!(i),
                    Elem::Sym(_) => unreachable!("checked above"),
                })
                .collect();
            let save = std::mem::replace(&mut self.hint, hint.to_string());
            let r = self.emit(
                "constant",
                &[],
                json!({"dtype": k.dtype.name(), "shape": k.shape, "value": value}),
                k.dtype,
                shape,
            );
            self.hint = save;
            return Ok(r);
        }
        let name = self.fresh(hint);
        let bytes = k.bytes().expect("no symbols: checked above");
        self.params.push(json!({"name": name, "dtype": k.dtype.name(), "shape": k.shape, "file": ""}));
        self.weights.push((name.clone(), k.dtype, k.shape.clone(), bytes));
        Ok(Rt { name, dtype: k.dtype, shape })
    }

    /// A known tensor some of whose elements are symbolic sizes (a shape
    /// used as data): each symbol's size is computed at run time as the sum
    /// of a broadcast 1 over it, which XLA folds once the symbol is bound.
    fn write_symbolic(&mut self, k: &Known, hint: &str) -> Result<Rt, Problem> {
        let save = std::mem::replace(&mut self.hint, hint.to_string());
        let mut parts = Vec::new();
        for e in k.elems() {
            let v = match e {
                Elem::Sym(d) => self.size_of(&d)?,
                e => self.write_known(&Known::scalar(DType::I64, e), hint)?,
            };
            parts.push(self.emit("reshape", &[&v], json!({"shape": [1]}), DType::I64, vec![Dim::size(1)]));
        }
        let refs: Vec<&Rt> = parts.iter().collect();
        let flat = self.emit("concat", &refs, json!({"axis": 0}), DType::I64, vec![Dim::size(parts.len() as u64)]);
        let shape = Dim::sizes(&k.shape);
        let r = self.emit("reshape", &[&flat], json!({"shape": k.shape}), DType::I64, shape.clone());
        let r = if k.dtype == DType::I64 {
            r
        } else {
            self.emit("cast", &[&r], json!({"to": k.dtype.name()}), k.dtype, shape)
        };
        self.hint = save;
        Ok(r)
    }

    /// A symbolic size as an i64 scalar computed at run time.
    fn size_of(&mut self, d: &Dim) -> Result<Rt, Problem> {
        let one = self.write_known(&Known::scalar(DType::I64, Elem::Int(1)), &self.hint.clone())?;
        let mut acc: Option<Rt> = None;
        let coef = d.div(&Dim::sym_product(d.symbols())).and_then(|c| c.as_size()).unwrap_or(1);
        for s in d.symbols() {
            let b = self.emit("broadcast_to", &[&one], json!({"shape": [s]}), DType::I64, vec![Dim::sym(s)]);
            let n = self.emit("reduce_sum", &[&b], json!({"axes": [0]}), DType::I64, vec![]);
            acc = Some(match acc {
                None => n,
                Some(a) => self.emit("mul", &[&a, &n], json!({}), DType::I64, vec![]),
            });
        }
        let acc = acc.ok_or(Problem::Invalid("a symbolic size without symbols".into()))?;
        if coef == 1 {
            return Ok(acc);
        }
        let c = self.write_known(&Known::scalar(DType::I64, Elem::Int(coef as i64)), &self.hint.clone())?;
        Ok(self.emit("mul", &[&acc, &c], json!({}), DType::I64, vec![]))
    }

    /// Records a known result; small ones stay foldable.
    fn known(&self, k: Known) -> Val {
        Val::Known(Rc::new(k))
    }
}

/// True when a known tensor is small enough to fold.
fn foldable(k: &Known) -> bool {
    k.len() <= INLINE
}

/// Where a node is, for errors: its name (or index) and operator.
fn node_place(n: &NodeProto, i: usize) -> String {
    if n.name.is_empty() {
        format!("node #{i} ({})", n.op_type)
    } else {
        format!("node `{}` ({})", n.name, n.op_type)
    }
}

/// An ONNX value name as model.json allows it: characters it reserves become `_`.
fn value_name(s: &str) -> String {
    let out: String =
        s.chars().map(|c| if c.is_whitespace() || "\"',[]{}%=:;".contains(c) { '_' } else { c }).collect();
    if out.is_empty() {
        "v".into()
    } else {
        out
    }
}

/// A symbol (an identifier) made from an ONNX `dim_param` or name.
fn symbol_name(s: &str) -> String {
    let mut out: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if !out.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        out.insert(0, '_');
    }
    out
}

/// Where the importer writes a model's weights beside `out` (model.json): `out` with `.safetensors`.
pub fn weights_beside(out: &Path) -> PathBuf {
    out.with_extension("safetensors")
}
