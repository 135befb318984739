//! xlac's compiler: reads model.json into a typed graph IR, verifies it,
//! prints it, and lowers it to StableHLO for XLA.
//!
//! ```no_run
//! use xlac_compiler::{format::ModelFile, lower::lower, verify::verify};
//! # fn main() -> Result<(), xlac_compiler::Error> {
//! let model = ModelFile::load("fixtures/mlp/model.json".as_ref())?;
//! let bindings = [("batch".to_string(), 8)].into_iter().collect();
//! let module = model.build(&bindings)?;
//! verify(&module, "fixtures/mlp/model.json")?;
//! println!("{}", lower(&module).text);
//! # Ok(()) }
//! ```

pub mod dtype;
pub mod error;
pub mod format;
pub mod hf;
pub mod infer;
pub mod interp;
pub mod ir;
pub mod lower;
pub mod op;
pub mod pass;
pub mod print;
pub mod safetensors_header;
pub mod sharding;
pub mod text;
pub mod types;
pub mod verify;

pub use dtype::DType;
pub use error::{Diagnostic, Error};
pub use types::TensorType;
