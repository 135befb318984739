//! Loaded executables, run with their signature checked: the plugin itself only
//! checks byte sizes, so a wrong dtype or shape would otherwise run silently
//! on reinterpreted bits.

use super::api::pjrt_call;
use super::buffer::Buffer;
use super::client::Client;
use super::ffi;
use super::objects::{created, destroyed, ObjectKind};
use crate::error::{Error, Result};
use crate::host::{HostTensor, TensorRef, TensorSpec};

/// A StableHLO program and its signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    /// StableHLO (MLIR text) with a `func.func public @main`.
    pub mlir: String,
    /// The arguments of `@main`, in order.
    pub inputs: Vec<TensorSpec>,
    /// The results of `@main`, in order.
    pub outputs: Vec<TensorSpec>,
}

/// A compiled program loaded on a client, destroyed when dropped.
pub struct Executable {
    client: Client,
    raw: *mut ffi::PJRT_LoadedExecutable,
    device: *mut ffi::PJRT_Device,
    device_index: usize,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
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
            device: std::ptr::null_mut(),
            device_index: 0,
            inputs: program.inputs.clone(),
            outputs: program.outputs.clone(),
        };
        let mut d = ffi::PJRT_LoadedExecutable_AddressableDevices_Args::new();
        d.executable = raw;
        pjrt_call!(api, PJRT_LoadedExecutable_AddressableDevices, &mut d)?;
        if d.num_addressable_devices == 0 {
            return Err(Error::Tensor("the executable has no addressable device".into()));
        }
        // SAFETY: the plugin returns `num_addressable_devices` device pointers owned by the client.
        exe.device = unsafe { *d.addressable_devices };
        exe.device_index = client.inner.devices.iter().position(|&p| p == exe.device).unwrap_or(0);
        let mut g = ffi::PJRT_LoadedExecutable_GetExecutable_Args::new();
        g.loaded_executable = raw;
        pjrt_call!(api, PJRT_LoadedExecutable_GetExecutable, &mut g)?;
        created(ObjectKind::Executable);
        let mut n = ffi::PJRT_Executable_NumOutputs_Args::new();
        n.executable = g.executable;
        let counted = pjrt_call!(api, PJRT_Executable_NumOutputs, &mut n);
        let mut destroy = ffi::PJRT_Executable_Destroy_Args::new();
        destroy.executable = g.executable;
        let freed = pjrt_call!(api, PJRT_Executable_Destroy, &mut destroy);
        destroyed(ObjectKind::Executable);
        counted.and(freed)?;
        if n.num_outputs != exe.outputs.len() {
            return Err(Error::Tensor(format!(
                "the compiled program has {} outputs but its signature lists {}",
                n.num_outputs,
                exe.outputs.len()
            )));
        }
        Ok(exe)
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
        self.device_index
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
        let api = self.client.inner.api;
        let arg_ptrs: Vec<*mut ffi::PJRT_Buffer> = args.iter().map(|b| b.raw).collect();
        let arg_lists: [*const *mut ffi::PJRT_Buffer; 1] = [arg_ptrs.as_ptr()];
        let mut outs: Vec<*mut ffi::PJRT_Buffer> = vec![std::ptr::null_mut(); self.outputs.len()];
        let out_lists: [*mut *mut ffi::PJRT_Buffer; 1] = [outs.as_mut_ptr()];
        let mut events: [*mut ffi::PJRT_Event; 1] = [std::ptr::null_mut()];
        let mut options = ffi::PJRT_ExecuteOptions::new();
        let mut ex = ffi::PJRT_LoadedExecutable_Execute_Args::new();
        ex.executable = self.raw;
        ex.options = &mut options;
        ex.argument_lists = arg_lists.as_ptr();
        ex.num_devices = 1;
        ex.num_args = arg_ptrs.len();
        ex.output_lists = out_lists.as_ptr();
        ex.device_complete_events = events.as_mut_ptr();
        pjrt_call!(api, PJRT_LoadedExecutable_Execute, &mut ex)?;
        // Own every output first, so that each is destroyed even if waiting fails.
        let buffers: Vec<Buffer> = outs
            .into_iter()
            .filter(|p| !p.is_null())
            .map(|p| {
                created(ObjectKind::Buffer);
                Buffer::from_raw(self.client.inner.clone(), p)
            })
            .collect();
        api.await_event(events[0])?;
        if buffers.len() != self.outputs.len() {
            return Err(Error::Tensor(format!(
                "execution returned {} of {} outputs",
                buffers.len(),
                self.outputs.len()
            )));
        }
        Ok(buffers)
    }

    /// Runs on host tensors: checks them against the signature, uploads them,
    /// executes and copies the results back.
    pub fn run(&self, args: &[TensorRef<'_>]) -> Result<Vec<HostTensor>> {
        self.check_count(args.len())?;
        for (i, a) in args.iter().enumerate() {
            self.check(i, a.ty, a.shape)?;
        }
        let buffers = args.iter().map(|a| self.client.upload(*a, self.device_index)).collect::<Result<Vec<_>>>()?;
        let refs: Vec<&Buffer> = buffers.iter().collect();
        self.execute(&refs)?.iter().map(Buffer::to_host).collect()
    }
}
