//! Host memory checks: every large host allocation is checked against the
//! memory the machine has available first, so that a tensor too large for it
//! is an error naming the tensor and the bytes, not an abort in the allocator.

use crate::error::{Error, Result};

/// Bytes of host memory available to new allocations: `MemAvailable` from
/// `/proc/meminfo` where there is one; `None` elsewhere (then only the
/// allocator's own refusal is caught).
pub fn available_host_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Checks that `bytes` for `what` (a tensor, named) fit in the available host memory.
pub fn check_fits(what: &str, bytes: u64) -> Result<()> {
    Available::now().check_fits(what, bytes)
}

/// The host memory available at one moment, read once to check many
/// allocations against (each read of `/proc/meminfo` is a system call and a
/// parse; a model checks one tensor per parameter, value or output).
#[derive(Clone, Copy, Debug)]
pub struct Available(Option<u64>);

impl Available {
    /// The memory available now ([`available_host_bytes`]).
    pub fn now() -> Available {
        Available(available_host_bytes())
    }

    /// Checks that `bytes` for `what` (a tensor, named) fit in it.
    pub fn check_fits(self, what: &str, bytes: u64) -> Result<()> {
        match self.0 {
            Some(available) if bytes > available => {
                Err(Error::OutOfMemory { what: what.into(), bytes, available: Some(available) })
            }
            _ => Ok(()),
        }
    }
}

/// A zeroed buffer of `len` bytes for `what`, or an error when the host cannot hold it.
pub fn zeroed(what: &str, len: usize) -> Result<Vec<u8>> {
    let mut v = reserve(what, len)?;
    v.resize(len, 0);
    Ok(v)
}

/// An empty buffer with room for `len` bytes for `what`, or an error when the host cannot hold it.
pub fn reserve(what: &str, len: usize) -> Result<Vec<u8>> {
    check_fits(what, len as u64)?;
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| Error::OutOfMemory {
        what: what.into(),
        bytes: len as u64,
        available: None,
    })?;
    Ok(v)
}

/// `bytes` for people: `6.40 TB`, `512.0 MB`, `64 B`.
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1_000 => format!("{bytes} B"),
        1_000..1_000_000 => format!("{:.1} kB", b / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", b / 1e6),
        1_000_000_000..1_000_000_000_000 => format!("{:.2} GB", b / 1e9),
        _ => format!("{:.2} TB", b / 1e12),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allocation_larger_than_the_machine_is_an_error() {
        let e = zeroed("input `x`", usize::MAX / 2).unwrap_err().to_string();
        assert!(e.starts_with("input `x` needs 9223372.04 TB of host memory"), "{e}");
        assert_eq!(zeroed("small", 16).unwrap(), vec![0u8; 16]);
        assert_eq!(human_bytes(6_400_000_000_000), "6.40 TB");
    }

    #[test]
    fn a_snapshot_checks_against_the_bytes_it_read() {
        let e = Available(Some(1_000_000)).check_fits("weight `w`", 2_000_000).unwrap_err().to_string();
        assert_eq!(e, "weight `w` needs 2.0 MB of host memory, more than the 1.0 MB available");
        assert!(Available(Some(1_000_000)).check_fits("weight `w`", 1_000_000).is_ok());
        // Where the machine does not say, only the allocator's refusal is caught.
        assert!(Available(None).check_fits("weight `w`", u64::MAX).is_ok());
    }
}
