//! Backends: what runs or emits a verified module. `stablehlo` lowers it to
//! StableHLO text for XLA; `interp` is the reference interpreter (every op in
//! f64 or i64), the oracle the passes and the lowering are tested against.
//!
//! Depends on [`crate::ir`].

pub mod interp;
pub mod random;
pub mod stablehlo;
