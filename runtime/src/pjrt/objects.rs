//! Counts of PJRT objects created and destroyed in this process, per kind, so
//! that tests (and users chasing a leak) can check that every object is
//! destroyed exactly once.

use std::sync::atomic::{AtomicU64, Ordering};

/// The kinds of PJRT object xlac creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    Client,
    Buffer,
    LoadedExecutable,
    Executable,
    Event,
    Error,
    SerializedExecutable,
}

impl ObjectKind {
    /// Every kind.
    pub const ALL: [ObjectKind; 7] = [
        ObjectKind::Client,
        ObjectKind::Buffer,
        ObjectKind::LoadedExecutable,
        ObjectKind::Executable,
        ObjectKind::Event,
        ObjectKind::Error,
        ObjectKind::SerializedExecutable,
    ];
}

static CREATED: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];
static DESTROYED: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];

pub(crate) fn created(kind: ObjectKind) {
    CREATED[kind as usize].fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn destroyed(kind: ObjectKind) {
    DESTROYED[kind as usize].fetch_add(1, Ordering::Relaxed);
}

/// How many objects of one kind were created and destroyed so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectCount {
    pub kind: ObjectKind,
    pub created: u64,
    pub destroyed: u64,
}

/// The counts for every kind, in [`ObjectKind::ALL`] order.
pub fn object_counts() -> Vec<ObjectCount> {
    ObjectKind::ALL
        .iter()
        .map(|&kind| ObjectCount {
            kind,
            created: CREATED[kind as usize].load(Ordering::Relaxed),
            destroyed: DESTROYED[kind as usize].load(Ordering::Relaxed),
        })
        .collect()
}
