//! model.json, format version 1: reading a model file into the typed IR.
//!
//! Reading happens in two steps. [`ModelFile::load`] parses the JSON and the
//! declarations of the inputs (whose dimensions may be symbols such as
//! `"batch"`). [`ModelFile::build`] binds the symbols, resolves names, orders
//! the nodes, reads each op's attributes against its operand types, infers
//! every type and checks the weights: it reports every problem it finds, each
//! with its JSON path. See `docs/model-format.md` for the format.

mod build;
mod fields;

use crate::error::{Diagnostic, Error};
use crate::ir::dtype::DType;
use crate::ir::sharding::Mesh;
use crate::ir::types::ShapeDisplay;
use crate::ir::Module;
use fields::{as_array, dtype_field, field, is_symbol, list, name_field, object, parse_mesh};
use serde_json::{Map, Value as Json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The format version this xlac reads and writes.
pub const FORMAT_VERSION: u64 = 1;

pub use crate::ir::op::attrs::Bindings;

/// One dimension of a declared input: fixed, or a symbol bound at compile time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    Fixed(u64),
    Symbol(String),
}

/// A declared model input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputDecl {
    pub name: String,
    pub dtype: DType,
    pub dims: Vec<Dim>,
}

/// A parsed model.json, not yet bound to concrete shapes.
#[derive(Clone, Debug)]
pub struct ModelFile {
    path: PathBuf,
    name: String,
    doc: Map<String, Json>,
    inputs: Vec<InputDecl>,
    mesh: Option<Mesh>,
}

const TOP_KEYS: [&str; 7] = ["format_version", "name", "mesh", "inputs", "parameters", "nodes", "outputs"];

impl ModelFile {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.into(), source })?;
        Self::parse(&text, path)
    }

    /// Parses model.json text; `path` names it in errors and anchors relative weight files.
    pub fn parse(text: &str, path: &Path) -> Result<Self, Error> {
        let json: Json = serde_json::from_str(text).map_err(|e| Error::json(path, &e))?;
        Self::from_json(json, path)
    }

    /// Reads a model document already parsed as JSON (see [`ModelFile::parse`]).
    pub fn from_json(json: Json, path: &Path) -> Result<Self, Error> {
        let invalid = |diagnostics| Error::Invalid { origin: path.display().to_string(), diagnostics };
        let Json::Object(doc) = json else {
            return Err(invalid(vec![Diagnostic::new("$", "expected a JSON object at the top level")]));
        };
        let mut d = Vec::new();
        match doc.get("format_version") {
            Some(v) if v.as_u64() == Some(FORMAT_VERSION) => {}
            Some(v) => {
                return Err(invalid(vec![Diagnostic::new(
                    "format_version",
                    format!("unknown format version {v} (this xlac reads version {FORMAT_VERSION})"),
                )]))
            }
            None => d.push(Diagnostic::new("format_version", format!("missing; expected {FORMAT_VERSION}"))),
        }
        for key in doc.keys() {
            if !TOP_KEYS.contains(&key.as_str()) {
                d.push(Diagnostic::new(key.clone(), format!("unknown key (expected one of {})", TOP_KEYS.join(", "))));
            }
        }
        let name = match doc.get("name") {
            None => path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into()),
            Some(Json::String(s)) if !s.is_empty() => s.clone(),
            Some(_) => {
                d.push(Diagnostic::new("name", "expected a non-empty string"));
                String::new()
            }
        };
        let mesh = doc.get("mesh").and_then(|m| parse_mesh(m, &mut d));
        let mut inputs = Vec::new();
        for (i, item) in list(&doc, "inputs", &mut d).iter().enumerate() {
            let at = format!("inputs[{i}]");
            let Some(obj) = object(item, &at, &["name", "dtype", "shape", "sharding"], &mut d) else { continue };
            let (Some(name), Some(dtype)) = (name_field(obj, &at, &mut d), dtype_field(obj, &at, "dtype", &mut d))
            else {
                continue;
            };
            let Some(shape) =
                field(obj, &at, "shape", &mut d).and_then(|s| as_array(s, &format!("{at}.shape"), &mut d))
            else {
                continue;
            };
            let dims: Option<Vec<Dim>> = shape
                .iter()
                .enumerate()
                .map(|(j, v)| {
                    let at = format!("{at}.shape[{j}]");
                    match v {
                        Json::String(s) if is_symbol(s) => Some(Dim::Symbol(s.clone())),
                        _ => match v.as_u64() {
                            Some(n) => Some(Dim::Fixed(n)),
                            None => {
                                d.push(Diagnostic::new(at, format!("expected a size ≥ 0 or a symbol name, found {v}")));
                                None
                            }
                        },
                    }
                })
                .collect();
            if let Some(dims) = dims {
                inputs.push(InputDecl { name, dtype, dims });
            }
        }
        if !d.is_empty() {
            return Err(invalid(d));
        }
        Ok(ModelFile { path: path.into(), name, doc, inputs, mesh })
    }

    /// The device mesh the model's shardings refer to, if it declares one.
    pub fn mesh(&self) -> Option<&Mesh> {
        self.mesh.as_ref()
    }

    /// Replaces the model's mesh (`--mesh`); its shardings are checked against it by [`ModelFile::build`].
    pub fn set_mesh(&mut self, mesh: Mesh) {
        self.mesh = Some(mesh);
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file this model was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The declared inputs, in order.
    pub fn inputs(&self) -> &[InputDecl] {
        &self.inputs
    }

    /// Every symbol used by the input shapes.
    pub fn symbols(&self) -> BTreeSet<String> {
        self.inputs
            .iter()
            .flat_map(|i| &i.dims)
            .filter_map(|d| match d {
                Dim::Symbol(s) => Some(s.clone()),
                Dim::Fixed(_) => None,
            })
            .collect()
    }

    /// Completes `explicit` bindings with the values implied by the shapes of
    /// given inputs (`name → shape`). A conflict, or a given shape that does not
    /// fit its declaration, is an error naming the input.
    pub fn bind_from_shapes(
        &self,
        explicit: &Bindings,
        shapes: &BTreeMap<String, Vec<u64>>,
    ) -> Result<Bindings, Error> {
        let mut b = explicit.clone();
        let mut d = Vec::new();
        for (name, shape) in shapes {
            let Some(decl) = self.inputs.iter().find(|i| &i.name == name) else {
                let names: Vec<_> = self.inputs.iter().map(|i| i.name.as_str()).collect();
                d.push(Diagnostic::new(
                    format!("input `{name}`"),
                    format!("the model has no such input (inputs: {})", names.join(", ")),
                ));
                continue;
            };
            if decl.dims.len() != shape.len() {
                d.push(Diagnostic::new(
                    format!("input `{name}`"),
                    format!(
                        "given shape {} has rank {}, declared rank is {}",
                        ShapeDisplay(shape),
                        shape.len(),
                        decl.dims.len()
                    ),
                ));
                continue;
            }
            for (dim, &n) in decl.dims.iter().zip(shape) {
                let ok = match dim {
                    Dim::Fixed(f) => *f == n,
                    Dim::Symbol(s) => *b.entry(s.clone()).or_insert(n) == n,
                };
                if !ok {
                    d.push(Diagnostic::new(
                        format!("input `{name}`"),
                        format!(
                            "given shape {} does not match the declared shape {}",
                            ShapeDisplay(shape),
                            dims_text(&decl.dims, &b)
                        ),
                    ));
                    break;
                }
            }
        }
        if d.is_empty() {
            Ok(b)
        } else {
            Err(Error::Invalid { origin: self.path.display().to_string(), diagnostics: d })
        }
    }

    /// Builds the typed IR with the symbols bound by `bindings`, checking
    /// everything: names, order, attributes, types and weights.
    pub fn build(&self, bindings: &Bindings) -> Result<Module, Error> {
        let (module, diagnostics) = build::build(self, bindings);
        if diagnostics.is_empty() {
            Ok(module)
        } else {
            Err(Error::Invalid { origin: self.path.display().to_string(), diagnostics })
        }
    }
}

fn dims_text(dims: &[Dim], b: &Bindings) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => n.to_string(),
            Dim::Symbol(s) => match b.get(s) {
                Some(n) => format!("{s}={n}"),
                None => s.clone(),
            },
        })
        .collect();
    format!("[{}]", parts.join(","))
}
