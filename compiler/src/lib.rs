//! xlac's compiler: reads model.json into a typed graph IR, verifies it,
//! prints it, and lowers it to StableHLO for XLA.
//!
//! ```no_run
//! use xlac_compiler::{backend::stablehlo::lower, frontend::json::ModelFile, ir::verify::verify};
//! # fn main() -> Result<(), xlac_compiler::Error> {
//! let model = ModelFile::load("fixtures/mlp/model.json".as_ref())?;
//! let bindings = [("batch".to_string(), 8)].into_iter().collect();
//! let module = model.build(&bindings)?;
//! verify(&module, "fixtures/mlp/model.json")?;
//! println!("{}", lower(&module).text);
//! # Ok(()) }
//! ```

pub mod autodiff;
pub mod backend;
pub mod error;
pub mod frontend;
pub mod ir;
pub mod passes;
pub mod pipeline;
pub mod plan;
pub mod stages;
pub mod train;

pub use error::{Diagnostic, Error};
pub use ir::dtype::DType;
pub use ir::types::TensorType;
