//! Op attributes as model.json writes them (a JSON object per node; the IR
//! text and the importers produce the same form), read by key against the
//! operand types: axes normalised, defaults filled in, every unread key an
//! error naming its JSON path and node.

use crate::error::Diagnostic;
use crate::ir::dtype::DType;
use crate::ir::op::{ConstData, Window2d};
use crate::ir::types::element_count;
use serde_json::{Map, Value as Json};
use std::collections::BTreeMap;

/// Values of the shape symbols, such as `batch = 8`.
pub type Bindings = BTreeMap<String, u64>;

/// Reads inline values for a tensor of `count` elements of `dtype`: a single
/// number (or bool) for a one-element tensor, else a flat row-major array.
/// Integers must be exact and fit the dtype; floats must fit its range.
pub fn parse_values(v: &Json, dtype: DType, count: u64, at: &str) -> Result<ConstData, Diagnostic> {
    let items: Vec<&Json> = match v {
        Json::Array(a) => a.iter().collect(),
        scalar => vec![scalar],
    };
    if items.len() as u64 != count {
        return Err(Diagnostic::new(at, format!("expected {count} values (row-major, flat), found {}", items.len())));
    }
    let bad = |i: usize, what: String| Diagnostic::new(format!("{at}[{i}]"), what);
    if dtype.is_float() {
        let max = dtype.max_finite().unwrap_or(f64::MAX);
        items
            .iter()
            .enumerate()
            .map(|(i, x)| match x.as_f64() {
                Some(f) if f.abs() <= max => Ok(f),
                Some(f) => Err(bad(i, format!("{f} is outside the range of {dtype} (±{max:e})"))),
                None => Err(bad(i, format!("expected a number, found {x}"))),
            })
            .collect::<Result<_, _>>()
            .map(ConstData::Float)
    } else {
        let (lo, hi) = dtype.int_range().unwrap_or((i64::MIN as i128, i64::MAX as i128));
        items
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let n = match x {
                    Json::Bool(b) if dtype == DType::Bool => Some(*b as i128),
                    _ => x.as_i64().map(i128::from).or_else(|| x.as_u64().map(i128::from)),
                };
                match n {
                    // A u64 is held as its bits (`DType::U64`).
                    Some(n) if (lo..=hi).contains(&n) => Ok(n as i64),
                    _ => Err(bad(i, format!("expected an integer in {lo}..={hi} for {dtype}, found {x}"))),
                }
            })
            .collect::<Result<_, _>>()
            .map(ConstData::Int)
    }
}

/// The attributes of one node, read by key; unread keys are errors.
pub struct Attrs<'a> {
    map: Option<&'a Map<String, Json>>,
    at: String,
    node: &'a str,
    used: Vec<&'static str>,
}

impl<'a> Attrs<'a> {
    /// The attributes `map` (none given: `None`) of node `node`, whose JSON
    /// path is `at` (`nodes[3].attrs`).
    pub fn new(map: Option<&'a Map<String, Json>>, at: String, node: &'a str) -> Self {
        Attrs { map, at, node, used: Vec::new() }
    }

    /// Where attribute `key` is, for diagnostics: ``nodes[3].attrs.axis (node `h`)``.
    pub fn place(&self, key: &str) -> String {
        format!("{}.{key} (node `{}`)", self.at, self.node)
    }

    /// A diagnostic about attribute `key`.
    pub fn err(&self, key: &str, msg: impl std::fmt::Display) -> Diagnostic {
        Diagnostic::new(self.place(key), msg.to_string())
    }

    pub fn get(&mut self, key: &'static str) -> Option<&Json> {
        self.used.push(key);
        self.map.and_then(|m| m.get(key))
    }

    pub fn required(&mut self, key: &'static str) -> Result<&Json, Diagnostic> {
        let at = self.place(key);
        self.get(key).ok_or_else(|| Diagnostic::new(at, "missing attribute"))
    }

    pub fn finish(&self) -> Result<(), Diagnostic> {
        let Some(map) = self.map else { return Ok(()) };
        match map.keys().find(|k| !self.used.contains(&k.as_str())) {
            None => Ok(()),
            Some(k) => Err(self.err(
                k,
                if self.used.is_empty() {
                    "unknown attribute (this op takes none)".to_string()
                } else {
                    format!("unknown attribute (expected one of {})", self.used.join(", "))
                },
            )),
        }
    }

    pub fn int(&mut self, key: &'static str) -> Result<Option<i64>, Diagnostic> {
        match self.get(key).cloned() {
            None => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or_else(|| self.err(key, format!("expected an integer, found {v}"))),
        }
    }

    pub fn ints(&mut self, key: &'static str) -> Result<Option<Vec<i64>>, Diagnostic> {
        match self.get(key).cloned() {
            None => Ok(None),
            Some(v) => v
                .as_array()
                .and_then(|a| a.iter().map(Json::as_i64).collect::<Option<Vec<_>>>())
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected an array of integers, found {v}"))),
        }
    }

    pub fn bool(&mut self, key: &'static str, default: bool) -> Result<bool, Diagnostic> {
        match self.get(key).cloned() {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.err(key, format!("expected true or false, found {v}"))),
        }
    }

    pub fn float(&mut self, key: &'static str) -> Result<Option<f64>, Diagnostic> {
        match self.get(key).cloned() {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.err(key, format!("expected a number, found {v}"))),
        }
    }

    /// The optional `accumulate` dtype of a contraction.
    pub fn accumulate(&mut self) -> Result<Option<DType>, Diagnostic> {
        if self.map.is_some_and(|m| m.contains_key("accumulate")) {
            self.dtype("accumulate").map(Some)
        } else {
            self.used.push("accumulate");
            Ok(None)
        }
    }

    pub fn dtype(&mut self, key: &'static str) -> Result<DType, Diagnostic> {
        let v = self.required(key)?.clone();
        v.as_str()
            .ok_or_else(|| format!("expected a dtype name, found {v}"))
            .and_then(str::parse)
            .map_err(|e| self.err(key, e))
    }

    pub fn axis(&mut self, key: &'static str, default: Option<i64>, rank: usize) -> Result<usize, Diagnostic> {
        let a = match (self.int(key)?, default) {
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => return Err(self.required(key).err().unwrap_or_else(|| self.err(key, "missing attribute"))),
        };
        normalize_axis(a, rank).map_err(|e| self.err(key, e))
    }

    /// Two values for H and W, from a number or a pair.
    pub fn pair(&mut self, key: &'static str, default: Option<u64>) -> Result<[u64; 2], Diagnostic> {
        let v = match (self.get(key).cloned(), default) {
            (Some(v), _) => v,
            (None, Some(d)) => return Ok([d, d]),
            (None, None) => return Err(self.err(key, "missing attribute")),
        };
        match (&v, v.as_u64()) {
            (_, Some(n)) => Ok([n, n]),
            (Json::Array(a), _) if a.len() == 2 => match (a[0].as_u64(), a[1].as_u64()) {
                (Some(h), Some(w)) => Ok([h, w]),
                _ => Err(self.err(key, format!("expected sizes ≥ 0, found {v}"))),
            },
            _ => Err(self.err(key, format!("expected a size or an [h, w] pair, found {v}"))),
        }
    }

    pub fn window(&mut self, default_stride: Option<[u64; 2]>) -> Result<Window2d, Diagnostic> {
        let stride = match default_stride {
            Some(s) if self.map.is_none_or(|m| !m.contains_key("stride")) => {
                self.used.push("stride");
                s
            }
            _ => self.pair("stride", Some(1))?,
        };
        let padding = match self.get("padding").cloned() {
            None => [0; 4],
            Some(v) => match (v.as_u64(), v.as_array().map(|a| a.iter().map(Json::as_u64).collect::<Option<Vec<_>>>()))
            {
                (Some(p), _) => [p; 4],
                (_, Some(Some(p))) if p.len() == 2 => [p[0], p[0], p[1], p[1]],
                (_, Some(Some(p))) if p.len() == 4 => [p[0], p[1], p[2], p[3]],
                _ => {
                    return Err(self.err(
                        "padding",
                        format!("expected p, [h, w] or [top, bottom, left, right] (sizes ≥ 0), found {v}"),
                    ))
                }
            },
        };
        let dilation = self.pair("dilation", Some(1))?;
        Ok(Window2d { stride, padding, dilation })
    }

    /// One size: a number ≥ 0 or a bound symbol.
    pub fn size(&mut self, key: &'static str, bindings: &Bindings) -> Result<u64, Diagnostic> {
        match self.required(key)?.clone() {
            Json::String(s) => bindings
                .get(&s)
                .copied()
                .ok_or_else(|| self.err(key, format!("symbol `{s}` is not bound; pass --bind {s}=N"))),
            v => v.as_u64().ok_or_else(|| self.err(key, format!("expected a size ≥ 0 or a symbol, found {v}"))),
        }
    }

    /// A target shape: sizes, symbols, and (when `infer_from` gives the element
    /// count) one `-1` resolved from it; `default` when the key is absent.
    pub fn shape(
        &mut self,
        key: &'static str,
        bindings: &Bindings,
        infer_from: Option<u64>,
        default: Option<Vec<u64>>,
    ) -> Result<Vec<u64>, Diagnostic> {
        let v = match (self.get(key).cloned(), default) {
            (Some(v), _) => v,
            (None, Some(d)) => return Ok(d),
            (None, None) => return Err(self.err(key, "missing attribute")),
        };
        let Some(items) = v.as_array() else {
            return Err(self.err(key, format!("expected an array of sizes, found {v}")));
        };
        let mut dims = Vec::with_capacity(items.len());
        let mut hole = None;
        for (j, item) in items.iter().enumerate() {
            match item {
                Json::String(s) => match bindings.get(s) {
                    Some(n) => dims.push(*n),
                    None => return Err(self.err(key, format!("symbol `{s}` at [{j}] is not bound; pass --bind {s}=N"))),
                },
                _ => match (item.as_i64(), infer_from) {
                    (Some(-1), Some(_)) if hole.is_none() => {
                        hole = Some(j);
                        dims.push(1);
                    }
                    (Some(n), _) if n >= 0 => dims.push(n as u64),
                    _ => {
                        let expected = if infer_from.is_some() {
                            "a size ≥ 0, a symbol or a single -1"
                        } else {
                            "a size ≥ 0 or a symbol"
                        };
                        return Err(self.err(key, format!("[{j}]: expected {expected}, found {item}")));
                    }
                },
            }
        }
        if let (Some(j), Some(total)) = (hole, infer_from) {
            let rest = element_count(&dims).map_err(|e| self.err(key, e))?;
            if rest == 0 || total % rest != 0 {
                return Err(
                    self.err(key, format!("cannot infer the -1 at [{j}]: {total} elements do not divide by {rest}"))
                );
            }
            dims[j] = total / rest;
        }
        element_count(&dims).map_err(|e| self.err(key, e))?;
        Ok(dims)
    }
}

/// Maps a possibly negative axis into `0..rank`.
pub fn normalize_axis(a: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    if (-r..r).contains(&a) {
        Ok(if a < 0 { (a + r) as usize } else { a as usize })
    } else {
        Err(format!("axis {a} is out of range for rank {rank} (expected {}..{})", -r, r))
    }
}
