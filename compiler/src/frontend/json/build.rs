//! Building the IR from a parsed model.json: names resolved, nodes put in
//! topological order, attributes read against operand types, every type
//! inferred, weights checked against their files and shardings against the mesh.

use super::fields::{as_array, dtype_field, field, kind, list, name_field, object, parse_sharding, value_name};
use super::{Bindings, Dim, ModelFile};
use crate::error::Diagnostic;
use crate::ir::dtype::DType;
use crate::ir::infer::infer;
use crate::ir::op::attrs::{parse_values, Attrs};
use crate::ir::op::table;
use crate::ir::types::{element_count, ShapeDisplay, TensorType};
use crate::ir::{Module, ParamSource, Value};
use serde_json::{Map, Value as Json};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use xlac_core::safetensors::{read_header, Header};
use xlac_core::view::WeightView;

/// The module `file` describes with its symbols bound by `bindings`, and
/// every problem found (the module is only meaningful when there is none).
pub(super) fn build(file: &ModelFile, bindings: &Bindings) -> (Module, Vec<Diagnostic>) {
    let mut b = Builder { file, bindings, d: Vec::new(), headers: HashMap::new() };
    let module = b.build();
    (module, b.d)
}

/// Builds one module from a [`ModelFile`]; collects diagnostics as it goes.
struct Builder<'a> {
    file: &'a ModelFile,
    bindings: &'a Bindings,
    d: Vec<Diagnostic>,
    headers: HashMap<PathBuf, Result<Header, String>>,
}

/// A node of model.json, its names resolved.
struct NodeDecl<'a> {
    at: String,
    name: String,
    op: String,
    inputs: Vec<String>,
    output: String,
    attrs: Option<&'a Map<String, Json>>,
    sharding: Option<&'a Json>,
}

impl<'a> Builder<'a> {
    fn build(&mut self) -> Module {
        let mut m = Module::new(self.file.name.clone());
        m.mesh = self.file.mesh.clone();
        let mut defined: HashMap<String, (String, Option<Value>)> = HashMap::new();
        let symbols = self.file.symbols();
        for name in self.bindings.keys() {
            if !symbols.contains(name) {
                let known: Vec<_> = symbols.iter().cloned().collect();
                self.d.push(Diagnostic::new(
                    format!("binding `{name}`"),
                    format!(
                        "the model has no such symbol (symbols: {})",
                        if known.is_empty() { "none".into() } else { known.join(", ") }
                    ),
                ));
            }
        }
        for (i, decl) in self.file.inputs.iter().enumerate() {
            let at = format!("inputs[{i}]");
            let shape = self.bind_dims(&decl.dims, &format!("{at}.shape"));
            let v =
                shape.and_then(|s| self.checked_type(decl.dtype, s, &at)).map(|ty| m.add_input(decl.name.clone(), ty));
            if let Some(v) = v {
                self.annotate(&mut m, v, self.file.doc["inputs"][i].get("sharding"), &at);
            }
            self.define(&mut defined, &decl.name, at, v);
        }
        let params = list(&self.file.doc, "parameters", &mut self.d).to_vec();
        for (i, item) in params.iter().enumerate() {
            let at = format!("parameters[{i}]");
            self.param(&mut m, &mut defined, item, at);
        }
        let nodes = self.node_decls();
        for decl in &nodes {
            if let Some((first, _)) = defined.get(&decl.output) {
                self.d.push(Diagnostic::new(
                    format!("{}.outputs[0]", decl.at),
                    format!("duplicate name `{}`, already defined at {first}", decl.output),
                ));
            } else {
                defined.insert(decl.output.clone(), (format!("{}.outputs[0]", decl.at), None));
            }
        }
        let mut node_names: HashMap<&str, &str> = HashMap::new();
        for decl in &nodes {
            if let Some(first) = node_names.insert(&decl.name, &decl.at) {
                self.d.push(Diagnostic::new(
                    &decl.at,
                    format!("duplicate node name `{}`, already used at {first}", decl.name),
                ));
            }
        }
        for idx in self.topological_order(&nodes, &defined) {
            let decl = &nodes[idx];
            let inputs: Option<Vec<Value>> = decl.inputs.iter().map(|n| defined.get(n).and_then(|(_, v)| *v)).collect();
            // An operand that failed earlier was already reported: skip quietly.
            let Some(inputs) = inputs else { continue };
            if let Some(v) = self.node(&mut m, decl, inputs) {
                self.annotate(&mut m, v, decl.sharding, &decl.at);
                if let Some(entry) = defined.get_mut(&decl.output) {
                    entry.1 = Some(v);
                }
            }
        }
        let outs = list(&self.file.doc, "outputs", &mut self.d).to_vec();
        if outs.is_empty() && self.file.doc.contains_key("outputs") {
            self.d.push(Diagnostic::new("outputs", "a model needs at least one output"));
        } else if !self.file.doc.contains_key("outputs") {
            self.d.push(Diagnostic::new("outputs", "missing; list the values the model returns"));
        }
        let mut seen = BTreeSet::new();
        for (i, o) in outs.iter().enumerate() {
            let at = format!("outputs[{i}]");
            let (name, sharding, donates) = match o {
                Json::Object(_) => {
                    let Some(obj) = object(o, &at, &["value", "sharding", "donates"], &mut self.d) else { continue };
                    let Some(name) = field(obj, &at, "value", &mut self.d).and_then(Json::as_str) else {
                        self.d.push(Diagnostic::new(format!("{at}.value"), "expected the name of a value"));
                        continue;
                    };
                    let donates = match obj.get("donates") {
                        None => None,
                        Some(Json::String(input)) => Some(input.as_str()),
                        Some(other) => {
                            let msg = format!("expected the name of an input, found {other}");
                            self.d.push(Diagnostic::new(format!("{at}.donates"), msg));
                            continue;
                        }
                    };
                    (name, obj.get("sharding"), donates)
                }
                _ => match o.as_str() {
                    Some(name) => (name, None, None),
                    None => {
                        self.d.push(Diagnostic::new(
                            at,
                            format!("expected a value name or {{\"value\", \"sharding\"}}, found {o}"),
                        ));
                        continue;
                    }
                },
            };
            if !seen.insert(name) {
                self.d.push(Diagnostic::new(at, format!("`{name}` is listed twice")));
                continue;
            }
            match defined.get(name) {
                Some((_, Some(v))) => {
                    self.annotate(&mut m, *v, sharding, &at);
                    m.add_output(*v);
                    if let Some(input) = donates {
                        self.donate(&mut m, input, &format!("{at}.donates"));
                    }
                }
                Some((_, None)) => {}
                None => self.d.push(Diagnostic::new(at, format!("undefined value `{name}`"))),
            }
        }
        m
    }

    /// Donates the input called `input` to the output just added: the
    /// program writes that output into the input's buffer.
    fn donate(&mut self, m: &mut Module, input: &str, at: &str) {
        let Some(&arg) = m.inputs().iter().find(|&&i| m.value(i).name == input) else {
            let names: Vec<&str> = m.inputs().iter().map(|&i| m.value(i).name.as_str()).collect();
            let msg = format!("`{input}` is not an input of the model (inputs: {})", names.join(", "));
            return self.d.push(Diagnostic::new(at, msg));
        };
        let k = m.outputs().len() - 1;
        let (arg_ty, out_ty) = (&m.value(arg).ty, &m.value(m.outputs()[k]).ty);
        if arg_ty != out_ty {
            let msg =
                format!("input `{input}` is {arg_ty} but the output is {out_ty}: a donated buffer keeps its type");
            return self.d.push(Diagnostic::new(at, msg));
        }
        if m.donations().iter().any(|&(a, _)| a == arg) {
            return self.d.push(Diagnostic::new(at, format!("input `{input}` is already donated to another output")));
        }
        m.donate(arg, k);
    }

    /// Reads the `sharding` of the value `v` declared at `at` and annotates
    /// it; a second, different annotation of the same value is a conflict.
    fn annotate(&mut self, m: &mut Module, v: Value, sharding: Option<&Json>, at: &str) {
        let Some(json) = sharding else { return };
        let at = format!("{at}.sharding");
        let value = &m.value(v);
        let Some(mesh) = &self.file.mesh else {
            let msg =
                format!("value `{}` is sharded but the model has no mesh (add \"mesh\" or pass --mesh)", value.name);
            self.d.push(Diagnostic::new(at, msg));
            return;
        };
        let parsed = match parse_sharding(json) {
            Ok(s) => s,
            Err(e) => return self.d.push(Diagnostic::new(at, e)),
        };
        if let Err(e) = parsed.check(&value.ty.shape, &value.ty, mesh) {
            return self.d.push(Diagnostic::new(at, format!("value `{}`: {e}", value.name)));
        }
        match &value.sharding {
            Some(old) if *old != parsed => {
                let msg = format!("value `{}` is annotated {parsed} here and {old} at its definition", value.name);
                self.d.push(Diagnostic::new(at, format!("conflicting shardings: {msg}")))
            }
            _ => m.set_sharding(v, Some(parsed)),
        }
    }

    fn define(
        &mut self,
        defined: &mut HashMap<String, (String, Option<Value>)>,
        name: &str,
        at: String,
        v: Option<Value>,
    ) {
        if let Some((first, _)) = defined.get(name) {
            self.d.push(Diagnostic::new(
                format!("{at}.name"),
                format!("duplicate name `{name}`, already defined at {first}"),
            ));
        } else {
            defined.insert(name.to_string(), (at, v));
        }
    }

    fn bind_dims(&mut self, dims: &[Dim], at: &str) -> Option<Vec<u64>> {
        let mut out = Vec::with_capacity(dims.len());
        for (j, dim) in dims.iter().enumerate() {
            match dim {
                Dim::Fixed(n) => out.push(*n),
                Dim::Symbol(s) => match self.bindings.get(s) {
                    Some(n) => out.push(*n),
                    None => {
                        self.d.push(Diagnostic::new(
                            format!("{at}[{j}]"),
                            format!("symbol `{s}` is not bound; pass --bind {s}=N or give this input"),
                        ));
                        return None;
                    }
                },
            }
        }
        Some(out)
    }

    fn checked_type(&mut self, dtype: DType, shape: Vec<u64>, at: &str) -> Option<TensorType> {
        match element_count(&shape) {
            Ok(_) => Some(TensorType::new(dtype, shape)),
            Err(e) => {
                self.d.push(Diagnostic::new(format!("{at}.shape"), e));
                None
            }
        }
    }

    fn param(
        &mut self,
        m: &mut Module,
        defined: &mut HashMap<String, (String, Option<Value>)>,
        item: &Json,
        at: String,
    ) {
        let keys = ["name", "dtype", "shape", "file", "tensor", "transpose", "convert", "value", "sharding"];
        let d = &mut self.d;
        let Some(obj) = object(item, &at, &keys, d) else { return };
        let (Some(name), Some(dtype)) = (name_field(obj, &at, d), dtype_field(obj, &at, "dtype", d)) else { return };
        let shape = field(obj, &at, "shape", d).and_then(|s| {
            let a = as_array(s, &format!("{at}.shape"), d)?;
            a.iter()
                .enumerate()
                .map(|(j, v)| {
                    v.as_u64().or_else(|| {
                        d.push(Diagnostic::new(format!("{at}.shape[{j}]"), format!("expected a size ≥ 0, found {v}")));
                        None
                    })
                })
                .collect::<Option<Vec<u64>>>()
        });
        let ty = shape.and_then(|s| self.checked_type(dtype, s, &at));
        let source = ty.as_ref().and_then(|ty| self.param_source(obj, &at, &name, ty));
        let v = match (ty, source) {
            (Some(ty), Some(source)) => Some(m.add_param(name.clone(), ty, source)),
            _ => None,
        };
        if let Some(v) = v {
            self.annotate(m, v, obj.get("sharding"), &at);
        }
        self.define(defined, &name, at, v);
    }

    fn param_source(&mut self, obj: &Map<String, Json>, at: &str, name: &str, ty: &TensorType) -> Option<ParamSource> {
        match (obj.get("file"), obj.get("value")) {
            (Some(_), Some(_)) | (None, None) => {
                self.d.push(Diagnostic::new(
                    at,
                    "a parameter needs exactly one of `file` (a safetensors file) or `value` (inline values)",
                ));
                None
            }
            (None, Some(v)) => {
                for key in ["tensor", "transpose", "convert"] {
                    if obj.contains_key(key) {
                        self.d.push(Diagnostic::new(
                            format!("{at}.{key}"),
                            format!("only a `file` parameter has `{key}`"),
                        ));
                    }
                }
                match parse_values(v, ty.dtype, ty.num_elements(), &format!("{at}.value")) {
                    Ok(data) => Some(ParamSource::Inline(data)),
                    Err(e) => {
                        self.d.push(e);
                        None
                    }
                }
            }
            (Some(file), None) => {
                let Some(rel) = file.as_str() else {
                    self.d.push(Diagnostic::new(format!("{at}.file"), format!("expected a path, found {file}")));
                    return None;
                };
                let tensor = match obj.get("tensor") {
                    None => name.to_string(),
                    Some(Json::String(t)) => t.clone(),
                    Some(t) => {
                        self.d.push(Diagnostic::new(
                            format!("{at}.tensor"),
                            format!("expected a tensor name, found {t}"),
                        ));
                        return None;
                    }
                };
                let WeightView { perm, convert } = self.weight_view(obj, at, ty)?;
                let dir = self.file.path.parent().unwrap_or(Path::new(""));
                let path = dir.join(rel);
                let header = self.headers.entry(path.clone()).or_insert_with(|| read_header(&path));
                let problem = match header {
                    Err(e) => Some((format!("{at}.file"), format!("weight file {}: {e}", path.display()))),
                    Ok(header) => match header.get(&tensor) {
                        None => Some((
                            format!("{at}.tensor"),
                            format!("tensor `{tensor}` is not in {} ({} tensors there)", path.display(), header.len()),
                        )),
                        Some(Err(e)) => Some((
                            format!("{at}.tensor"),
                            format!("weight file {}: tensor `{tensor}`: {e}", path.display()),
                        )),
                        Some(Ok(info)) => match (&info.dtype, &perm) {
                            (Err(other), _) => Some((
                                format!("{at}.tensor"),
                                format!("tensor `{tensor}` has dtype {other}, which xlac does not support"),
                            )),
                            (Ok(dt), Some(p)) if !crate::ir::infer::is_permutation(p, info.shape.len()) => Some((
                                format!("{at}.transpose"),
                                format!(
                                    "{p:?} is not a permutation of the {} dimensions of tensor `{tensor}` ({dt}{})",
                                    info.shape.len(),
                                    ShapeDisplay(&info.shape)
                                ),
                            )),
                            (Ok(dt), _) if convert.is_some() && !dt.is_float() => Some((
                                format!("{at}.convert"),
                                format!("tensor `{tensor}` is {dt}: only floats convert to another float type"),
                            )),
                            (Ok(dt), _) => {
                                let read: Vec<u64> = match &perm {
                                    Some(p) => p.iter().map(|&d| info.shape[d]).collect(),
                                    None => info.shape.clone(),
                                };
                                let transposed = if perm.is_some() { " read transposed" } else { "" };
                                let read_dtype = convert.unwrap_or(*dt);
                                (read_dtype != ty.dtype || read != ty.shape).then(|| {
                                    (
                                        format!("{at}.tensor"),
                                        format!(
                                            "tensor `{tensor}` in {} is {dt}{}{transposed}, but the parameter is declared {ty}",
                                            path.display(),
                                            ShapeDisplay(&read)
                                        ),
                                    )
                                })
                            }
                        },
                    },
                };
                match problem {
                    Some((loc, msg)) => {
                        self.d.push(Diagnostic::new(loc, msg));
                        None
                    }
                    None => Some(ParamSource::File { path, tensor, view: WeightView { perm, convert } }),
                }
            }
        }
    }

    /// A file parameter's `transpose` and `convert` (the view of its tensor
    /// it reads), checked against its declared type `ty`.
    fn weight_view(&mut self, obj: &Map<String, Json>, at: &str, ty: &TensorType) -> Option<WeightView> {
        let perm: Option<Vec<usize>> = match obj.get("transpose") {
            None => None,
            Some(v) => match v.as_array().and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect()) {
                Some(p) => Some(p),
                None => {
                    self.d.push(Diagnostic::new(
                        format!("{at}.transpose"),
                        format!("expected a permutation of the tensor's dimensions, found {v}"),
                    ));
                    return None;
                }
            },
        };
        let convert: Option<DType> = match obj.get("convert") {
            None => None,
            Some(v) => match v.as_str().and_then(|s| s.parse::<DType>().ok()) {
                Some(d) if d.is_float() && d == ty.dtype => Some(d),
                _ => {
                    self.d.push(Diagnostic::new(
                        format!("{at}.convert"),
                        format!("expected the parameter's dtype `{}` (a float type), found {v}", ty.dtype),
                    ));
                    return None;
                }
            },
        };
        Some(WeightView { perm, convert })
    }

    fn node_decls(&mut self) -> Vec<NodeDecl<'a>> {
        let items: &'a [Json] = match self.file.doc.get("nodes") {
            None => &[],
            Some(v) => as_array(v, "nodes", &mut self.d).unwrap_or(&[]),
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let at = format!("nodes[{i}]");
            let d = &mut self.d;
            let Some(obj) = object(item, &at, &["name", "op", "inputs", "outputs", "attrs", "sharding"], d) else {
                continue;
            };
            let op = match field(obj, &at, "op", d) {
                Some(Json::String(s)) => s.clone(),
                Some(other) => {
                    d.push(Diagnostic::new(format!("{at}.op"), format!("expected an op name, found {other}")));
                    continue;
                }
                None => continue,
            };
            let names = |key: &str, d: &mut Vec<Diagnostic>| -> Option<Vec<String>> {
                let a = match obj.get(key) {
                    None if key == "inputs" => return Some(vec![]),
                    None => {
                        d.push(Diagnostic::new(format!("{at}.{key}"), "missing"));
                        return None;
                    }
                    Some(v) => as_array(v, &format!("{at}.{key}"), d)?,
                };
                a.iter().enumerate().map(|(j, v)| value_name(v, format!("{at}.{key}[{j}]"), d)).collect()
            };
            let (Some(inputs), Some(outputs)) = (names("inputs", d), names("outputs", d)) else { continue };
            if outputs.len() != 1 {
                d.push(Diagnostic::new(
                    format!("{at}.outputs"),
                    format!("op `{op}` has 1 result, {} output names given", outputs.len()),
                ));
                continue;
            }
            let name = match obj.get("name") {
                None => outputs[0].clone(),
                Some(v) => match value_name(v, format!("{at}.name"), d) {
                    Some(n) => n,
                    None => continue,
                },
            };
            let attrs = match obj.get("attrs") {
                None => None,
                Some(Json::Object(a)) => Some(a),
                Some(other) => {
                    d.push(Diagnostic::new(
                        format!("{at}.attrs"),
                        format!("expected an object, found {}", kind(other)),
                    ));
                    continue;
                }
            };
            let output = outputs.into_iter().next().unwrap_or_default();
            out.push(NodeDecl { at, name, op, inputs, output, attrs, sharding: obj.get("sharding") });
        }
        out
    }

    /// Orders the nodes so that every operand is defined first (depth-first, in
    /// file order). Reports undefined operands and cycles; nodes caught in
    /// either are left out.
    fn topological_order(
        &mut self,
        nodes: &[NodeDecl],
        defined: &HashMap<String, (String, Option<Value>)>,
    ) -> Vec<usize> {
        let producer: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.output.as_str(), i)).collect();
        for n in nodes {
            for (j, input) in n.inputs.iter().enumerate() {
                if !defined.contains_key(input) {
                    self.d.push(Diagnostic::new(
                        format!("{}.inputs[{j}]", n.at),
                        format!("undefined value `{input}` (node `{}`)", n.name),
                    ));
                }
            }
        }
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Active,
            Done,
        }
        let mut mark = vec![Mark::New; nodes.len()];
        let mut order = Vec::with_capacity(nodes.len());
        let mut reported_cycle = false;
        for root in 0..nodes.len() {
            if mark[root] != Mark::New {
                continue;
            }
            // Iterative DFS: (node, next operand to visit).
            let mut stack = vec![(root, 0usize)];
            mark[root] = Mark::Active;
            while let Some(&mut (n, ref mut next)) = stack.last_mut() {
                if let Some(input) = nodes[n].inputs.get(*next) {
                    *next += 1;
                    let Some(&p) = producer.get(input.as_str()) else { continue };
                    match mark[p] {
                        Mark::New => {
                            mark[p] = Mark::Active;
                            stack.push((p, 0));
                        }
                        Mark::Active => {
                            if !reported_cycle {
                                reported_cycle = true;
                                let start = stack.iter().position(|&(s, _)| s == p).unwrap_or(0);
                                let names: Vec<_> =
                                    stack[start..].iter().map(|&(s, _)| format!("`{}`", nodes[s].name)).collect();
                                self.d.push(Diagnostic::new(
                                    &nodes[p].at,
                                    format!("cycle: {} -> `{}`", names.join(" -> "), nodes[p].name),
                                ));
                            }
                        }
                        Mark::Done => {}
                    }
                } else {
                    mark[n] = Mark::Done;
                    order.push(n);
                    stack.pop();
                }
            }
        }
        if reported_cycle {
            order.clear();
        }
        order
    }

    fn node(&mut self, m: &mut Module, decl: &NodeDecl, inputs: Vec<Value>) -> Option<Value> {
        let where_ = format!("{} (node `{}`, {})", decl.at, decl.name, decl.op);
        let types: Vec<TensorType> = inputs.iter().map(|&v| m.value(v).ty.clone()).collect();
        let refs: Vec<&TensorType> = types.iter().collect();
        let Some(def) = table::lookup(&decl.op) else {
            let hint = crate::error::did_you_mean(&decl.op, table::names());
            self.d.push(Diagnostic::new(
                format!("{} (node `{}`)", decl.at, decl.name),
                format!("unknown op `{}`{hint} (see docs/model-format.md for op set v1)", decl.op),
            ));
            return None;
        };
        let mut attrs = Attrs::new(decl.attrs, format!("{}.attrs", decl.at), &decl.name);
        let op = match (def.parse)(&mut attrs, &refs, self.bindings) {
            Ok(op) => op,
            Err(e) => {
                self.d.push(e);
                return None;
            }
        };
        if let Err(e) = attrs.finish() {
            self.d.push(e);
            return None;
        }
        let (lo, hi) = def.arity();
        if inputs.len() < lo || hi.is_some_and(|h| inputs.len() > h) {
            let expected = match hi {
                Some(h) if h == lo => format!("{lo}"),
                Some(h) => format!("{lo} to {h}"),
                None => format!("at least {lo}"),
            };
            self.d.push(Diagnostic::new(
                format!("{}.inputs", decl.at),
                format!("op `{}` takes {expected} operands, found {} (node `{}`)", decl.op, inputs.len(), decl.name),
            ));
            return None;
        }
        match infer(&op, &refs) {
            Ok(ty) => Some(m.append_node(decl.name.clone(), op, inputs, decl.output.clone(), ty)),
            Err(e) => {
                let operands: Vec<_> = types.iter().map(|t| t.to_string()).collect();
                self.d.push(Diagnostic::new(where_, format!("{e} (operands: {})", operands.join(", "))));
                None
            }
        }
    }
}
