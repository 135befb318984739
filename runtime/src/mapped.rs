//! Read-only memory maps of files (weights, artifacts).
//!
//! With the PJRT layer, this is the only `unsafe` in xlac: mapping is sound only
//! while no one truncates or rewrites the file, which xlac cannot rule out (as
//! for every mmap user). A file changed underneath can give wrong data or a
//! SIGBUS; xlac never writes to files it has mapped. An artifact's map may be
//! read by the plugin in place, as the memory of its weights' device buffers
//! (`Client::upload_in_place`); the buffers keep the map alive, and a
//! program never writes into them (such buffers are never donated), so the
//! read-only mapping is never written through either.

use crate::error::{Error, Result};
use std::path::Path;

/// Drops the pages holding `map[start..start + len]` from this process's
/// resident memory (once their bytes were copied to a device): streaming a
/// checkpoint then needs about its size in memory, not twice that. A later
/// read faults the pages back in from the file.
pub(crate) fn release(map: &memmap2::Mmap, start: usize, len: usize) {
    // SAFETY: the map is a private, read-only file mapping that xlac never
    // writes, so MADV_DONTNEED only discards clean pages: any later access,
    // through any outstanding slice, re-reads the same bytes from the file
    // (the module's caveat about files changed underneath aside). A failure
    // only means the pages stay resident.
    let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len) };
}

/// Maps `path` read-only.
pub(crate) fn map(path: &Path) -> Result<memmap2::Mmap> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io { path: path.into(), source })?;
    // SAFETY: a read-only, private mapping; see the module docs for what a
    // concurrent writer of the file could cause.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|source| Error::Io { path: path.into(), source })
}
