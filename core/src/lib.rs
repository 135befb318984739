//! What xlac's compiler and runtime share, defined once: element types and
//! their limits ([`dtype`], the 8-bit floats' rounding in [`float8`]), device meshes, shardings and partitionings
//! ([`sharding`]), safetensors headers ([`safetensors`]), weight views ([`view`]) and
//! files replaced whole ([`file`]). Both crates depend on this one and on nothing of
//! each other, so the runtime builds and runs artifacts without the compiler.

pub mod dtype;
pub mod file;
pub mod float8;
pub mod rng;
pub mod safetensors;
pub mod sharding;
pub mod view;

pub use dtype::DType;
