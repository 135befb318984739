//! Weights in `.safetensors` files, read through a memory map (see
//! [`crate::mapped`]): a tensor's bytes go from the page cache to the device
//! without a copy on the host heap.

use crate::error::{Error, Result};
use crate::host::TensorRef;
use crate::DType;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use xlac_core::safetensors::{parse_header, Header};

/// An open, memory-mapped safetensors file.
pub struct WeightFile {
    path: PathBuf,
    map: memmap2::Mmap,
    header: Header,
    /// Each readable tensor's shape, as the runtime's tensors hold it.
    shapes: HashMap<String, Vec<usize>>,
}

impl WeightFile {
    /// Maps `path` and reads its header (each tensor's offsets checked to lie
    /// inside the file and its size to match its shape; a problem with one
    /// tensor is reported when that tensor is read).
    pub fn open(path: &Path) -> Result<WeightFile> {
        let map = crate::mapped::map(path)?;
        let header =
            parse_header(&map, map.len() as u64).map_err(|message| Error::Format { path: path.into(), message })?;
        let shapes = header
            .names()
            .filter_map(|n| Some((n.to_string(), header.tensor(n).ok()?.1.iter().map(|&d| d as usize).collect())))
            .collect();
        Ok(WeightFile { path: path.into(), map, header, shapes })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The names of the tensors in the file, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.header.names().collect()
    }

    /// Releases tensor `name`'s pages from resident memory once its bytes have
    /// been uploaded (see [`crate::mapped::release`]); later views still read
    /// the same bytes, from the file.
    pub fn release(&self, name: &str) -> Result<()> {
        let (_, _, range) = self.locate(name)?;
        crate::mapped::release(&self.map, range.start, range.len());
        Ok(())
    }

    /// A view of tensor `name`'s bytes in the map.
    pub fn tensor(&self, name: &str) -> Result<TensorRef<'_>> {
        let (ty, shape, range) = self.locate(name)?;
        TensorRef::new(ty, shape, &self.map[range])
            .map_err(|e| Error::Format { path: self.path.clone(), message: format!("tensor `{name}`: {e}") })
    }

    /// Tensor `name`'s dtype, shape and byte range in the map.
    fn locate(&self, name: &str) -> Result<(DType, &[usize], std::ops::Range<usize>)> {
        let (dtype, _, bytes) =
            self.header.tensor(name).map_err(|message| Error::Format { path: self.path.clone(), message })?;
        Ok((dtype, &self.shapes[name], bytes.start as usize..bytes.end as usize))
    }
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
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 2], &data).unwrap();
        safetensors::serialize_to_file([("w", view)], &None, &path).unwrap();
        let f = WeightFile::open(&path).unwrap();
        let t = f.tensor("w").unwrap();
        assert_eq!((t.ty, t.shape, t.data), (DType::F32, &[2usize, 2][..], &data[..]));
        assert!(f.tensor("nope").unwrap_err().to_string().contains("no tensor `nope`"));
        // Released pages read back the same bytes, from the file.
        f.release("w").unwrap();
        assert_eq!(f.tensor("w").unwrap().data, &data[..]);
        assert!(f.release("nope").is_err());
        drop(f);
        std::fs::write(&path, b"garbage").unwrap();
        let err = WeightFile::open(&path).err().expect("garbage must be refused");
        assert!(err.to_string().contains("not a safetensors file"), "{err}");
    }
}
