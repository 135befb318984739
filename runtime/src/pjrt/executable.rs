//! Loaded executables, run with their signature checked: the plugin itself only
//! checks byte sizes, so a wrong dtype or shape would otherwise run silently
//! on reinterpreted bits.

use super::api::pjrt_call;
use super::buffer::Buffer;
use super::client::Client;
use super::compile_options::CompileOptions;
use super::ffi;
use super::objects::{created, destroyed, ObjectKind};
use crate::error::{Error, Result};
use crate::host::{HostTensor, TensorRef, TensorSpec};
use crate::sharding::{Partitioning, ShardedBuffer};
use std::sync::Arc;

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
}

impl Program {
    /// A single-device program.
    pub fn new(mlir: String, inputs: Vec<TensorSpec>, outputs: Vec<TensorSpec>) -> Program {
        Program { mlir, inputs, outputs, partitioning: None }
    }

    /// The options to compile it with: one partition per device of its mesh.
    pub fn compile_options(&self) -> CompileOptions {
        CompileOptions { num_replicas: 1, num_partitions: crate::sharding::partitions(self.partitioning.as_ref()) }
    }

    /// The devices an executable compiled with [`Program::compile_options`]
    /// runs on, as the client's indices in partition order: PJRT's default
    /// assignment, the client's first devices. Arguments can be uploaded there
    /// before the executable exists; [`Executable::devices`] confirms it.
    pub fn default_devices(&self) -> Vec<usize> {
        (0..crate::sharding::partitions(self.partitioning.as_ref()) as usize).collect()
    }

    /// How its arguments and results are split: as declared, or whole on one device.
    pub fn partitioning_or_single(&self) -> Partitioning {
        self.partitioning.clone().unwrap_or_else(|| Partitioning::single(&self.inputs, &self.outputs))
    }
}

/// Memory an executable needs on its device, from XLA's buffer assignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryStats {
    pub generated_code_bytes: i64,
    pub argument_bytes: i64,
    pub output_bytes: i64,
    pub alias_bytes: i64,
    pub temp_bytes: i64,
    /// Peak device memory; 0 when the plugin does not report it.
    pub peak_bytes: i64,
}

/// A compiled program loaded on a client, destroyed when dropped.
pub struct Executable {
    client: Client,
    raw: *mut ffi::PJRT_LoadedExecutable,
    /// The client's indices of the devices it runs on, in partition order.
    devices: Vec<usize>,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    /// How arguments and results are split over the devices.
    partitioning: Partitioning,
    /// The bytes this executable was loaded from, if it was: re-serializing a
    /// deserialized executable loses its compiled code on the CPU plugin.
    serialized: Option<Arc<[u8]>>,
}

// SAFETY: PJRT loaded executables may be executed concurrently from several
// threads; xlac never mutates one after loading.
unsafe impl Send for Executable {}
// SAFETY: as above.
unsafe impl Sync for Executable {}

impl Drop for Executable {
    fn drop(&mut self) {
        let mut args = ffi::PJRT_LoadedExecutable_Destroy_Args::new();
        args.executable = self.raw;
        let _ = pjrt_call!(self.client.inner.api, PJRT_LoadedExecutable_Destroy, &mut args);
        destroyed(ObjectKind::LoadedExecutable);
    }
}

impl Executable {
    /// Wraps a freshly loaded executable (already counted as created); checks
    /// that its output count matches the program's signature.
    pub(crate) fn new(client: Client, raw: *mut ffi::PJRT_LoadedExecutable, program: &Program) -> Result<Executable> {
        let api = client.inner.api;
        let mut exe = Executable {
            client: client.clone(),
            raw,
            devices: Vec::new(),
            inputs: program.inputs.clone(),
            outputs: program.outputs.clone(),
            partitioning: program.partitioning_or_single(),
            serialized: None,
        };
        let mut d = ffi::PJRT_LoadedExecutable_AddressableDevices_Args::new();
        d.executable = raw;
        pjrt_call!(api, PJRT_LoadedExecutable_AddressableDevices, &mut d)?;
        if d.num_addressable_devices == 0 {
            return Err(Error::Tensor("the executable has no addressable device".into()));
        }
        // SAFETY: the plugin returns `num_addressable_devices` device pointers owned by the client.
        let devices = unsafe { std::slice::from_raw_parts(d.addressable_devices, d.num_addressable_devices) };
        exe.devices =
            devices.iter().map(|dev| client.inner.devices.iter().position(|p| p == dev).unwrap_or(0)).collect();
        let num_outputs = exe.with_executable(|e| {
            let mut n = ffi::PJRT_Executable_NumOutputs_Args::new();
            n.executable = e;
            pjrt_call!(api, PJRT_Executable_NumOutputs, &mut n).map(|()| n.num_outputs)
        })?;
        if exe.devices.len() != exe.partitioning.mesh.devices() {
            return Err(Error::Tensor(format!(
                "the program's mesh spans {} devices but it was compiled for {}",
                exe.partitioning.mesh.devices(),
                exe.devices.len()
            )));
        }
        if num_outputs != exe.outputs.len() {
            return Err(Error::Tensor(format!(
                "the compiled program has {num_outputs} outputs but its signature lists {}",
                exe.outputs.len()
            )));
        }
        Ok(exe)
    }

    /// Calls `f` with the (unloaded) `PJRT_Executable` behind this one, destroyed afterwards.
    fn with_executable<R>(&self, f: impl FnOnce(*mut ffi::PJRT_Executable) -> Result<R>) -> Result<R> {
        let api = self.client.inner.api;
        let mut g = ffi::PJRT_LoadedExecutable_GetExecutable_Args::new();
        g.loaded_executable = self.raw;
        pjrt_call!(api, PJRT_LoadedExecutable_GetExecutable, &mut g)?;
        created(ObjectKind::Executable);
        let result = f(g.executable);
        let mut destroy = ffi::PJRT_Executable_Destroy_Args::new();
        destroy.executable = g.executable;
        let freed = pjrt_call!(api, PJRT_Executable_Destroy, &mut destroy);
        destroyed(ObjectKind::Executable);
        let r = result?;
        freed?;
        Ok(r)
    }

    /// Marks this executable as loaded from `bytes` (see [`Executable::serialize`]).
    pub(crate) fn loaded_from(mut self, bytes: &[u8]) -> Self {
        self.serialized = Some(Arc::from(bytes));
        self
    }

    /// The plugin's serialization of the compiled program, loadable with
    /// [`Client::load_serialized`] by a client of the same plugin and devices.
    /// Not byte-deterministic across compiles. An executable that was itself
    /// loaded from a serialization returns those bytes.
    pub fn serialize(&self) -> Result<Vec<u8>> {
        if let Some(bytes) = &self.serialized {
            return Ok(bytes.to_vec());
        }
        let api = self.client.inner.api;
        self.with_executable(|e| {
            let mut s = ffi::PJRT_Executable_Serialize_Args::new();
            s.executable = e;
            pjrt_call!(api, PJRT_Executable_Serialize, &mut s)?;
            created(ObjectKind::SerializedExecutable);
            // SAFETY: the plugin returns `serialized_bytes_size` bytes that live until the deleter runs.
            let bytes = unsafe { std::slice::from_raw_parts(s.serialized_bytes.cast::<u8>(), s.serialized_bytes_size) }
                .to_vec();
            if let Some(deleter) = s.serialized_executable_deleter {
                // SAFETY: the deleter frees the serialization exactly once, here.
                unsafe { deleter(s.serialized_executable) };
                destroyed(ObjectKind::SerializedExecutable);
            }
            Ok(bytes)
        })
    }

    /// XLA's cost analysis: named properties such as `flops`,
    /// `transcendentals` and `bytes accessed`, as the plugin reports them.
    pub fn cost_analysis(&self) -> Result<Vec<(String, f64)>> {
        let api = self.client.inner.api;
        self.with_executable(|e| {
            let mut a = ffi::PJRT_Executable_GetCostAnalysis_Args::new();
            a.executable = e;
            pjrt_call!(api, PJRT_Executable_GetCostAnalysis, &mut a)?;
            let mut out = Vec::with_capacity(a.num_properties);
            for i in 0..a.num_properties {
                // SAFETY: the plugin returns `num_properties` named values owned by the executable,
                // alive until it is destroyed after this closure.
                let nv = unsafe { &*a.properties.add(i) };
                // SAFETY: a (pointer, length) name owned by the executable.
                let name = unsafe { super::api::string_from(nv.name, nv.name_size) };
                // SAFETY: the union member read is the one `type_` names.
                let value = unsafe {
                    match nv.type_ {
                        ffi::NAMED_FLOAT => nv.value.float_value as f64,
                        ffi::NAMED_INT64 => nv.value.int64_value as f64,
                        _ => continue,
                    }
                };
                out.push((name, value));
            }
            Ok(out)
        })
    }

    /// XLA's compiled memory statistics.
    pub fn memory_stats(&self) -> Result<MemoryStats> {
        let api = self.client.inner.api;
        self.with_executable(|e| {
            let mut a = ffi::PJRT_Executable_GetCompiledMemoryStats_Args::new();
            a.executable = e;
            pjrt_call!(api, PJRT_Executable_GetCompiledMemoryStats, &mut a)?;
            Ok(MemoryStats {
                generated_code_bytes: a.generated_code_size_in_bytes,
                argument_bytes: a.argument_size_in_bytes,
                output_bytes: a.output_size_in_bytes,
                alias_bytes: a.alias_size_in_bytes,
                temp_bytes: a.temp_size_in_bytes,
                peak_bytes: a.peak_memory_in_bytes,
            })
        })
    }

    /// The client it is loaded on.
    pub fn client(&self) -> &Client {
        &self.client
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
        self.devices[0]
    }

    /// The indices (into the client's devices) of the devices it runs on, in
    /// partition order: one for a single-device program, N for N partitions.
    pub fn device_indices(&self) -> &[usize] {
        &self.devices
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

    fn check(&self, index: usize, ty: crate::ElementType, shape: &[usize]) -> Result<()> {
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

    /// Runs on device buffers; returns the output buffers once they are ready.
    pub fn execute(&self, args: &[&Buffer]) -> Result<Vec<Buffer>> {
        self.check_count(args.len())?;
        for (i, b) in args.iter().enumerate() {
            self.check(i, b.element_type()?, &b.dims()?)?;
        }
        Ok(self.launch(&[args.to_vec()])?.remove(0))
    }

    /// The client's indices of the devices it runs on, in partition order.
    pub fn devices(&self) -> &[usize] {
        &self.devices
    }

    /// How its arguments and results are split over its devices.
    pub fn partitioning(&self) -> &Partitioning {
        &self.partitioning
    }

    /// Uploads host tensor `t` as argument `index`, split by that argument's sharding.
    pub fn upload_argument(&self, index: usize, t: TensorRef<'_>) -> Result<ShardedBuffer> {
        self.check(index, t.ty, t.shape)?;
        let p = &self.partitioning;
        ShardedBuffer::upload(&self.client, &self.inputs[index].name, t, &p.inputs[index], &p.mesh, &self.devices)
    }

    /// Runs on tensors already on the devices, split as the program expects
    /// (see [`Executable::upload_argument`]); the results stay on the devices,
    /// split by the program's result shardings, ready to feed another call.
    pub fn execute_sharded(&self, args: &[&ShardedBuffer]) -> Result<Vec<ShardedBuffer>> {
        self.check_count(args.len())?;
        let p = &self.partitioning;
        for (i, a) in args.iter().enumerate() {
            self.check(i, a.spec().ty, &a.spec().shape)?;
            let message = if a.devices() != self.devices {
                format!("held on devices {:?}, but the program runs on devices {:?}", a.devices(), self.devices)
            } else if *a.sharding() != p.inputs[i] || *a.mesh() != p.mesh {
                format!(
                    "split as {:?} over {:?}, but the program expects {:?} over {:?}",
                    a.sharding(),
                    a.mesh().axes,
                    p.inputs[i],
                    p.mesh.axes
                )
            } else {
                continue;
            };
            return Err(Error::Argument { index: i, name: self.inputs[i].name.clone(), message });
        }
        let lists: Vec<Vec<&Buffer>> =
            (0..self.devices.len()).map(|d| args.iter().map(|a| &a.shards()[d]).collect()).collect();
        let mut per_device = self.launch(&lists)?;
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
                ShardedBuffer::from_shards(spec, sharding, p.mesh.clone(), self.devices.clone(), shards)
            })
            .collect())
    }

    /// Executes with one argument list per device; waits for every device.
    fn launch(&self, lists: &[Vec<&Buffer>]) -> Result<Vec<Vec<Buffer>>> {
        let api = self.client.inner.api;
        let arg_ptrs: Vec<Vec<*mut ffi::PJRT_Buffer>> =
            lists.iter().map(|l| l.iter().map(|b| b.raw).collect()).collect();
        let arg_lists: Vec<*const *mut ffi::PJRT_Buffer> = arg_ptrs.iter().map(|l| l.as_ptr()).collect();
        let mut outs: Vec<Vec<*mut ffi::PJRT_Buffer>> =
            vec![vec![std::ptr::null_mut(); self.outputs.len()]; lists.len()];
        let out_lists: Vec<*mut *mut ffi::PJRT_Buffer> = outs.iter_mut().map(|l| l.as_mut_ptr()).collect();
        let mut events: Vec<*mut ffi::PJRT_Event> = vec![std::ptr::null_mut(); lists.len()];
        let mut options = ffi::PJRT_ExecuteOptions::new();
        let mut ex = ffi::PJRT_LoadedExecutable_Execute_Args::new();
        ex.executable = self.raw;
        ex.options = &mut options;
        ex.argument_lists = arg_lists.as_ptr();
        ex.num_devices = lists.len();
        ex.num_args = self.inputs.len();
        ex.output_lists = out_lists.as_ptr();
        ex.device_complete_events = events.as_mut_ptr();
        pjrt_call!(api, PJRT_LoadedExecutable_Execute, &mut ex)?;
        // Own every output first, so that each is destroyed even if waiting fails.
        let buffers: Vec<Vec<Buffer>> = outs
            .into_iter()
            .map(|device| {
                device
                    .into_iter()
                    .filter(|p| !p.is_null())
                    .map(|p| {
                        created(ObjectKind::Buffer);
                        Buffer::from_raw(self.client.inner.clone(), p)
                    })
                    .collect()
            })
            .collect();
        let waited: Vec<Result<()>> = events.into_iter().map(|e| api.await_event(e)).collect();
        waited.into_iter().collect::<Result<Vec<()>>>()?;
        if let Some(short) = buffers.iter().find(|b| b.len() != self.outputs.len()) {
            return Err(Error::Tensor(format!("execution returned {} of {} outputs", short.len(), self.outputs.len())));
        }
        Ok(buffers)
    }

    /// Runs on host tensors: checks them against the signature, uploads them
    /// (split over the devices of an SPMD program), executes and copies the
    /// results back (reassembled).
    pub fn run(&self, args: &[TensorRef<'_>]) -> Result<Vec<HostTensor>> {
        self.check_count(args.len())?;
        let uploaded = args.iter().enumerate().map(|(i, a)| self.upload_argument(i, *a)).collect::<Result<Vec<_>>>()?;
        let refs: Vec<&ShardedBuffer> = uploaded.iter().collect();
        self.execute_sharded(&refs)?.iter().map(ShardedBuffer::to_host).collect()
    }
}
