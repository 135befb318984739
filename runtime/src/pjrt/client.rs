//! A PJRT client: the devices of one plugin, compilation and host-to-device transfers.

use super::api::{pjrt_call, string_from, Api};
use super::buffer::{Buffer, HostOwner};
use super::compile_options::CompileOptions;
use super::executable::LoadedExecutable;
use super::ffi;
use super::objects::{created, destroyed, ObjectKind};
use super::plugin::Plugin;
use crate::error::{Error, Result};
use crate::host::TensorRef;
use std::ffi::c_char;
use std::sync::Arc;

/// Options for creating a client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientOptions {
    /// For the CPU plugin: how many devices to expose (its default is the core count, at most 4 here).
    pub cpu_device_count: Option<u32>,
}

/// One device of a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub id: i32,
    pub kind: String,
    pub description: String,
}

pub(crate) struct ClientInner {
    pub api: Api,
    pub raw: *mut ffi::PJRT_Client,
    pub devices: Vec<*mut ffi::PJRT_Device>,
}

// SAFETY: a PJRT client is thread-safe (PjRtClient's methods may be called
// concurrently); devices are owned by the client and immutable.
unsafe impl Send for ClientInner {}
// SAFETY: as above.
unsafe impl Sync for ClientInner {}

impl Drop for ClientInner {
    fn drop(&mut self) {
        let mut args = ffi::PJRT_Client_Destroy_Args::new();
        args.client = self.raw;
        // Buffers and executables hold an Arc to this, so none outlives the client.
        let _ = pjrt_call!(self.api, PJRT_Client_Destroy, &mut args);
        destroyed(ObjectKind::Client);
    }
}

/// A PJRT client. Cheap to clone; the client is destroyed with its last clone
/// and the last buffer or executable made from it.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<ClientInner>,
    plugin: Plugin,
    platform_name: String,
    platform_version: String,
    devices: Vec<DeviceInfo>,
}

impl Client {
    /// Creates a client of `plugin`.
    pub fn new(plugin: &Plugin, options: &ClientOptions) -> Result<Client> {
        let api = plugin.api;
        let name = "cpu_device_count";
        let mut named = Vec::new();
        if let Some(n) = options.cpu_device_count {
            let mut v = ffi::PJRT_NamedValue::new();
            v.name = name.as_ptr().cast::<c_char>();
            v.name_size = name.len();
            v.type_ = ffi::NAMED_INT64;
            v.value = ffi::NamedValueUnion { int64_value: n as i64 };
            v.value_size = 1;
            named.push(v);
        }
        let mut args = ffi::PJRT_Client_Create_Args::new();
        args.create_options = named.as_ptr();
        args.num_options = named.len();
        pjrt_call!(api, PJRT_Client_Create, &mut args)?;
        created(ObjectKind::Client);
        let mut inner = ClientInner { api, raw: args.client, devices: Vec::new() };
        let mut d = ffi::PJRT_Client_AddressableDevices_Args::new();
        d.client = inner.raw;
        pjrt_call!(api, PJRT_Client_AddressableDevices, &mut d)?;
        // SAFETY: the plugin returns an array of `num_addressable_devices` device
        // pointers owned by the client.
        inner.devices =
            unsafe { std::slice::from_raw_parts(d.addressable_devices, d.num_addressable_devices) }.to_vec();
        let mut p = ffi::PJRT_Client_PlatformName_Args::new();
        p.client = inner.raw;
        pjrt_call!(api, PJRT_Client_PlatformName, &mut p)?;
        // SAFETY: (pointer, length) owned by the client.
        let platform_name = unsafe { string_from(p.platform_name, p.platform_name_size) };
        let mut v = ffi::PJRT_Client_PlatformVersion_Args::new();
        v.client = inner.raw;
        pjrt_call!(api, PJRT_Client_PlatformVersion, &mut v)?;
        // SAFETY: (pointer, length) owned by the client.
        let platform_version = unsafe { string_from(v.platform_version, v.platform_version_size) };
        let devices = describe(api, &inner.devices)?;
        Ok(Client { inner: Arc::new(inner), plugin: plugin.clone(), platform_name, platform_version, devices })
    }

    /// The plugin this client belongs to.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// An identity shared by the clones of this client, unique among live clients.
    pub fn id(&self) -> *const () {
        Arc::as_ptr(&self.inner).cast()
    }

    /// The platform's name, e.g. `cpu` or `cuda`.
    pub fn platform_name(&self) -> &str {
        &self.platform_name
    }

    /// The platform's version string.
    pub fn platform_version(&self) -> &str {
        &self.platform_version
    }

    /// How many devices this process can address.
    pub fn device_count(&self) -> usize {
        self.inner.devices.len()
    }

    /// The addressable devices, described once when the client was created.
    pub fn devices(&self) -> &[DeviceInfo] {
        &self.devices
    }

    /// Compiles StableHLO text (a `func.func public @main` module) with
    /// `options`, and the plugin build's [workarounds](crate::workarounds).
    /// The client must have the devices the options ask for.
    pub fn compile_mlir(&self, mlir: &str, options: &CompileOptions) -> Result<LoadedExecutable> {
        let needed = options.num_partitions.max(1) as usize * options.num_replicas.max(1) as usize;
        if needed > self.inner.devices.len() {
            return Err(Error::Tensor(format!(
                "the program runs on {needed} devices but the client has {}{}",
                self.inner.devices.len(),
                if self.platform_name() == "cpu" {
                    "; on the CPU plugin pass --cpu-devices N (ClientOptions::cpu_device_count)"
                } else {
                    ""
                }
            )));
        }
        let api = self.inner.api;
        let format = "mlir";
        let mut code = mlir.as_bytes().to_vec();
        let mut p = ffi::PJRT_Program::new();
        p.code = code.as_mut_ptr().cast::<c_char>();
        p.code_size = code.len();
        p.format = format.as_ptr().cast::<c_char>();
        p.format_size = format.len();
        let device_ids = match &options.devices {
            Some(devices) if devices.len() != needed => {
                return Err(Error::Tensor(format!(
                    "the program runs on {needed} devices but is placed on {} ({devices:?})",
                    devices.len()
                )))
            }
            Some(devices) => Some(
                devices
                    .iter()
                    .map(|&d| {
                        self.devices.get(d).map(|info| info.id as i64).ok_or_else(|| {
                            Error::Tensor(format!("device {d} does not exist ({} devices)", self.devices.len()))
                        })
                    })
                    .collect::<Result<Vec<i64>>>()?,
            ),
            None => None,
        };
        let opts = options.encode_placed(device_ids.as_deref(), &options.workarounds(self.plugin.api_version()));
        let mut args = ffi::PJRT_Client_Compile_Args::new();
        args.client = self.inner.raw;
        args.program = &p;
        args.compile_options = opts.as_ptr().cast::<c_char>();
        args.compile_options_size = opts.len();
        pjrt_call!(api, PJRT_Client_Compile, &mut args)?;
        created(ObjectKind::LoadedExecutable);
        LoadedExecutable::new(self.clone(), args.executable)
    }

    /// Loads an executable serialized by [`LoadedExecutable::serialize`]. The
    /// plugin rejects bytes that are not a valid serialization for it.
    pub fn deserialize(&self, bytes: &[u8]) -> Result<LoadedExecutable> {
        let mut args = ffi::PJRT_Executable_DeserializeAndLoad_Args::new();
        args.client = self.inner.raw;
        args.serialized_executable = bytes.as_ptr().cast::<c_char>();
        args.serialized_executable_size = bytes.len();
        pjrt_call!(self.inner.api, PJRT_Executable_DeserializeAndLoad, &mut args)?;
        created(ObjectKind::LoadedExecutable);
        Ok(LoadedExecutable::new(self.clone(), args.loaded_executable)?.loaded_from(bytes))
    }

    /// Copies a host tensor to device `device` (an index into [`Client::devices`]).
    pub fn upload(&self, t: TensorRef<'_>, device: usize) -> Result<Buffer> {
        let (raw, done) = self.buffer_from_host(t, device, ffi::HOST_BUFFER_IMMUTABLE_UNTIL_TRANSFER_COMPLETES)?;
        let buffer = Buffer::from_raw(self.inner.clone(), raw);
        // `t.data` must stay untouched until the transfer is done.
        self.inner.api.await_event(done)?;
        Ok(buffer)
    }

    /// A host tensor on device `device`, its memory lent to the plugin: one
    /// that can read host memory in place (the CPU plugins, for dense data
    /// aligned as they require) uses `t.data` itself for the buffer's whole
    /// life, without a copy; others copy it. `owner` keeps `t.data` valid and
    /// unchanged: the buffer holds it until the plugin lets go of the memory.
    /// Such a buffer is never donated ([`Buffer::reads_host_memory`]).
    pub fn upload_in_place(&self, t: TensorRef<'_>, device: usize, owner: HostOwner) -> Result<Buffer> {
        let (raw, done) = self.buffer_from_host(t, device, ffi::HOST_BUFFER_IMMUTABLE_ZERO_COPY)?;
        let mut buffer = Buffer::from_raw(self.inner.clone(), raw);
        // A plugin that does not tell the address is taken at its word: in place.
        let in_place = buffer.address().is_none_or(|a| a == t.data.as_ptr() as usize);
        if t.data.is_empty() || !in_place {
            // Copied after all: the host memory is free once the transfer is done.
            self.inner.api.await_event(done)?;
        } else {
            buffer.hold_host(done, owner);
        }
        Ok(buffer)
    }

    /// `PJRT_Client_BufferFromHostBuffer` for `t` on `device`: the new buffer
    /// (counted as created) and the event that fires once the plugin no longer
    /// reads `t.data`.
    fn buffer_from_host(
        &self,
        t: TensorRef<'_>,
        device: usize,
        semantics: std::ffi::c_int,
    ) -> Result<(*mut ffi::PJRT_Buffer, *mut ffi::PJRT_Event)> {
        let dev = *self.inner.devices.get(device).ok_or_else(|| {
            Error::Tensor(format!("device {device} does not exist ({} devices)", self.inner.devices.len()))
        })?;
        let dims: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
        // A strided view is copied dense by the plugin (its strides were checked to stay in `t.data`).
        let strides: Option<Vec<i64>> = t.byte_strides.map(|s| s.iter().map(|&b| b as i64).collect());
        let mut args = ffi::PJRT_Client_BufferFromHostBuffer_Args::new();
        args.client = self.inner.raw;
        args.data = t.data.as_ptr().cast();
        args.type_ = super::buffer::buffer_type(t.ty);
        args.dims = dims.as_ptr();
        args.num_dims = dims.len();
        if let Some(s) = &strides {
            args.byte_strides = s.as_ptr();
            args.num_byte_strides = s.len();
        }
        args.host_buffer_semantics = semantics;
        args.device = dev;
        pjrt_call!(self.inner.api, PJRT_Client_BufferFromHostBuffer, &mut args)?;
        created(ObjectKind::Buffer);
        Ok((args.buffer, args.done_with_host_buffer))
    }
}

/// Reads the descriptions of `devices` through the plugin.
fn describe(api: Api, devices: &[*mut ffi::PJRT_Device]) -> Result<Vec<DeviceInfo>> {
    devices
        .iter()
        .map(|&dev| {
            let mut g = ffi::PJRT_Device_GetDescription_Args::new();
            g.device = dev;
            pjrt_call!(api, PJRT_Device_GetDescription, &mut g)?;
            let mut id = ffi::PJRT_DeviceDescription_Id_Args::new();
            id.device_description = g.device_description;
            pjrt_call!(api, PJRT_DeviceDescription_Id, &mut id)?;
            let mut k = ffi::PJRT_DeviceDescription_Kind_Args::new();
            k.device_description = g.device_description;
            pjrt_call!(api, PJRT_DeviceDescription_Kind, &mut k)?;
            let mut s = ffi::PJRT_DeviceDescription_ToString_Args::new();
            s.device_description = g.device_description;
            pjrt_call!(api, PJRT_DeviceDescription_ToString, &mut s)?;
            // SAFETY: (pointer, length) pairs owned by the device description.
            let (kind, description) =
                unsafe { (string_from(k.device_kind, k.device_kind_size), string_from(s.to_string, s.to_string_size)) };
            Ok(DeviceInfo { id: id.id, kind, description })
        })
        .collect()
}
