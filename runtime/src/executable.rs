//! Executables with their signature checked and their SPMD layout applied:
//! the layer above the FFI's [`LoadedExecutable`]. The plugin itself only
//! checks byte sizes, so a wrong dtype or shape would otherwise run silently
//! on reinterpreted bits; and an SPMD program takes one argument list per
//! device, which this layer splits host tensors into and reassembles results from.

use crate::error::{Error, Result};
use crate::host::{HostTensor, TensorRef, TensorSpec};
use crate::pjrt::buffer::{Buffer, HostOwner};
use crate::pjrt::client::Client;
use crate::pjrt::compile_options::CompileOptions;
use crate::pjrt::executable::{LoadedExecutable, MemoryStats};
use crate::program::Program;
use crate::sharding::{Partitioning, ShardedBuffer};
use crate::DType;

impl Client {
    /// Compiles a StableHLO program. The executable checks its arguments
    /// against `program`'s signature on every call.
    /// An SPMD program must be compiled with one partition per device of its
    /// mesh ([`Program::compile_options`]), and the client must have that many devices.
    pub fn compile(&self, program: &Program, options: &CompileOptions) -> Result<Executable> {
        if let Some(p) = &program.partitioning {
            if p.mesh.devices() != options.num_partitions.max(1) as u64 {
                return Err(Error::Tensor(format!(
                    "the program's mesh spans {} devices but it is compiled for {} partitions",
                    p.mesh.devices(),
                    options.num_partitions
                )));
            }
        }
        Executable::new(self.compile_mlir(&program.mlir, options)?, program)
    }

    /// Loads an executable serialized by [`Executable::serialize`] for `program`.
    /// The plugin rejects bytes that are not a valid serialization for it.
    pub fn load_serialized(&self, bytes: &[u8], program: &Program) -> Result<Executable> {
        Executable::new(self.deserialize(bytes)?, program)
    }
}

/// An argument of [`Executable::execute_donating`].
pub enum Arg<'a> {
    /// A buffer the program reads and the caller keeps.
    Lend(&'a ShardedBuffer),
    /// A buffer the program consumes: its memory becomes an output's.
    Give(ShardedBuffer),
}

impl Arg<'_> {
    fn buffer(&self) -> &ShardedBuffer {
        match self {
            Arg::Lend(b) => b,
            Arg::Give(b) => b,
        }
    }
}

/// A loaded program that checks every argument against its signature and
/// splits tensors over its devices as its partitioning says.
pub struct Executable {
    loaded: LoadedExecutable,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    /// (argument, output): the argument's buffer becomes the output's.
    donations: Vec<(usize, usize)>,
    /// How arguments and results are split over the devices.
    partitioning: Partitioning,
}

impl Executable {
    /// Wraps `loaded` (compiled from `program`); checks that its devices and
    /// output count match the program's mesh and signature.
    fn new(loaded: LoadedExecutable, program: &Program) -> Result<Executable> {
        let exe = Executable {
            loaded,
            inputs: program.inputs.clone(),
            outputs: program.outputs.clone(),
            donations: program.donations.clone(),
            partitioning: program.partitioning_or_single(),
        };
        if exe.devices().len() as u64 != exe.partitioning.mesh.devices() {
            return Err(Error::Tensor(format!(
                "the program's mesh spans {} devices but it was compiled for {}",
                exe.partitioning.mesh.devices(),
                exe.devices().len()
            )));
        }
        if exe.loaded.num_outputs() != exe.outputs.len() {
            return Err(Error::Tensor(format!(
                "the compiled program has {} outputs but its signature lists {}",
                exe.loaded.num_outputs(),
                exe.outputs.len()
            )));
        }
        Ok(exe)
    }

    /// The plugin's serialization of the compiled program, loadable with
    /// [`Client::load_serialized`] by a client of the same plugin and devices.
    /// Not byte-deterministic across compiles. An executable that was itself
    /// loaded from a serialization returns those bytes.
    pub fn serialize(&self) -> Result<Vec<u8>> {
        self.loaded.serialize()
    }

    /// XLA's cost analysis: named properties such as `flops`,
    /// `transcendentals` and `bytes accessed`, as the plugin reports them.
    pub fn cost_analysis(&self) -> Result<Vec<(String, f64)>> {
        self.loaded.cost_analysis()
    }

    /// XLA's compiled memory statistics.
    pub fn memory_stats(&self) -> Result<MemoryStats> {
        self.loaded.memory_stats()
    }

    /// The client it is loaded on.
    pub fn client(&self) -> &Client {
        self.loaded.client()
    }

    /// The argument signature.
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    /// The result signature.
    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// The index (into the client's devices) of the device it runs on.
    pub fn device_index(&self) -> usize {
        self.devices()[0]
    }

    /// The client's indices of the devices it runs on, in partition order:
    /// one for a single-device program, N for N partitions.
    pub fn devices(&self) -> &[usize] {
        self.loaded.devices()
    }

    /// How its arguments and results are split over its devices.
    pub fn partitioning(&self) -> &Partitioning {
        &self.partitioning
    }

    fn check_count(&self, n: usize) -> Result<()> {
        if n == self.inputs.len() {
            return Ok(());
        }
        let names: Vec<_> = self.inputs.iter().map(|s| s.name.as_str()).collect();
        Err(Error::Argument {
            index: n.min(self.inputs.len()),
            name: names.get(n).copied().unwrap_or("?").into(),
            message: format!("expected {} arguments ({}), found {n}", self.inputs.len(), names.join(", ")),
        })
    }

    fn check(&self, index: usize, ty: DType, shape: &[usize]) -> Result<()> {
        let spec = &self.inputs[index];
        if spec.ty != ty || spec.shape != shape {
            return Err(Error::Argument {
                index,
                name: spec.name.clone(),
                message: format!("expected {}{:?}, found {ty}{shape:?}", spec.ty, spec.shape),
            });
        }
        Ok(())
    }

    /// Runs a single-device program on device buffers; returns the output
    /// buffers once they are ready.
    pub fn execute(&self, args: &[&Buffer]) -> Result<Vec<Buffer>> {
        self.check_count(args.len())?;
        for (i, b) in args.iter().enumerate() {
            self.check(i, b.element_type()?, &b.dims()?)?;
        }
        if self.devices().len() != 1 {
            return Err(Error::Tensor(format!(
                "the program runs on {} devices: pass sharded buffers (execute_sharded)",
                self.devices().len()
            )));
        }
        for &(i, _) in &self.donations {
            self.refuse_donating_host_memory(i, args[i])?;
        }
        Ok(self.loaded.execute(&[args.to_vec()])?.remove(0))
    }

    /// An error if argument `index`, which the program donates (writes its
    /// result into), is a buffer reading host memory in place.
    fn refuse_donating_host_memory(&self, index: usize, buffer: &Buffer) -> Result<()> {
        if !buffer.reads_host_memory() {
            return Ok(());
        }
        Err(Error::Argument {
            index,
            name: self.inputs[index].name.clone(),
            message: "the program donates this argument, but its buffer reads host memory in place \
                      (upload_argument_in_place): the program would write into that memory; upload a copy"
                .into(),
        })
    }

    /// [`Executable::upload_argument`] for host memory that can outlive the
    /// buffer, kept valid by `owner` (an artifact's weights in its memory
    /// map): for a single-device program, an argument the program does not
    /// donate is lent to the plugin, which reads it in place where it can
    /// ([`Client::upload_in_place`]: no copy, no second resident copy of the
    /// bytes); anything else is copied as by `upload_argument`.
    pub fn upload_argument_in_place(&self, index: usize, t: TensorRef<'_>, owner: HostOwner) -> Result<ShardedBuffer> {
        self.check(index, t.ty, t.shape)?;
        let donated = self.donations.iter().any(|&(d, _)| d == index);
        let devices = self.devices();
        if devices.len() != 1 || donated {
            return self.upload_argument(index, t);
        }
        let p = &self.partitioning;
        let buffer = self.client().upload_in_place(t, devices[0], owner)?;
        let spec = self.inputs[index].clone();
        Ok(ShardedBuffer::from_shards(spec, p.inputs[index].clone(), p.mesh.clone(), devices.to_vec(), vec![buffer]))
    }

    /// Uploads host tensor `t` as argument `index`, split by that argument's sharding.
    pub fn upload_argument(&self, index: usize, t: TensorRef<'_>) -> Result<ShardedBuffer> {
        self.check(index, t.ty, t.shape)?;
        let p = &self.partitioning;
        ShardedBuffer::upload(self.client(), &self.inputs[index].name, t, &p.inputs[index], &p.mesh, self.devices())
    }

    /// Runs on tensors already on the devices, split as the program expects
    /// (see [`Executable::upload_argument`]); the results stay on the devices,
    /// split by the program's result shardings, ready to feed another call.
    /// A program that donates arguments runs through [`Executable::execute_donating`].
    pub fn execute_sharded(&self, args: &[&ShardedBuffer]) -> Result<Vec<ShardedBuffer>> {
        if let Some(&(i, _)) = self.donations.first() {
            return Err(Error::Argument {
                index: i,
                name: self.inputs[i].name.clone(),
                message: "the program donates this argument's buffer: pass it by value (execute_donating)".into(),
            });
        }
        self.launch_sharded(args)
    }

    /// The arguments this program consumes, each updated in place into an output.
    pub fn donations(&self) -> &[(usize, usize)] {
        &self.donations
    }

    /// [`Executable::execute_sharded`] for a program that donates arguments:
    /// each donated argument is handed over ([`Arg::Give`]) and its buffer
    /// becomes the output it is paired with; the others are lent ([`Arg::Lend`]).
    pub fn execute_donating(&self, args: Vec<Arg<'_>>) -> Result<Vec<ShardedBuffer>> {
        for (i, a) in args.iter().enumerate() {
            let donated = self.donations.iter().any(|&(d, _)| d == i);
            if donated != matches!(a, Arg::Give(_)) {
                let how = if donated { "donates it: give it" } else { "does not donate it: lend it" };
                return Err(Error::Argument {
                    index: i,
                    name: self.inputs[i].name.clone(),
                    message: format!("the program {how}"),
                });
            }
            if donated {
                for shard in a.buffer().shards() {
                    self.refuse_donating_host_memory(i, shard)?;
                }
            }
        }
        let refs: Vec<&ShardedBuffer> = args.iter().map(Arg::buffer).collect();
        // The given buffers are consumed by the call; dropping them frees only their handles.
        self.launch_sharded(&refs)
    }

    fn launch_sharded(&self, args: &[&ShardedBuffer]) -> Result<Vec<ShardedBuffer>> {
        self.check_count(args.len())?;
        let p = &self.partitioning;
        let devices = self.devices();
        for (i, a) in args.iter().enumerate() {
            self.check(i, a.spec().ty, &a.spec().shape)?;
            let message = if a.devices() != devices {
                format!("held on devices {:?}, but the program runs on devices {devices:?}", a.devices())
            } else if *a.sharding() != p.inputs[i] || *a.mesh() != p.mesh {
                format!(
                    "split as {} over [{}], but the program expects {} over [{}]",
                    a.sharding(),
                    a.mesh(),
                    p.inputs[i],
                    p.mesh
                )
            } else {
                continue;
            };
            return Err(Error::Argument { index: i, name: self.inputs[i].name.clone(), message });
        }
        let lists: Vec<Vec<&Buffer>> =
            (0..devices.len()).map(|d| args.iter().map(|a| &a.shards()[d]).collect()).collect();
        let mut per_device = self.loaded.execute(&lists)?;
        let mut outputs: Vec<Vec<Buffer>> = (0..self.outputs.len()).map(|_| Vec::new()).collect();
        for device in &mut per_device {
            for (o, b) in device.drain(..).enumerate() {
                outputs[o].push(b);
            }
        }
        Ok(outputs
            .into_iter()
            .enumerate()
            .map(|(o, shards)| {
                let (spec, sharding) = (self.outputs[o].clone(), p.outputs[o].clone());
                ShardedBuffer::from_shards(spec, sharding, p.mesh.clone(), devices.to_vec(), shards)
            })
            .collect())
    }

    /// Runs on host tensors: checks them against the signature, uploads them
    /// (split over the devices of an SPMD program), executes and copies the
    /// results back (reassembled).
    pub fn run(&self, args: &[TensorRef<'_>]) -> Result<Vec<HostTensor>> {
        self.check_count(args.len())?;
        let uploaded = args.iter().enumerate().map(|(i, a)| self.upload_argument(i, *a)).collect::<Result<Vec<_>>>()?;
        // Freshly uploaded: donating them costs the caller nothing.
        let refs: Vec<&ShardedBuffer> = uploaded.iter().collect();
        self.launch_sharded(&refs)?.iter().map(ShardedBuffer::to_host).collect()
    }
}
