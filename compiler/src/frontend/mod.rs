//! Frontends: the formats a model is read from, each becoming the IR.
//! `json` (model.json, format v1) is the reference; `text` (the printed IR)
//! `hf` (Hugging Face checkpoint directories) and `onnx` (`.onnx` files) become model documents that
//! the `json` reader checks, so one validator serves every form.
//!
//! Depends on [`crate::ir`].

pub mod hf;
pub mod json;
pub mod onnx;
pub mod text;
