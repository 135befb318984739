//! Safetensors headers: which tensors a `.safetensors` file holds, their
//! dtypes, shapes and byte ranges. The compiler reads them to check weights
//! against their declarations; the runtime reads them over its memory map to
//! find each tensor's bytes. A problem with one tensor (an unsupported dtype,
//! a range outside a truncated file) is recorded for that tensor alone, so
//! every error names the tensor it is about.

use crate::dtype::DType;
use std::collections::BTreeMap;
use std::io::Read;
use std::ops::Range;
use std::path::Path;

/// The largest header xlac reads (100 MB, as the safetensors crate allows).
const MAX_HEADER: u64 = 100_000_000;

/// One tensor's entry in a header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The dtype, or its safetensors name when xlac does not support it.
    pub dtype: Result<DType, String>,
    pub shape: Vec<u64>,
    /// The tensor's bytes, as offsets from the start of the file.
    pub bytes: Range<u64>,
}

/// A parsed header: every tensor by name, or what is wrong with its entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    tensors: BTreeMap<String, Result<TensorInfo, String>>,
}

impl Header {
    /// Tensor `name`'s entry: `None` when the file has no such tensor.
    pub fn get(&self, name: &str) -> Option<&Result<TensorInfo, String>> {
        self.tensors.get(name)
    }

    /// The tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// How many tensors the file holds.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// True for a file without tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Tensor `name`'s dtype, shape and byte range, or an error naming it.
    pub fn tensor(&self, name: &str) -> Result<(DType, &[u64], Range<u64>), String> {
        match self.tensors.get(name) {
            None => Err(format!("no tensor `{name}` ({} tensors in the file)", self.tensors.len())),
            Some(Err(e)) => Err(format!("tensor `{name}`: {e}")),
            Some(Ok(info)) => match &info.dtype {
                Ok(d) => Ok((*d, &info.shape, info.bytes.clone())),
                Err(other) => Err(format!("tensor `{name}` has dtype {other}, which xlac does not support")),
            },
        }
    }
}

/// Parses the header at the start of `file` (at least the 8-byte length and
/// the JSON header; the whole file when mapped), which is `file_len` bytes long.
pub fn parse_header(file: &[u8], file_len: u64) -> Result<Header, String> {
    let len: [u8; 8] = file
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or("not a safetensors file: shorter than its 8-byte header length")?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER || 8 + n > file_len || 8 + n > file.len() as u64 {
        return Err(format!("not a safetensors file: header length {n} does not fit in the file ({file_len} bytes)"));
    }
    let json: serde_json::Value = serde_json::from_slice(&file[8..8 + n as usize])
        .map_err(|e| format!("not a safetensors file: header is not JSON ({e})"))?;
    let table = json.as_object().ok_or("not a safetensors file: header is not a JSON object")?;
    let data_len = file_len - 8 - n;
    let tensors = table
        .iter()
        .filter(|(name, _)| *name != "__metadata__")
        .map(|(name, entry)| (name.clone(), entry_info(entry, 8 + n, data_len)))
        .collect();
    Ok(Header { tensors })
}

/// One header entry, its offsets checked against the `data_len` bytes that follow the header at `base`.
fn entry_info(entry: &serde_json::Value, base: u64, data_len: u64) -> Result<TensorInfo, String> {
    let dtype = entry.get("dtype").and_then(|d| d.as_str()).ok_or("no dtype")?;
    let numbers = |key: &str| -> Option<Vec<u64>> { entry.get(key)?.as_array()?.iter().map(|d| d.as_u64()).collect() };
    let shape = numbers("shape").ok_or("no shape")?;
    let offsets = numbers("data_offsets").filter(|o| o.len() == 2).ok_or("no data_offsets")?;
    if offsets[0] > offsets[1] || offsets[1] > data_len {
        return Err(format!(
            "data range {}..{} is outside the file's {data_len} data bytes (truncated file?)",
            offsets[0], offsets[1]
        ));
    }
    let dtype = DType::from_safetensors(dtype);
    if let Ok(d) = dtype {
        let expected = shape.iter().try_fold(d.size_bytes() as u64, |acc, &x| acc.checked_mul(x));
        if expected != Some(offsets[1] - offsets[0]) {
            return Err(format!("holds {} bytes, which is not the size of {d}{shape:?}", offsets[1] - offsets[0]));
        }
    }
    Ok(TensorInfo { dtype, shape, bytes: base + offsets[0]..base + offsets[1] })
}

/// Reads the header of the file at `path` (only the header's bytes).
pub fn read_header(path: &Path) -> Result<Header, String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let file_len = file.metadata().map_err(|e| format!("cannot stat: {e}"))?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| "not a safetensors file: shorter than its 8-byte header length".to_string())?;
    let n = u64::from_le_bytes(len).min(MAX_HEADER + 1).min(file_len.saturating_sub(8));
    let mut head = len.to_vec();
    head.resize(8 + n as usize, 0);
    file.read_exact(&mut head[8..]).map_err(|e| format!("cannot read the header: {e}"))?;
    parse_header(&head, file_len)
}

/// Reads one tensor's dtype, shape and bytes from the file at `path` (only those bytes).
pub fn read_tensor(path: &Path, name: &str) -> Result<(DType, Vec<u64>, Vec<u8>), String> {
    use std::io::{Seek, SeekFrom};
    let header = read_header(path)?;
    let (dtype, shape, bytes) = header.tensor(name)?;
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    f.seek(SeekFrom::Start(bytes.start)).map_err(|e| e.to_string())?;
    let mut data = vec![0u8; (bytes.end - bytes.start) as usize];
    f.read_exact(&mut data).map_err(|e| e.to_string())?;
    Ok((dtype, shape.to_vec(), data))
}

/// Writes `tensors` (name, dtype, shape, little-endian bytes) as a
/// safetensors file at `path`: to a temporary file beside it first, renamed
/// into place once complete, so a crash leaves any previous file intact.
pub fn write(path: &Path, tensors: &[(&str, DType, &[u64], &[u8])]) -> std::io::Result<()> {
    let entries: Vec<(&str, DType, &[u64])> = tensors.iter().map(|&(n, d, s, _)| (n, d, s)).collect();
    write_each(path, &entries, |i| Ok(std::borrow::Cow::Borrowed(tensors[i].3)))
}

/// Writes the tensors `entries` declare (name, dtype, shape) as [`write`]
/// does, asking `bytes` for each one's bytes in turn as it is written, so
/// only one tensor need be in memory at a time. Bytes of another size than
/// the entry's are an error naming the tensor, and leave no file.
pub fn write_each<'a>(
    path: &Path,
    entries: &[(&str, DType, &[u64])],
    mut bytes: impl FnMut(usize) -> std::io::Result<std::borrow::Cow<'a, [u8]>>,
) -> std::io::Result<()> {
    let mut header = serde_json::Map::new();
    let mut sizes = Vec::with_capacity(entries.len());
    let mut offset = 0u64;
    for &(name, dtype, shape) in entries {
        let size = shape.iter().product::<u64>() * dtype.size_bytes() as u64;
        let end = offset + size;
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype.safetensors_name(), "shape": shape, "data_offsets": [offset, end]}),
        );
        sizes.push(size);
        offset = end;
    }
    let mut text = serde_json::Value::Object(header).to_string().into_bytes();
    // The format pads the header with spaces to a multiple of 8 bytes.
    text.resize(text.len().div_ceil(8) * 8, b' ');
    crate::file::replace(path, |f| {
        f.write_all(&(text.len() as u64).to_le_bytes())?;
        f.write_all(&text)?;
        for (i, (&(name, dtype, shape), &size)) in entries.iter().zip(&sizes).enumerate() {
            let data = bytes(i)?;
            if data.len() as u64 != size {
                return Err(std::io::Error::other(format!(
                    "tensor `{name}`: {} bytes, where {dtype}{shape:?} takes {size}",
                    data.len()
                )));
            }
            f.write_all(&data)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file with `entries` (name, dtype, shape, offsets) and `data_len` data bytes.
    fn file(entries: &str, data_len: usize) -> Vec<u8> {
        let header = format!("{{{entries}}}");
        let mut f = (header.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(header.as_bytes());
        f.resize(f.len() + data_len, 0);
        f
    }

    #[test]
    fn each_tensor_carries_its_own_problem() {
        let f = file(
            r#""a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
               "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
               "c": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]},
               "__metadata__": {"format": "pt"}"#,
            12,
        );
        let h = parse_header(&f, f.len() as u64).unwrap();
        assert_eq!(h.len(), 3);
        let (dtype, shape, bytes) = h.tensor("a").unwrap();
        assert_eq!((dtype, shape, bytes.end - bytes.start), (DType::F32, &[2u64][..], 8));
        let e = h.tensor("b").unwrap_err();
        assert!(e.starts_with("tensor `b`: data range 8..24 is outside the file's 12 data bytes"), "{e}");
        assert!(h.tensor("c").unwrap_err().contains("dtype F4"));
        assert!(h.tensor("d").unwrap_err().contains("no tensor `d` (3 tensors in the file)"));
    }

    #[test]
    fn written_files_read_back() {
        let dir = std::env::temp_dir().join(format!("xlac-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.safetensors");
        let a: Vec<u8> = [1.0f32, 2.0, 3.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        write(&path, &[("a", DType::F32, &[3], &a), ("b", DType::I64, &[], &7i64.to_le_bytes())]).unwrap();
        let (dtype, shape, bytes) = read_tensor(&path, "a").unwrap();
        assert_eq!((dtype, shape, bytes), (DType::F32, vec![3], a));
        assert_eq!(read_tensor(&path, "b").unwrap().2, 7i64.to_le_bytes());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bytes_of_another_size_than_declared_are_an_error_and_leave_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let entries: [(&str, DType, &[u64]); 2] = [("a", DType::F32, &[2]), ("b", DType::I8, &[3])];
        let e = write_each(&path, &entries, |i| Ok(vec![0u8; 8 - i].into())).unwrap_err();
        assert_eq!(e.to_string(), "tensor `b`: 7 bytes, where i8[3] takes 3");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "a file was left");
    }

    #[test]
    fn bad_files_are_errors() {
        assert!(parse_header(&[1, 2], 2).unwrap_err().contains("shorter than"));
        let mut f = file(r#""a": 1"#, 0);
        f[0] = 0xff;
        assert!(parse_header(&f, f.len() as u64).unwrap_err().contains("does not fit"));
        let f = file(r#""a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}"#, 8);
        assert!(parse_header(&f, f.len() as u64).unwrap().tensor("a").unwrap_err().contains("not the size of f32[3]"));
    }
}
