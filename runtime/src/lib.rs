//! xlac's runtime: loads PJRT plugins (XLA's CPU, GPU and TPU backends),
//! compiles StableHLO (through a compilation cache in memory and on disk) and
//! runs it on host tensors or device buffers. It does not depend on the
//! compiler, so a service can embed it alone and run `.xlac` artifacts
//! ([`Artifact`]; see `examples/run_artifact.rs`).
//!
//! ```no_run
//! use xlac_runtime::calibration::Workload;
//! use xlac_runtime::{Client, ClientOptions, CompileOptions, DType, HostTensor, Platform, Program, TensorSpec};
//! # fn main() -> Result<(), xlac_runtime::Error> {
//! // The plugin installed (of several, the fastest at f32 products of a few
//! // rows, as calibrated once per machine).
//! let plugin = xlac_runtime::calibration::discover(Platform::Cpu, None, Workload::Dense)?;
//! let client = Client::new(&plugin, &ClientOptions::default())?;
//! let spec = |name: &str| TensorSpec { name: name.into(), ty: DType::F32, shape: vec![2] };
//! let program = Program::new(
//!     "module @m { func.func public @main(%a: tensor<2xf32>) -> tensor<2xf32> { \
//!      %0 = stablehlo.add %a, %a : tensor<2xf32>  return %0 : tensor<2xf32> } }".into(),
//!     vec![spec("a")],
//!     vec![spec("out")],
//! );
//! let exe = client.compile(&program, &CompileOptions::default())?;
//! let x = HostTensor::from_array(&ndarray::array![1.0f32, 2.0]);
//! let out = exe.run(&[x.as_ref()])?;
//! assert_eq!(out[0].to_array::<f32>()?.as_slice().unwrap(), &[2.0, 4.0]);
//! # Ok(()) }
//! ```

pub mod artifact;
pub mod cache;
pub mod calibration;
pub mod config;
pub mod cpu;
pub mod element;
pub mod error;
pub mod executable;
pub mod host;
mod mapped;
pub mod memory;
pub mod npy;
pub mod pjrt;
pub mod program;
pub mod sharding;
pub mod weights;
pub mod workarounds;

pub use artifact::{Artifact, LoadOutcome, LoadedModel};
pub use cache::{CacheConfig, CacheOutcome, CompilationCache};
pub use element::Element;
pub use error::{Error, ErrorCode, Result};
pub use executable::{Arg, Executable};
pub use host::{HostTensor, TensorRef, TensorSpec};
pub use pjrt::buffer::{Buffer, HostOwner};
pub use pjrt::client::{Client, ClientOptions, DeviceInfo};
pub use pjrt::compile_options::CompileOptions;
pub use pjrt::executable::{LoadedExecutable, MemoryStats};
pub use pjrt::objects::{object_counts, ObjectCount, ObjectKind};
pub use pjrt::plugin::{Platform, Plugin};
pub use program::Program;
pub use sharding::{Mesh, Partitioning, ShardedBuffer, Sharding};
pub use xlac_core::DType;
