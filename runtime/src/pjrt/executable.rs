//! Loaded executables: compiled programs on a client's devices, executed on
//! argument lists of device buffers, one list per device. This layer knows
//! nothing of signatures or shardings: [`crate::Executable`] checks every
//! argument and splits tensors over the devices on top of it.

use super::api::pjrt_call;
use super::buffer::Buffer;
use super::client::Client;
use super::ffi;
use super::objects::{created, destroyed, ObjectKind};
use crate::error::{Error, Result};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

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

/// A launch id no other execution in this process is using. XLA's CPU
/// client names an execution's collectives by it (its `RunId`): on the 0.81
/// build (`xla-cpu-pjrt`), two multi-device programs running at once, on
/// one client or two, each with the default id 0, met in one all-reduce and
/// wrote each other's memory (heap corruption in
/// `InProcessCommunicator::AllReduce`: 9 of 40 runs of tests/sharding.rs
/// crashed, none of 80 with these ids, none of 30 on the 0.115 build
/// either way). Ids count up from 1 and wrap, skipping 0: only executions
/// 2^32 launches apart could share one.
fn next_launch_id() -> i32 {
    static NEXT: AtomicI32 = AtomicI32::new(1);
    loop {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        if id != 0 {
            return id;
        }
    }
}

/// A compiled program loaded on a client, destroyed when dropped.
pub struct LoadedExecutable {
    client: Client,
    raw: *mut ffi::PJRT_LoadedExecutable,
    /// The client's indices of the devices it runs on, in partition order.
    devices: Vec<usize>,
    num_outputs: usize,
    /// The bytes this executable was loaded from, if it was: re-serializing a
    /// deserialized executable loses its compiled code on the CPU plugin.
    serialized: Option<Arc<[u8]>>,
}

// SAFETY: PJRT loaded executables may be executed concurrently from several
// threads; xlac never mutates one after loading.
unsafe impl Send for LoadedExecutable {}
// SAFETY: as above.
unsafe impl Sync for LoadedExecutable {}

impl Drop for LoadedExecutable {
    fn drop(&mut self) {
        let mut args = ffi::PJRT_LoadedExecutable_Destroy_Args::new();
        args.executable = self.raw;
        let _ = pjrt_call!(self.client.inner.api, PJRT_LoadedExecutable_Destroy, &mut args);
        destroyed(ObjectKind::LoadedExecutable);
    }
}

impl LoadedExecutable {
    /// Wraps a freshly loaded executable (already counted as created), reading
    /// its devices and output count.
    pub(crate) fn new(client: Client, raw: *mut ffi::PJRT_LoadedExecutable) -> Result<LoadedExecutable> {
        let api = client.inner.api;
        let mut exe =
            LoadedExecutable { client: client.clone(), raw, devices: Vec::new(), num_outputs: 0, serialized: None };
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
        exe.num_outputs = exe.with_executable(|e| {
            let mut n = ffi::PJRT_Executable_NumOutputs_Args::new();
            n.executable = e;
            pjrt_call!(api, PJRT_Executable_NumOutputs, &mut n).map(|()| n.num_outputs)
        })?;
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

    /// Marks this executable as loaded from `bytes` (see [`LoadedExecutable::serialize`]).
    pub(crate) fn loaded_from(mut self, bytes: &[u8]) -> Self {
        self.serialized = Some(Arc::from(bytes));
        self
    }

    /// The plugin's serialization of the compiled program, loadable with
    /// [`Client::deserialize`] by a client of the same plugin and devices.
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

    /// The client's indices of the devices it runs on, in partition order.
    pub fn devices(&self) -> &[usize] {
        &self.devices
    }

    /// How many results each device returns.
    pub fn num_outputs(&self) -> usize {
        self.num_outputs
    }

    /// Executes with one argument list per device; waits for every device.
    /// An argument list must hold as many buffers as the program has
    /// arguments, each of the size the program expects: the plugin checks
    /// byte sizes only (see [`crate::Executable`] for the checked API).
    pub fn execute(&self, lists: &[Vec<&Buffer>]) -> Result<Vec<Vec<Buffer>>> {
        let api = self.client.inner.api;
        let arg_ptrs: Vec<Vec<*mut ffi::PJRT_Buffer>> =
            lists.iter().map(|l| l.iter().map(|b| b.raw).collect()).collect();
        let arg_lists: Vec<*const *mut ffi::PJRT_Buffer> = arg_ptrs.iter().map(|l| l.as_ptr()).collect();
        let mut outs: Vec<Vec<*mut ffi::PJRT_Buffer>> = vec![vec![std::ptr::null_mut(); self.num_outputs]; lists.len()];
        let out_lists: Vec<*mut *mut ffi::PJRT_Buffer> = outs.iter_mut().map(|l| l.as_mut_ptr()).collect();
        let mut events: Vec<*mut ffi::PJRT_Event> = vec![std::ptr::null_mut(); lists.len()];
        let mut options = ffi::PJRT_ExecuteOptions::new();
        options.launch_id = next_launch_id();
        let mut ex = ffi::PJRT_LoadedExecutable_Execute_Args::new();
        ex.executable = self.raw;
        ex.options = &mut options;
        ex.argument_lists = arg_lists.as_ptr();
        ex.num_devices = lists.len();
        ex.num_args = lists.first().map_or(0, Vec::len);
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
        if let Some(short) = buffers.iter().find(|b| b.len() != self.num_outputs) {
            return Err(Error::Tensor(format!("execution returned {} of {} outputs", short.len(), self.num_outputs)));
        }
        Ok(buffers)
    }
}
