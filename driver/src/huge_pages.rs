//! Transparent huge pages for XLA's temporaries in training, asked of glibc
//! at start-up. `xlac train` and `xlac sweep` call [`restart_with_huge_pages`]
//! first thing; a program that trains through this crate can do the same
//! at the top of its `main`, before it starts any thread.
//!
//! A PJRT CPU plugin allocates each run's temporaries afresh with `malloc`
//! on one of its worker threads and frees them when the run ends (the
//! MiniLM-L6 training step of docs/benchmarks.md: one 275 MiB block a step).
//! glibc maps a block over 32 MiB with `mmap` and unmaps it on `free`, so
//! every step faults the block in again, 4 KiB at a time: 80,000 page faults
//! a step there. With glibc's `glibc.malloc.hugetlb=1` tunable, glibc asks
//! the kernel for transparent huge pages on such blocks (`madvise`), the
//! faults fall to one per 2 MiB, and that step took 14% less time. XLA's
//! compiler is slower with it (that step's cold compile took 1.2-2 s
//! longer), and programs run once or with small temporaries gain nothing
//! measurable, so only the commands that train (`train`, `sweep`) ask.
//!
//! Tunables are read when a process starts, so xlac starts itself again,
//! once, with the tunable added to `GLIBC_TUNABLES`, where the kernel gives
//! huge pages on request only (its `madvise` mode; in `always` mode they come
//! without asking, in `never` mode not at all). Setting the tunable yourself,
//! to any value (`GLIBC_TUNABLES=glibc.malloc.hugetlb=0` turns it off), keeps
//! xlac from restarting. [`current`] says what this process got.

/// The tunable xlac adds.
const TUNABLE: &str = "glibc.malloc.hugetlb";

/// Where Linux says when it gives transparent huge pages.
const THP_MODE: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

/// What this process gets for its large blocks, as [`current`] reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HugePages {
    /// glibc asks the kernel for them (`glibc.malloc.hugetlb` set, not to 0,
    /// with the kernel in `madvise` mode).
    Asked,
    /// The kernel gives them unasked (its `always` mode).
    Always,
    /// None: `glibc.malloc.hugetlb=0`, the tunable missing in `madvise` mode
    /// (the restart failed), or the kernel's `never` mode.
    Off,
    /// Not known: no kernel mode to read (not Linux), or not glibc.
    Unknown,
}

impl HugePages {
    /// One line for a user: what the process gets, and why.
    pub fn describe(self) -> &'static str {
        match self {
            HugePages::Asked => "asked of glibc for XLA's temporaries (GLIBC_TUNABLES glibc.malloc.hugetlb)",
            HugePages::Always => "given by the kernel unasked (transparent_hugepage: always)",
            HugePages::Off => "off (GLIBC_TUNABLES glibc.malloc.hugetlb unset or 0, or transparent_hugepage: never)",
            HugePages::Unknown => "not known on this system",
        }
    }
}

/// The value `GLIBC_TUNABLES` gives the tunable, if it names it.
fn tunable_value(tunables: &str) -> Option<&str> {
    tunables.split(':').find_map(|t| t.split_once('=').filter(|(name, _)| *name == TUNABLE).map(|(_, v)| v))
}

/// The `GLIBC_TUNABLES` value to restart with, given the current one and the
/// kernel's transparent-huge-page mode (the contents of [`THP_MODE`], the
/// mode in use bracketed); `None` where a restart would change nothing: the
/// tunable is already set (to any value), or the kernel's mode is not
/// `madvise`.
fn restart_tunables(current: Option<&str>, thp_mode: &str) -> Option<String> {
    let current = current.unwrap_or("");
    if tunable_value(current).is_some() || !thp_mode.contains("[madvise]") {
        return None;
    }
    Some(if current.is_empty() { format!("{TUNABLE}=1") } else { format!("{current}:{TUNABLE}=1") })
}

/// What huge pages a process with these tunables gets from a kernel in this
/// transparent-huge-page mode (as [`restart_tunables`] takes them).
fn state(tunables: Option<&str>, thp_mode: &str) -> HugePages {
    if thp_mode.contains("[always]") {
        HugePages::Always
    } else if thp_mode.contains("[never]") {
        HugePages::Off
    } else if thp_mode.contains("[madvise]") {
        match tunables.and_then(tunable_value) {
            Some(v) if v.trim() != "0" => HugePages::Asked,
            _ => HugePages::Off,
        }
    } else {
        HugePages::Unknown
    }
}

/// What this process gets: after [`restart_with_huge_pages`], `Asked` where
/// the kernel gives them on request and the user did not turn them off.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn current() -> HugePages {
    let mode = std::fs::read_to_string(THP_MODE).unwrap_or_default();
    state(std::env::var("GLIBC_TUNABLES").ok().as_deref(), &mode)
}

/// Elsewhere glibc's tunables do not apply.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn current() -> HugePages {
    HugePages::Unknown
}

/// Starts this process again with huge pages asked of glibc, where
/// [`restart_tunables`] says that changes something; returns (and the
/// process goes on as it is) where it does not, or where the restart fails.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn restart_with_huge_pages() {
    use std::os::unix::process::CommandExt;
    let current = std::env::var("GLIBC_TUNABLES").ok();
    let mode = std::fs::read_to_string(THP_MODE).unwrap_or_default();
    let Some(tunables) = restart_tunables(current.as_deref(), &mode) else { return };
    let mut args = std::env::args_os();
    let Some(name) = args.next() else { return };
    // `exec` returns only when it fails; xlac then runs on without the tunable.
    let _ = std::process::Command::new("/proc/self/exe").arg0(name).args(args).env("GLIBC_TUNABLES", tunables).exec();
}

/// Elsewhere glibc's tunables do not apply: nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn restart_with_huge_pages() {}

#[cfg(test)]
mod tests {
    use super::{restart_tunables, state, HugePages};

    const MADVISE: &str = "always [madvise] never\n";

    #[test]
    fn the_tunable_is_added_in_madvise_mode() {
        assert_eq!(restart_tunables(None, MADVISE).as_deref(), Some("glibc.malloc.hugetlb=1"));
        assert_eq!(restart_tunables(Some(""), MADVISE).as_deref(), Some("glibc.malloc.hugetlb=1"));
    }

    #[test]
    fn other_tunables_are_kept() {
        assert_eq!(
            restart_tunables(Some("glibc.malloc.arena_max=2"), MADVISE).as_deref(),
            Some("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
        );
    }

    #[test]
    fn a_tunable_set_by_the_user_is_left_alone() {
        assert_eq!(restart_tunables(Some("glibc.malloc.hugetlb=0"), MADVISE), None);
        assert_eq!(restart_tunables(Some("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"), MADVISE), None);
    }

    #[test]
    fn a_similar_name_is_not_the_tunable() {
        assert_eq!(
            restart_tunables(Some("glibc.malloc.hugetlbx=0"), MADVISE).as_deref(),
            Some("glibc.malloc.hugetlbx=0:glibc.malloc.hugetlb=1")
        );
    }

    #[test]
    fn no_restart_unless_the_kernel_gives_huge_pages_on_request() {
        assert_eq!(restart_tunables(None, "[always] madvise never\n"), None);
        assert_eq!(restart_tunables(None, "always madvise [never]\n"), None);
        assert_eq!(restart_tunables(None, ""), None);
    }

    #[test]
    fn the_state_follows_the_kernel_mode_then_the_tunable() {
        assert_eq!(state(Some("glibc.malloc.hugetlb=1"), MADVISE), HugePages::Asked);
        assert_eq!(state(Some("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=2"), MADVISE), HugePages::Asked);
        assert_eq!(state(Some("glibc.malloc.hugetlb=0"), MADVISE), HugePages::Off);
        assert_eq!(state(None, MADVISE), HugePages::Off);
        assert_eq!(state(Some("glibc.malloc.hugetlbx=1"), MADVISE), HugePages::Off);
        assert_eq!(state(Some("glibc.malloc.hugetlb=0"), "[always] madvise never\n"), HugePages::Always);
        assert_eq!(state(Some("glibc.malloc.hugetlb=1"), "always madvise [never]\n"), HugePages::Off);
        assert_eq!(state(None, ""), HugePages::Unknown);
    }
}
