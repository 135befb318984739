//! Reading the IR's text form back (what [`crate::ir::print::print_full`] writes):
//! pass tests are written in it. The text becomes a model document that the
//! model.json reader checks and types, so both forms obey one set of rules;
//! each node's written type must then equal the inferred one. Lines starting
//! with `;` are comments (test headers such as `; test pass cse`). Relative
//! weight paths are relative to the text file, as in model.json.

use crate::error::{Diagnostic, Error};
use crate::frontend::json::ModelFile;
use crate::ir::Module;
use serde_json::{json, Map, Value as Json};
use std::collections::BTreeMap;
use std::path::Path;

/// Parses IR text read from `origin` (named in errors) into a verified module.
pub fn parse(text: &str, origin: &Path) -> Result<Module, Error> {
    let fail = |line: usize, message: String| Error::Invalid {
        origin: origin.display().to_string(),
        diagnostics: vec![Diagnostic::new(format!("line {line}"), message)],
    };
    let mut name = None;
    let (mut inputs, mut params, mut nodes, mut outputs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut renamed: Vec<(usize, String)> = Vec::new();
    let mut types: Vec<(usize, String, String)> = Vec::new();
    let mut mesh = None;
    let mut closed = false;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with(';') {
            continue;
        }
        if closed {
            return Err(fail(line, "text after the end of the module".into()));
        }
        if name.is_none() {
            let n = l.strip_prefix("module @").and_then(|r| r.strip_suffix('{')).map(str::trim);
            name = Some(n.ok_or_else(|| fail(line, format!("expected `module @NAME {{`, found `{l}`")))?.to_string());
            continue;
        }
        if l == "}" {
            closed = true;
        } else if let Some(rest) = l.strip_prefix("mesh ") {
            let m = crate::ir::sharding::Mesh::parse(rest).map_err(|e| fail(line, e))?;
            mesh = Some(Json::Object(m.axes().iter().map(|(n, s)| (n.clone(), json!(s))).collect()));
        } else if let Some(rest) = l.strip_prefix("input %") {
            let (n, ty) = rest.split_once(": ").ok_or_else(|| fail(line, "expected `input %NAME: TYPE`".into()))?;
            inputs.push(declaration(n, ty).map_err(|e| fail(line, e))?);
        } else if let Some(rest) = l.strip_prefix("param %") {
            params.push(param(rest).map_err(|e| fail(line, e))?);
        } else if let Some(rest) = l.strip_prefix("output ") {
            for (j, item) in rest.split(", ").enumerate() {
                let (out, v) = match item.split_once("=%") {
                    Some((out, v)) => (Some(out), v),
                    None => (
                        None,
                        item.strip_prefix('%')
                            .ok_or_else(|| fail(line, format!("expected `%VALUE`, found `{item}`")))?,
                    ),
                };
                outputs.push(json!(v));
                if let Some(out) = out {
                    renamed.push((j, out.to_string()));
                }
            }
        } else if let Some(rest) = l.strip_prefix('%') {
            let (node, ty) = parse_node(rest).map_err(|e| fail(line, e))?;
            types.push((line, node["outputs"][0].as_str().unwrap_or_default().to_string(), ty));
            nodes.push(node);
        } else {
            return Err(fail(line, format!("unexpected line `{l}`")));
        }
    }
    if !closed {
        return Err(fail(text.lines().count(), "the module is not closed with `}`".into()));
    }
    let mut doc = json!({"format_version": 1, "name": name, "inputs": inputs, "nodes": nodes, "outputs": outputs});
    if let Some(mesh) = mesh {
        doc["mesh"] = mesh;
    }
    if !params.is_empty() {
        doc["parameters"] = json!(params);
    }
    let mut m = ModelFile::from_json(doc, origin)?.build(&BTreeMap::new())?;
    for (j, out) in renamed {
        m.set_output_name(j, out);
    }
    let by_name: BTreeMap<&str, String> = m
        .order()
        .iter()
        .map(|&n| {
            let v = m.value(m.node(n).output);
            (v.name.as_str(), v.ty.to_string())
        })
        .collect();
    for (line, out, written) in types {
        match by_name.get(out.as_str()) {
            Some(inferred) if *inferred == written => {}
            Some(inferred) => {
                return Err(fail(line, format!("`%{out}` is written as {written} but infers as {inferred}")))
            }
            None => return Err(fail(line, format!("`%{out}` is not defined"))),
        }
    }
    Ok(m)
}

/// The model.json declaration of a parameter line after `param %`:
/// `NAME: TYPE = inline [..]` or `NAME: TYPE = file "PATH" tensor "NAME"
/// [transposed [PERM]] [as DTYPE]`.
fn param(rest: &str) -> Result<Json, String> {
    let (head, source) = rest.split_once(" = ").ok_or("expected `param %NAME: TYPE = SOURCE`")?;
    let (n, ty) = head.split_once(": ").ok_or("expected `param %NAME: TYPE`")?;
    let mut p = declaration(n, ty)?;
    if let Some(values) = source.strip_prefix("inline ") {
        p["value"] = parse_value(values)?;
    } else if let Some(file) = source.strip_prefix("file ") {
        let (path, tensor) = file.split_once(" tensor ").ok_or("expected `file \"PATH\" tensor \"NAME\"`")?;
        let (tensor, convert) = match tensor.rsplit_once(" as ") {
            Some((t, d)) if !d.contains('"') => (t, Some(d)),
            _ => (tensor, None),
        };
        let (tensor, perm) = match tensor.rfind(" transposed [") {
            Some(at) if tensor.ends_with(']') => (&tensor[..at], Some(&tensor[at + " transposed ".len()..])),
            _ => (tensor, None),
        };
        p["file"] = quoted(path)?;
        p["tensor"] = quoted(tensor)?;
        if let Some(perm) = perm {
            p["transpose"] = parse_value(perm)?;
        }
        if let Some(dtype) = convert {
            p["convert"] = json!(dtype);
        }
    } else {
        return Err(format!("expected `inline [..]` or `file \"..\" tensor \"..\"`, found `{source}`"));
    }
    Ok(p)
}

/// The model.json declaration of an input or parameter `name` of type `ty`
/// (`f32[8,4]`, optionally followed by `sharding [data,_]`).
fn declaration(name: &str, ty: &str) -> Result<Json, String> {
    let (ty, sharding) = split_sharding(ty)?;
    let (dtype, shape) = crate::ir::types::split_type(ty)?;
    let mut decl = json!({"name": name, "dtype": dtype, "shape": shape});
    if let Some(s) = sharding {
        decl["sharding"] = s;
    }
    Ok(decl)
}

/// `f32[8,4] sharding [data,_]` → (`f32[8,4]`, `["data", null]`); a type without a sharding is returned as is.
fn split_sharding(t: &str) -> Result<(&str, Option<Json>), String> {
    let Some((ty, sharding)) = t.split_once(" sharding ") else { return Ok((t, None)) };
    let inner = sharding
        .trim()
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .ok_or_else(|| format!("expected a sharding such as [data,_], found `{sharding}`"))?;
    let dims = inner
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| if d == "_" { Json::Null } else { json!(d) })
        .collect();
    Ok((ty, Some(Json::Array(dims))))
}

/// `f32[2,3]` → ("f32", [2, 3]).
fn quoted(s: &str) -> Result<Json, String> {
    serde_json::from_str::<String>(s.trim())
        .map(Json::String)
        .map_err(|_| format!("expected a quoted string, found `{s}`"))
}

/// A value in an attribute or an inline list: number, bool, identifier or list.
fn parse_value(v: &str) -> Result<Json, String> {
    let v = v.trim();
    if let Some(inner) = v.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        if inner.contains('…') {
            return Err("values are elided (`…`): print the module with print_full".into());
        }
        return inner
            .split(',')
            .filter(|x| !x.trim().is_empty())
            .map(parse_value)
            .collect::<Result<Vec<_>, _>>()
            .map(Json::Array);
    }
    if let Ok(i) = v.parse::<i64>() {
        return Ok(json!(i));
    }
    if let Ok(f) = v.parse::<f64>() {
        return if f.is_finite() { Ok(json!(f)) } else { Err(format!("`{v}` cannot be written in a model")) };
    }
    match v {
        "true" => Ok(json!(true)),
        "false" => Ok(json!(false)),
        _ if v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !v.is_empty() => Ok(json!(v)),
        _ => Err(format!("cannot read the value `{v}`")),
    }
}

/// `OUT = OP(%a, %b) {k=v, …}: TYPE  ; node "NAME"` (after the leading `%`).
fn parse_node(rest: &str) -> Result<(Json, String), String> {
    let (rest, label) = match rest.split_once("  ; node ") {
        Some((r, label)) => (r, Some(quoted(label)?)),
        None => (rest, None),
    };
    let (out, rhs) = rest.split_once(" = ").ok_or("expected `%OUT = OP(...)`")?;
    let (op, rhs) = rhs.split_once('(').ok_or("expected `OP(` after `=`")?;
    let (args, rhs) = rhs.split_once(')').ok_or("expected `)` closing the operands")?;
    let inputs: Vec<&str> = args
        .split(", ")
        .filter(|a| !a.is_empty())
        .map(|a| a.strip_prefix('%').ok_or(format!("expected an operand `%NAME`, found `{a}`")))
        .collect::<Result<_, _>>()?;
    let rhs = rhs.trim_start();
    let (attrs_text, ty) = match rhs.strip_prefix('{') {
        Some(r) => {
            let close = r.rfind("}:").ok_or("expected `}:` closing the attributes")?;
            (Some(&r[..close]), r[close + 2..].trim())
        }
        None => (None, rhs.strip_prefix(':').ok_or("expected `: TYPE`")?.trim()),
    };
    let (ty, sharding) = split_sharding(ty)?;
    let mut node = json!({"op": op, "inputs": inputs, "outputs": [out]});
    if let Some(s) = sharding {
        node["sharding"] = s;
    }
    if let Some(text) = attrs_text {
        node["attrs"] = Json::Object(parse_attrs(text)?);
    }
    if let Some(l) = label {
        node["name"] = l;
    }
    Ok((node, ty.to_string()))
}

/// `k=v, k=[a,b], …` with commas inside brackets kept.
fn parse_attrs(text: &str) -> Result<Map<String, Json>, String> {
    let mut out = Map::new();
    let (mut depth, mut start) = (0i32, 0usize);
    let mut items = Vec::new();
    for (i, c) in text.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&text[start..]);
    for item in items.into_iter().map(str::trim).filter(|i| !i.is_empty()) {
        let (k, v) = item.split_once('=').ok_or(format!("expected `key=value`, found `{item}`"))?;
        out.insert(k.to_string(), parse_value(v)?);
    }
    Ok(out)
}
