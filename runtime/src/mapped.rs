//! Read-only memory maps of files (weights, artifacts).
//!
//! With the PJRT layer, this is the only `unsafe` in xlac: mapping is sound only
//! while no one truncates or rewrites the file, which xlac cannot rule out (as
//! for every mmap user). A file changed underneath can give wrong data or a
//! SIGBUS; xlac never writes to files it has mapped.

use crate::error::{Error, Result};
use std::path::Path;

/// Maps `path` read-only.
pub(crate) fn map(path: &Path) -> Result<memmap2::Mmap> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io { path: path.into(), source })?;
    // SAFETY: a read-only, private mapping; see the module docs for what a
    // concurrent writer of the file could cause.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|source| Error::Io { path: path.into(), source })
}
