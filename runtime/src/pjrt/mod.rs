//! The PJRT layer: xlac's own FFI over the PJRT C API, and safe types on top.
//! This is the only place in xlac that calls into a plugin, and (with the
//! weights memory map) the only place with `unsafe` code.

pub(crate) mod api;
pub mod buffer;
pub mod client;
pub mod compile_options;
pub mod executable;
pub(crate) mod ffi;
pub mod objects;
pub mod plugin;
