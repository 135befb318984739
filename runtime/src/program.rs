//! Programs: StableHLO text with the signature of its `@main` and, for an
//! SPMD program, how its arguments and results are split over a device mesh.

use crate::host::TensorSpec;
use crate::pjrt::compile_options::CompileOptions;
use crate::sharding::{single_device, Partitioning};
use std::collections::BTreeMap;

/// A StableHLO program and its signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    /// StableHLO (MLIR text) with a `func.func public @main`.
    pub mlir: String,
    /// The arguments of `@main`, in order (whole tensors, not shards).
    pub inputs: Vec<TensorSpec>,
    /// The results of `@main`, in order (whole tensors, not shards).
    pub outputs: Vec<TensorSpec>,
    /// For an SPMD program, its mesh and the shardings its text declares
    /// for arguments and results; `None` for one device.
    pub partitioning: Option<Partitioning>,
    /// (argument, output): the output reuses the argument's buffer, as the
    /// text's `tf.aliasing_output` says; such an argument is consumed by a call.
    pub donations: Vec<(usize, usize)>,
    /// The devices (client indices) it is compiled for, one per partition in
    /// partition order; `None`: PJRT's default, the client's first.
    pub devices: Option<Vec<usize>>,
    /// XLA debug options it is compiled with ([`CompileOptions::xla_flags`]).
    pub xla_flags: BTreeMap<String, bool>,
    /// Whether some product may read an operand XLA computes as a broadcast
    /// ([`CompileOptions::products_read_broadcasts`]); true unless the
    /// lowering found none.
    pub products_read_broadcasts: bool,
}

impl Program {
    /// A single-device program.
    pub fn new(mlir: String, inputs: Vec<TensorSpec>, outputs: Vec<TensorSpec>) -> Program {
        let xla_flags = BTreeMap::new();
        Program {
            mlir,
            inputs,
            outputs,
            partitioning: None,
            donations: Vec::new(),
            devices: None,
            xla_flags,
            products_read_broadcasts: true,
        }
    }

    /// The options to compile it with: one partition per device of its mesh.
    pub fn compile_options(&self) -> CompileOptions {
        CompileOptions {
            num_replicas: 1,
            num_partitions: crate::sharding::partitions(self.partitioning.as_ref()),
            devices: self.devices.clone(),
            xla_flags: self.xla_flags.clone(),
            products_read_broadcasts: self.products_read_broadcasts,
        }
    }

    /// The devices an executable compiled with [`Program::compile_options`]
    /// runs on, as the client's indices in partition order: its device, or
    /// PJRT's default assignment, the client's first devices. Arguments can be uploaded there
    /// before the executable exists; [`Executable::devices`] confirms it.
    pub fn default_devices(&self) -> Vec<usize> {
        if let Some(d) = &self.devices {
            return d.clone();
        }
        (0..crate::sharding::partitions(self.partitioning.as_ref()) as usize).collect()
    }

    /// How its arguments and results are split: as declared, or whole on one device.
    pub fn partitioning_or_single(&self) -> Partitioning {
        self.partitioning.clone().unwrap_or_else(|| single_device(&self.inputs, &self.outputs))
    }
}
