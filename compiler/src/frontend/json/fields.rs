//! Reading model.json's fields: each helper reports what is wrong at its JSON
//! path and returns `None`, so that the reader goes on and lists every problem.

use crate::error::Diagnostic;
use crate::ir::dtype::DType;
use crate::ir::sharding::{Mesh, Sharding};
use serde_json::{Map, Value as Json};

/// True for names usable as shape symbols: an identifier.
pub(super) fn is_symbol(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// True for names usable for values and nodes: non-empty, printable, no spaces,
/// quotes, commas, braces or `%`.
/// Reads `"mesh": {"data": 2, "model": 2}`.
pub(super) fn parse_mesh(v: &Json, d: &mut Vec<Diagnostic>) -> Option<Mesh> {
    let Json::Object(obj) = v else {
        d.push(Diagnostic::new("mesh", format!("expected an object of axis sizes, found {}", kind(v))));
        return None;
    };
    let mut axes = Vec::new();
    for (name, size) in obj {
        match size.as_u64() {
            Some(n) => axes.push((name.clone(), n)),
            None => d.push(Diagnostic::new(format!("mesh.{name}"), format!("expected an axis size ≥ 1, found {size}"))),
        }
    }
    Mesh::new(axes).map_err(|e| d.push(Diagnostic::new("mesh", e))).ok()
}

/// Reads a sharding: per dimension, a mesh axis name or null.
pub(super) fn parse_sharding(v: &Json) -> Result<Sharding, String> {
    let Json::Array(items) = v else {
        return Err(format!("expected an array of mesh axis names or null, one per dimension, found {}", kind(v)));
    };
    items
        .iter()
        .map(|item| match item {
            Json::Null => Ok(None),
            Json::String(s) => Ok(Some(s.clone())),
            other => Err(format!("expected a mesh axis name or null, found {other}")),
        })
        .collect::<Result<_, _>>()
        .map(Sharding)
}

pub(super) fn is_value_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic() && !"\"',%{}[]()=:;".contains(c))
}

pub(super) fn list<'a>(doc: &'a Map<String, Json>, key: &str, d: &mut Vec<Diagnostic>) -> &'a [Json] {
    match doc.get(key) {
        None => &[],
        Some(v) => as_array(v, key, d).unwrap_or(&[]),
    }
}

pub(super) fn as_array<'a>(v: &'a Json, at: &str, d: &mut Vec<Diagnostic>) -> Option<&'a [Json]> {
    match v {
        Json::Array(a) => Some(a),
        other => {
            d.push(Diagnostic::new(at, format!("expected an array, found {}", kind(other))));
            None
        }
    }
}

pub(super) fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

pub(super) fn object<'a>(
    v: &'a Json,
    at: &str,
    keys: &[&str],
    d: &mut Vec<Diagnostic>,
) -> Option<&'a Map<String, Json>> {
    let Json::Object(obj) = v else {
        d.push(Diagnostic::new(at, format!("expected an object, found {}", kind(v))));
        return None;
    };
    for k in obj.keys() {
        if !keys.contains(&k.as_str()) {
            d.push(Diagnostic::new(format!("{at}.{k}"), format!("unknown key (expected one of {})", keys.join(", "))));
        }
    }
    Some(obj)
}

pub(super) fn field<'a>(obj: &'a Map<String, Json>, at: &str, key: &str, d: &mut Vec<Diagnostic>) -> Option<&'a Json> {
    let v = obj.get(key);
    if v.is_none() {
        d.push(Diagnostic::new(format!("{at}.{key}"), "missing"));
    }
    v
}

pub(super) fn name_field(obj: &Map<String, Json>, at: &str, d: &mut Vec<Diagnostic>) -> Option<String> {
    value_name(field(obj, at, "name", d)?, format!("{at}.name"), d)
}

/// A value or node name at `at`, reported when it is not one.
pub(super) fn value_name(v: &Json, at: String, d: &mut Vec<Diagnostic>) -> Option<String> {
    match v {
        Json::String(s) if is_value_name(s) => Some(s.clone()),
        other => {
            d.push(Diagnostic::new(at, format!("expected a name without spaces, quotes or brackets, found {other}")));
            None
        }
    }
}

pub(super) fn dtype_field(obj: &Map<String, Json>, at: &str, key: &str, d: &mut Vec<Diagnostic>) -> Option<DType> {
    let v = field(obj, at, key, d)?;
    match v.as_str().map(str::parse::<DType>) {
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            d.push(Diagnostic::new(format!("{at}.{key}"), e));
            None
        }
        None => {
            d.push(Diagnostic::new(format!("{at}.{key}"), format!("expected a dtype name, found {v}")));
            None
        }
    }
}
