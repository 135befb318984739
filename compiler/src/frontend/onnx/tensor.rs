//! Tensors known at import time: initializers, `Constant` nodes and what the
//! importer folds from them (shape computations above all). Large ones stay
//! as the file's little-endian bytes; folding decodes small ones to elements,
//! whose integers may be shape symbols (`Shape` of a symbolic input).

use std::path::Path;

use xlac_core::DType;

use super::proto::{TensorProto, EXTERNAL};

/// A dimension: `coef` times the product of shape symbols (sorted), so
/// `batch·seq` and sizes computed from several symbols stay exact.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Dim {
    coef: u64,
    syms: Vec<String>,
}

impl Dim {
    pub(super) fn size(n: u64) -> Dim {
        Dim { coef: n, syms: vec![] }
    }

    /// Each of `ns` as a size.
    pub(super) fn sizes(ns: &[u64]) -> Vec<Dim> {
        ns.iter().map(|&n| Dim::size(n)).collect()
    }

    pub(super) fn sym(s: &str) -> Dim {
        Dim { coef: 1, syms: vec![s.to_string()] }
    }

    /// The product of `syms`.
    pub(super) fn sym_product(syms: &[String]) -> Dim {
        let mut syms = syms.to_vec();
        syms.sort();
        Dim { coef: 1, syms }
    }

    /// The size, when no symbol is involved.
    pub(super) fn as_size(&self) -> Option<u64> {
        self.syms.is_empty().then_some(self.coef)
    }

    /// The symbols it depends on.
    pub(super) fn symbols(&self) -> &[String] {
        &self.syms
    }

    pub(super) fn mul(&self, o: &Dim) -> Dim {
        let mut syms: Vec<String> = self.syms.iter().chain(&o.syms).cloned().collect();
        syms.sort();
        Dim { coef: self.coef * o.coef, syms }
    }

    /// `self / o` when it divides exactly.
    pub(super) fn div(&self, o: &Dim) -> Option<Dim> {
        if o.coef == 0 || !self.coef.is_multiple_of(o.coef) {
            return None;
        }
        let mut syms = self.syms.clone();
        for s in &o.syms {
            let i = syms.iter().position(|x| x == s)?;
            syms.remove(i);
        }
        Some(Dim { coef: self.coef / o.coef, syms })
    }

    /// As model.json writes a dimension: a size or one symbol; `None` for a product.
    pub(super) fn to_json(&self) -> Option<serde_json::Value> {
        match (self.coef, self.syms.as_slice()) {
            (n, []) => Some(n.into()),
            (1, [s]) => Some(s.as_str().into()),
            _ => None,
        }
    }

    /// An element of a shape tensor.
    pub(super) fn elem(&self) -> Elem {
        match self.as_size() {
            Some(n) => Elem::Int(n as i64),
            None => Elem::Sym(self.clone()),
        }
    }
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.coef != 1 || self.syms.is_empty() {
            write!(f, "{}", self.coef)?;
        }
        for (i, s) in self.syms.iter().enumerate() {
            if i > 0 || self.coef != 1 {
                write!(f, "·")?;
            }
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

/// The product of `dims`.
pub(super) fn product(dims: &[Dim]) -> Dim {
    dims.iter().fold(Dim::size(1), |a, d| a.mul(d))
}

/// One element of a known tensor.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Elem {
    Int(i64),
    Float(f64),
    /// A size that depends on shape symbols (`batch`, `batch·seq`).
    Sym(Dim),
}

impl Elem {
    pub(super) fn as_f64(&self) -> Option<f64> {
        match self {
            Elem::Int(i) => Some(*i as f64),
            Elem::Float(f) => Some(*f),
            Elem::Sym(_) => None,
        }
    }

    pub(super) fn as_i64(&self) -> Option<i64> {
        match self {
            Elem::Int(i) => Some(*i),
            Elem::Float(f) => Some(*f as i64),
            Elem::Sym(_) => None,
        }
    }
}

/// A tensor whose values the importer knows.
#[derive(Clone, Debug)]
pub(super) struct Known {
    pub dtype: DType,
    pub shape: Vec<u64>,
    data: Data,
}

#[derive(Clone, Debug)]
enum Data {
    /// Little-endian, as `dtype` stores it.
    Bytes(Vec<u8>),
    Elems(Vec<Elem>),
}

impl Known {
    /// A tensor of `elems` (row-major); integers and floats are rounded to `dtype`.
    pub(super) fn new(dtype: DType, shape: Vec<u64>, elems: Vec<Elem>) -> Known {
        debug_assert_eq!(shape.iter().product::<u64>() as usize, elems.len());
        let elems = elems.into_iter().map(|e| round(dtype, e)).collect();
        Known { dtype, shape, data: Data::Elems(elems) }
    }

    /// A tensor of little-endian `bytes` as `dtype` stores them.
    pub(super) fn from_bytes(dtype: DType, shape: Vec<u64>, bytes: Vec<u8>) -> Known {
        Known { dtype, shape, data: Data::Bytes(bytes) }
    }

    /// A scalar.
    pub(super) fn scalar(dtype: DType, e: Elem) -> Known {
        Known::new(dtype, vec![], vec![e])
    }

    /// The number of elements.
    pub(super) fn len(&self) -> usize {
        self.shape.iter().product::<u64>() as usize
    }

    /// The elements, row-major.
    pub(super) fn elems(&self) -> Vec<Elem> {
        match &self.data {
            Data::Elems(e) => e.clone(),
            Data::Bytes(b) => decode(self.dtype, b),
        }
    }

    /// The elements as dimensions (a shape tensor's), `None` if one is negative or not an integer.
    pub(super) fn dims(&self) -> Option<Vec<Dim>> {
        self.elems()
            .into_iter()
            .map(|e| match e {
                Elem::Int(i) if i >= 0 => Some(Dim::size(i as u64)),
                Elem::Sym(d) => Some(d),
                _ => None,
            })
            .collect()
    }

    /// The elements as integers, `None` if one is a symbol.
    pub(super) fn ints(&self) -> Option<Vec<i64>> {
        self.elems().iter().map(Elem::as_i64).collect()
    }

    /// The elements as floats, `None` if one is a symbol.
    pub(super) fn floats(&self) -> Option<Vec<f64>> {
        self.elems().iter().map(Elem::as_f64).collect()
    }

    /// True when some element is a shape symbol.
    pub(super) fn has_symbols(&self) -> bool {
        matches!(&self.data, Data::Elems(e) if e.iter().any(|e| matches!(e, Elem::Sym(_))))
    }

    /// The little-endian bytes; `None` when an element is a symbol.
    pub(super) fn bytes(&self) -> Option<Vec<u8>> {
        match &self.data {
            Data::Bytes(b) => Some(b.clone()),
            Data::Elems(e) => {
                let mut out = Vec::with_capacity(e.len() * self.dtype.size_bytes());
                for x in e {
                    encode(self.dtype, x, &mut out)?;
                }
                Some(out)
            }
        }
    }

    /// The same elements in another shape (of as many elements).
    pub(super) fn reshaped(&self, shape: Vec<u64>) -> Known {
        Known { dtype: self.dtype, shape, data: self.data.clone() }
    }
}

/// `e` as `dtype` holds it: floats rounded, integers wrapped, bools 0 or 1.
fn round(dtype: DType, e: Elem) -> Elem {
    match (dtype, e) {
        (_, Elem::Sym(s)) => Elem::Sym(s),
        (DType::Bool, e) => Elem::Int((e.as_f64() != Some(0.0)) as i64),
        (d, e) if d.is_float() => Elem::Float(d.round_f64(e.as_f64().unwrap_or_default())),
        (d, Elem::Float(f)) => Elem::Int(d.int_from_f64(f)),
        (d, Elem::Int(i)) => Elem::Int(d.wrap_i64(i)),
    }
}

fn decode(dtype: DType, b: &[u8]) -> Vec<Elem> {
    let n = dtype.size_bytes();
    b.chunks_exact(n)
        .map(|c| match dtype {
            DType::F32 => Elem::Float(f32::from_le_bytes(c.try_into().unwrap()) as f64),
            DType::F64 => Elem::Float(f64::from_le_bytes(c.try_into().unwrap())),
            DType::F16 => Elem::Float(half::f16::from_le_bytes(c.try_into().unwrap()).to_f64()),
            DType::BF16 => Elem::Float(half::bf16::from_le_bytes(c.try_into().unwrap()).to_f64()),
            DType::Bool => Elem::Int(c[0] as i64),
            d if d.is_float() => Elem::Float(d.float8().expect("the other floats are read above").decode(c[0])),
            // Integers widened with their type's sign (a u64 kept as its bits).
            _ => {
                let mut b = [0u8; 8];
                b[..n].copy_from_slice(c);
                Elem::Int(dtype.wrap_i64(i64::from_le_bytes(b)))
            }
        })
        .collect()
}

fn encode(dtype: DType, e: &Elem, out: &mut Vec<u8>) -> Option<()> {
    let f = e.as_f64()?;
    let i = e.as_i64()?;
    match dtype {
        DType::F32 => out.extend_from_slice(&(f as f32).to_le_bytes()),
        DType::F64 => out.extend_from_slice(&f.to_le_bytes()),
        DType::F16 => out.extend_from_slice(&half::f16::from_f64(f).to_le_bytes()),
        DType::BF16 => out.extend_from_slice(&half::bf16::from_f64(f).to_le_bytes()),
        d if d.is_float() => out.push(d.float8().expect("the other floats are written above").encode(d.round_f64(f))),
        // Integers and bools: the low bytes of the two's complement.
        _ => out.extend_from_slice(&i.to_le_bytes()[..dtype.size_bytes()]),
    }
    Some(())
}

/// The xlac dtype of ONNX's `TensorProto.DataType` code, or its ONNX name when xlac has none.
pub(super) fn dtype(code: i32) -> Result<DType, &'static str> {
    Ok(match code {
        1 => DType::F32,
        2 => DType::U8,
        3 => DType::I8,
        4 => DType::U16,
        5 => DType::I16,
        6 => DType::I32,
        7 => DType::I64,
        12 => DType::U32,
        13 => DType::U64,
        9 => DType::Bool,
        10 => DType::F16,
        11 => DType::F64,
        16 => DType::BF16,
        8 => return Err("string"),
        14 => return Err("complex64"),
        15 => return Err("complex128"),
        17 => DType::F8E4M3FN,
        18 => DType::F8E4M3FNUZ,
        19 => DType::F8E5M2,
        20 => DType::F8E5M2FNUZ,
        24 => return Err("float8e8m0"),
        21 | 22 | 25 | 26 => return Err("int4/int2"),
        23 | 27 | 28 => return Err("float4/float6"),
        _ => return Err("an undefined type"),
    })
}

/// Reads a `TensorProto`; external data is read from `dir` (the model's
/// directory). Errors say what is wrong, for the caller to place.
pub(super) fn from_proto(t: &TensorProto, dir: &Path) -> Result<Known, String> {
    let dtype = dtype(t.data_type).map_err(|name| format!("unsupported: element type {name}"))?;
    let shape = t
        .dims
        .iter()
        .map(|&d| u64::try_from(d).map_err(|_| format!("negative dimension {d} in {:?}", t.dims)))
        .collect::<Result<Vec<u64>, _>>()?;
    let count: u64 = shape.iter().product();
    let want = count as usize * dtype.size_bytes();
    let bytes = if t.data_location == EXTERNAL {
        external(t, dir, want)?
    } else if !t.raw_data.is_empty() || count == 0 {
        t.raw_data.clone()
    } else {
        typed_field(t, dtype)?
    };
    if bytes.len() != want {
        return Err(format!("{} holds {} bytes of data, its type and shape {shape:?} need {want}", dtype, bytes.len()));
    }
    Ok(Known { dtype, shape, data: Data::Bytes(bytes) })
}

/// The data of a tensor written in its typed field (`float_data`, `int32_data`, ...), little-endian.
fn typed_field(t: &TensorProto, dtype: DType) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    match dtype {
        DType::F32 => t.float_data.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        DType::F64 => t.double_data.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        DType::I64 => t.int64_data.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        DType::I32 => t.int32_data.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        // int32_data holds the bits of the narrower types, one per entry.
        DType::F16 | DType::BF16 => t.int32_data.iter().for_each(|&x| out.extend_from_slice(&(x as u16).to_le_bytes())),
        DType::I8 | DType::U8 | DType::Bool => t.int32_data.iter().for_each(|&x| out.push(x as u8)),
        DType::F8E4M3FN | DType::F8E4M3FNUZ | DType::F8E5M2 | DType::F8E5M2FNUZ => {
            t.int32_data.iter().for_each(|&x| out.push(x as u8))
        }
        DType::I16 | DType::U16 => t.int32_data.iter().for_each(|&x| out.extend_from_slice(&(x as u16).to_le_bytes())),
        // uint64_data holds uint32 and uint64.
        DType::U32 => t.uint64_data.iter().for_each(|&x| out.extend_from_slice(&(x as u32).to_le_bytes())),
        DType::U64 => t.uint64_data.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
    }
    Ok(out)
}

/// External data: `location` (relative to `dir`), `offset` and `length`.
fn external(t: &TensorProto, dir: &Path, want: usize) -> Result<Vec<u8>, String> {
    use std::io::{Read, Seek, SeekFrom};
    let entry = |k: &str| t.external_data.iter().find(|e| e.key == k).map(|e| e.value.as_str());
    let location = entry("location").ok_or("external data without a `location`")?;
    let number = |k: &str| -> Result<Option<u64>, String> {
        entry(k)
            .map(|v| v.parse::<u64>().map_err(|_| format!("external data `{k}` is `{v}`, expected a byte count")))
            .transpose()
    };
    let offset = number("offset")?.unwrap_or(0);
    let length = number("length")?.unwrap_or(want as u64);
    let path = dir.join(location);
    let mut f = std::fs::File::open(&path).map_err(|e| format!("external data {}: {e}", path.display()))?;
    f.seek(SeekFrom::Start(offset)).map_err(|e| format!("external data {}: {e}", path.display()))?;
    let mut bytes = vec![0u8; length as usize];
    f.read_exact(&mut bytes)
        .map_err(|e| format!("external data {}: {length} bytes from offset {offset}: {e}", path.display()))?;
    Ok(bytes)
}
