//! Reads the header of a `.safetensors` file (names, dtypes, shapes) without
//! touching the tensor data, so weights can be checked against the model at
//! compile time whatever their size.

use crate::ir::dtype::DType;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// The declared dtype and shape of one tensor in a safetensors file, and where its bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The dtype, or the file's own name for a dtype xlac does not support.
    pub dtype: Result<DType, String>,
    pub shape: Vec<u64>,
    /// Byte offset of the data from the start of the file, and its length.
    pub data: (u64, u64),
}

/// Header sizes above this are refused (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100 * 1024 * 1024;

/// Reads the tensor table of `path`. Checks that every tensor's byte range lies
/// inside the file and matches its dtype and shape.
pub fn read_header(path: &Path) -> Result<BTreeMap<String, TensorInfo>, String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let file_len = file.metadata().map_err(|e| format!("cannot stat: {e}"))?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| "not a safetensors file: shorter than its 8-byte header length".to_string())?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER || 8 + n > file_len {
        return Err(format!("not a safetensors file: header length {n} does not fit in the file ({file_len} bytes)"));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(|e| format!("cannot read the header: {e}"))?;
    let json: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| format!("not a safetensors file: header is not JSON ({e})"))?;
    let table = json.as_object().ok_or("not a safetensors file: header is not a JSON object")?;
    let data_len = file_len - 8 - n;
    let mut out = BTreeMap::new();
    for (name, entry) in table {
        if name == "__metadata__" {
            continue;
        }
        let bad = |what: &str| format!("tensor `{name}`: {what}");
        let dtype_name = entry.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad("no dtype"))?;
        let shape: Vec<u64> = entry
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64()).collect())
            .ok_or_else(|| bad("no shape"))?;
        let offsets: Vec<u64> = entry
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64()).collect())
            .filter(|o: &Vec<u64>| o.len() == 2)
            .ok_or_else(|| bad("no data_offsets"))?;
        let dtype = dtype_from_safetensors(dtype_name);
        if offsets[0] > offsets[1] || offsets[1] > data_len {
            return Err(bad(&format!(
                "data range {}..{} is outside the file's {data_len} data bytes (truncated file?)",
                offsets[0], offsets[1]
            )));
        }
        if let Ok(d) = dtype {
            let expected =
                crate::ir::types::element_count(&shape).ok().and_then(|c| c.checked_mul(d.size_bytes() as u64));
            if expected != Some(offsets[1] - offsets[0]) {
                return Err(bad(&format!(
                    "holds {} bytes, which is not the size of {d}{}",
                    offsets[1] - offsets[0],
                    crate::ir::types::ShapeDisplay(&shape)
                )));
            }
        }
        out.insert(name.clone(), TensorInfo { dtype, shape, data: (8 + n + offsets[0], offsets[1] - offsets[0]) });
    }
    Ok(out)
}

/// Maps a safetensors dtype name (`F32`, `BF16`, `BOOL`, …) to a [`DType`].
pub fn dtype_from_safetensors(name: &str) -> Result<DType, String> {
    Ok(match name {
        "F32" => DType::F32,
        "F64" => DType::F64,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "I8" => DType::I8,
        "I32" => DType::I32,
        "I64" => DType::I64,
        "U8" => DType::U8,
        "BOOL" => DType::Bool,
        other => return Err(other.to_string()),
    })
}

/// Reads one tensor's bytes from a safetensors file (only those bytes).
pub fn read_tensor(path: &Path, name: &str) -> Result<(DType, Vec<u64>, Vec<u8>), String> {
    use std::io::{Seek, SeekFrom};
    let table = read_header(path)?;
    let info = table.get(name).ok_or_else(|| format!("no tensor `{name}`"))?;
    let dtype = info.dtype.clone().map_err(|d| format!("tensor `{name}` has unsupported dtype {d}"))?;
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    f.seek(SeekFrom::Start(info.data.0)).map_err(|e| e.to_string())?;
    let mut bytes = vec![0u8; info.data.1 as usize];
    f.read_exact(&mut bytes).map_err(|e| e.to_string())?;
    Ok((dtype, info.shape.clone(), bytes))
}
