//! Weights in `.safetensors` files, read through a memory map (see
//! [`crate::mapped`]): a tensor's bytes go from the page cache to the device
//! without a copy on the host heap.

use crate::element::ElementType;
use crate::error::{Error, Result};
use crate::host::TensorRef;
use safetensors::tensor::Metadata;
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// An open, memory-mapped safetensors file.
pub struct WeightFile {
    path: PathBuf,
    map: memmap2::Mmap,
    header_len: usize,
    metadata: Metadata,
    shapes: HashMap<String, Vec<usize>>,
}

impl WeightFile {
    /// Maps `path` and validates its header (offsets inside the file, sizes matching shapes).
    pub fn open(path: &Path) -> Result<WeightFile> {
        let map = crate::mapped::map(path)?;
        let (header_len, metadata) = safetensors::SafeTensors::read_metadata(&map)
            .map_err(|e| Error::Format { path: path.into(), message: format!("not a valid safetensors file: {e}") })?;
        let shapes = metadata.tensors().into_iter().map(|(name, info)| (name, info.shape.clone())).collect();
        Ok(WeightFile { path: path.into(), map, header_len, metadata, shapes })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The names of the tensors in the file.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.shapes.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Releases tensor `name`'s pages from resident memory once its bytes have
    /// been uploaded (see [`crate::mapped::release`]); later views still read
    /// the same bytes, from the file.
    pub fn release(&self, name: &str) -> Result<()> {
        let (_, range) = self.locate(name)?;
        crate::mapped::release(&self.map, range.start, range.len());
        Ok(())
    }

    /// A view of tensor `name`'s bytes in the map.
    pub fn tensor(&self, name: &str) -> Result<TensorRef<'_>> {
        let (ty, range) = self.locate(name)?;
        TensorRef::new(ty, &self.shapes[name], &self.map[range])
            .map_err(|e| Error::Format { path: self.path.clone(), message: format!("tensor `{name}`: {e}") })
    }

    /// Tensor `name`'s element type and byte range in the map, checked to lie inside it.
    fn locate(&self, name: &str) -> Result<(ElementType, std::ops::Range<usize>)> {
        let bad = |message: String| Error::Format { path: self.path.clone(), message };
        let info = self.metadata.info(name).ok_or_else(|| bad(format!("no tensor `{name}`")))?;
        let ty = element_type(info.dtype)
            .ok_or_else(|| bad(format!("tensor `{name}` has dtype {:?}, which xlac does not support", info.dtype)))?;
        let base = 8 + self.header_len;
        let range = base + info.data_offsets.0..base + info.data_offsets.1;
        if range.start > range.end || range.end > self.map.len() {
            return Err(bad(format!("tensor `{name}` lies outside the file")));
        }
        Ok((ty, range))
    }
}

fn element_type(d: Dtype) -> Option<ElementType> {
    Some(match d {
        Dtype::F32 => ElementType::F32,
        Dtype::F64 => ElementType::F64,
        Dtype::F16 => ElementType::F16,
        Dtype::BF16 => ElementType::BF16,
        Dtype::I8 => ElementType::I8,
        Dtype::I32 => ElementType::I32,
        Dtype::I64 => ElementType::I64,
        Dtype::U8 => ElementType::U8,
        Dtype::BOOL => ElementType::Bool,
        _ => return None,
    })
}

/// Weight files opened once each, by path.
#[derive(Default)]
pub struct WeightFiles {
    files: HashMap<PathBuf, WeightFile>,
}

impl WeightFiles {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens `path` unless already open, and returns it.
    pub fn open(&mut self, path: &Path) -> Result<&WeightFile> {
        if !self.files.contains_key(path) {
            let f = WeightFile::open(path)?;
            self.files.insert(path.to_path_buf(), f);
        }
        Ok(&self.files[path])
    }

    /// A file opened before with [`WeightFiles::open`].
    pub fn get(&self, path: &Path) -> Result<&WeightFile> {
        self.files
            .get(path)
            .ok_or_else(|| Error::Format { path: path.into(), message: "weight file was not opened".into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tensors_and_reports_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(Dtype::F32, vec![2, 2], &data).unwrap();
        safetensors::serialize_to_file([("w", view)], &None, &path).unwrap();
        let f = WeightFile::open(&path).unwrap();
        let t = f.tensor("w").unwrap();
        assert_eq!((t.ty, t.shape, t.data), (ElementType::F32, &[2usize, 2][..], &data[..]));
        assert!(f.tensor("nope").unwrap_err().to_string().contains("no tensor `nope`"));
        // Released pages read back the same bytes, from the file.
        f.release("w").unwrap();
        assert_eq!(f.tensor("w").unwrap().data, &data[..]);
        assert!(f.release("nope").is_err());
        drop(f);
        std::fs::write(&path, b"garbage").unwrap();
        let err = WeightFile::open(&path).err().expect("garbage must be refused");
        assert!(err.to_string().contains("not a valid safetensors"), "{err}");
    }
}
