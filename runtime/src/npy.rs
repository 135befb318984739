//! NumPy `.npy` files (format versions 1–3, little-endian, C order) for host tensors.
//!
//! NumPy has no bfloat16, so a bf16 tensor is written as float32 — a lossless
//! widening; every other element type is written as itself.

use crate::error::{Error, Result};
use crate::host::{HostTensor, TensorRef};
use crate::DType;
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";

fn descr(ty: DType) -> &'static str {
    match ty {
        // NumPy has no bfloat16 nor 8-bit floats: widened to f32, losslessly.
        DType::F32 | DType::BF16 | DType::F8E4M3FN | DType::F8E4M3FNUZ | DType::F8E5M2 | DType::F8E5M2FNUZ => "<f4",
        DType::F64 => "<f8",
        DType::F16 => "<f2",
        DType::I8 => "|i1",
        DType::I16 => "<i2",
        DType::I32 => "<i4",
        DType::I64 => "<i8",
        DType::U8 => "|u1",
        DType::U16 => "<u2",
        DType::U32 => "<u4",
        DType::U64 => "<u8",
        DType::Bool => "|b1",
    }
}

/// Reads a `.npy` file.
pub fn read(path: &Path) -> Result<HostTensor> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.into(), source })?;
    parse(&bytes).map_err(|message| Error::Format { path: path.into(), message })
}

/// Parses `.npy` bytes.
pub fn parse(bytes: &[u8]) -> Result<HostTensor, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file (bad magic)".into());
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(format!("unsupported .npy format version {v}")),
    };
    let header = bytes
        .get(start..start + len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated or non-text .npy header")?;
    let value_of = |key: &str| -> Result<&str, String> {
        let at = header.find(&format!("'{key}'")).ok_or(format!("header has no '{key}'"))?;
        Ok(header[at + key.len() + 2..].trim_start().trim_start_matches(':').trim_start())
    };
    let descr_text = value_of("descr")?;
    let descr = descr_text.strip_prefix('\'').and_then(|s| s.split('\'').next()).ok_or("bad 'descr'")?;
    if descr.starts_with('>') {
        return Err(format!("big-endian dtype {descr} is not supported; save with a little-endian dtype"));
    }
    let ty = match descr.trim_start_matches(['<', '|', '=']) {
        "f4" => DType::F32,
        "f8" => DType::F64,
        "f2" => DType::F16,
        "i1" => DType::I8,
        "i2" => DType::I16,
        "i4" => DType::I32,
        "i8" => DType::I64,
        "u1" => DType::U8,
        "u2" => DType::U16,
        "u4" => DType::U32,
        "u8" => DType::U64,
        "b1" => DType::Bool,
        other => {
            return Err(format!(
                "dtype {other} is not supported (expected f4, f8, f2, i1, i2, i4, i8, u1, u2, u4, u8 or b1)"
            ))
        }
    };
    let fortran = value_of("fortran_order")?.starts_with("True");
    let shape_text = value_of("shape")?;
    let inner = shape_text.strip_prefix('(').and_then(|s| s.split(')').next()).ok_or("bad 'shape'")?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("bad dimension `{s}` in 'shape'")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut data = bytes[start + len..].to_vec();
    TensorRef::new(ty, &shape, &data).map_err(|e| format!("data does not match the header: {e}"))?;
    if fortran {
        data = fortran_to_c(&data, &shape, ty.size_bytes());
    }
    HostTensor::new(ty, shape, data).map_err(|e| e.to_string())
}

/// Reorders column-major element bytes into row-major.
fn fortran_to_c(data: &[u8], shape: &[usize], elem: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut index = vec![0usize; shape.len()];
    for _ in 0..data.len() / elem.max(1) {
        // Column-major offset of the current row-major index.
        let (mut off, mut stride) = (0, 1);
        for (i, &d) in index.iter().zip(shape) {
            off += i * stride;
            stride *= d;
        }
        out.extend_from_slice(&data[off * elem..(off + 1) * elem]);
        for k in (0..shape.len()).rev() {
            index[k] += 1;
            if index[k] < shape[k] {
                break;
            }
            index[k] = 0;
        }
    }
    out
}

/// Writes `t` to a `.npy` file (version 1.0); bf16 is widened to float32.
pub fn write(path: &Path, t: &HostTensor) -> Result<()> {
    std::fs::write(path, to_bytes(t)).map_err(|source| Error::Io { path: path.into(), source })
}

/// The `.npy` bytes of `t`.
pub fn to_bytes(t: &HostTensor) -> Vec<u8> {
    let shape = match t.shape() {
        [d] => format!("({d},)"),
        dims => format!("({})", dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}", descr(t.element_type()));
    // Pad so that the data starts on a 64-byte boundary, ending with a newline.
    let total = (10 + header.len() + 1).div_ceil(64) * 64;
    header.push_str(&" ".repeat(total - 10 - header.len() - 1));
    header.push('\n');
    let mut out = Vec::with_capacity(total + t.data().len() * 2);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    if let Some(f) = t.element_type().float8() {
        for &b in t.data() {
            out.extend_from_slice(&(f.decode(b) as f32).to_le_bytes());
        }
    } else if t.element_type() == DType::BF16 {
        for c in t.data().chunks_exact(2) {
            out.extend_from_slice(&half::bf16::from_le_bytes([c[0], c[1]]).to_f32().to_le_bytes());
        }
    } else {
        out.extend_from_slice(t.data());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn round_trip() {
        let t = HostTensor::from_array(&array![[1i32, 2, 3], [4, 5, 6]]);
        assert_eq!(parse(&to_bytes(&t)).unwrap(), t);
        let s = HostTensor::from_array(&ndarray::arr0(2.5f64));
        assert_eq!(parse(&to_bytes(&s)).unwrap(), s);
        let v = HostTensor::from_array(&array![true, false]);
        assert_eq!(parse(&to_bytes(&v)).unwrap(), v);
    }

    #[test]
    fn fortran_order_is_reordered() {
        let c = HostTensor::from_array(&array![[1i32, 2, 3], [4, 5, 6]]);
        let mut bytes = to_bytes(&c);
        let header = String::from_utf8_lossy(&bytes[10..]).replace("False", "True ");
        bytes[10..10 + header.len()].copy_from_slice(header.as_bytes());
        let data_at = bytes.len() - 24;
        let col_major: Vec<u8> = [1i32, 4, 2, 5, 3, 6].iter().flat_map(|x| x.to_le_bytes()).collect();
        bytes[data_at..].copy_from_slice(&col_major);
        assert_eq!(parse(&bytes).unwrap(), c);
    }

    #[test]
    fn bf16_is_widened_losslessly() {
        let b = HostTensor::from_array(&array![half::bf16::from_f32(1.5), half::bf16::from_f32(-0.25)]);
        let back = parse(&to_bytes(&b)).unwrap();
        assert_eq!(back.element_type(), DType::F32);
        assert_eq!(back.to_f64_vec(), vec![1.5, -0.25]);
    }

    #[test]
    fn bad_files_are_explained() {
        assert!(parse(b"hello").unwrap_err().contains("magic"));
        let mut bytes = to_bytes(&HostTensor::from_array(&array![1.0f32, 2.0]));
        bytes.truncate(bytes.len() - 1);
        assert!(parse(&bytes).unwrap_err().contains("needs 8 bytes"));
    }
}
