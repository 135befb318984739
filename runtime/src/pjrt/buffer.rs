//! Device buffers.

use super::api::pjrt_call;
use super::client::ClientInner;
use super::ffi;
use super::objects::{created, destroyed, ObjectKind};
use crate::error::{Error, Result};
use crate::host::{byte_len, HostTensor};
use crate::DType;
use std::sync::Arc;

/// A buffer on a device, destroyed when dropped. Holds its client alive.
pub struct Buffer {
    client: Arc<ClientInner>,
    pub(crate) raw: *mut ffi::PJRT_Buffer,
    /// Host memory the buffer reads in place, if any ([`Client::upload_in_place`]).
    ///
    /// [`Client::upload_in_place`]: super::client::Client::upload_in_place
    lent: Option<LentHost>,
}

/// What keeps host memory valid while a device buffer reads it in place: the
/// memory map or allocation `data` points into. Dropped only after the plugin
/// has let go of the memory.
pub type HostOwner = Arc<dyn std::any::Any + Send + Sync>;

/// Host memory a buffer uses in place: the plugin's event that fires once it
/// no longer reads the memory, and the memory's owner.
struct LentHost {
    done: *mut ffi::PJRT_Event,
    owner: HostOwner,
}

// SAFETY: PJRT buffers are thread-safe (PjRtBuffer's methods may be called
// concurrently); xlac never mutates one after creation. A lent buffer's event
// is only touched by `drop`, which has the buffer to itself, and its owner is
// `Send + Sync`.
unsafe impl Send for Buffer {}
// SAFETY: as above.
unsafe impl Sync for Buffer {}

/// The `PJRT_Buffer_Type` value of `d`.
pub(crate) fn buffer_type(d: DType) -> i32 {
    match d {
        DType::Bool => 1,
        DType::I8 => 2,
        DType::I16 => 3,
        DType::I32 => 4,
        DType::I64 => 5,
        DType::U8 => 6,
        DType::U16 => 7,
        DType::U32 => 8,
        DType::U64 => 9,
        DType::F16 => 10,
        DType::F32 => 11,
        DType::F64 => 12,
        DType::BF16 => 13,
        DType::F8E5M2 => 16,
        DType::F8E4M3FN => 17,
        DType::F8E5M2FNUZ => 19,
        DType::F8E4M3FNUZ => 20,
    }
}

/// The dtype of a `PJRT_Buffer_Type` value, if xlac supports it.
fn dtype_of(v: i32) -> Option<DType> {
    DType::ALL.into_iter().find(|&d| buffer_type(d) == v)
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let mut args = ffi::PJRT_Buffer_Destroy_Args::new();
        args.buffer = self.raw;
        let _ = pjrt_call!(self.client.api, PJRT_Buffer_Destroy, &mut args);
        destroyed(ObjectKind::Buffer);
        if let Some(LentHost { done, owner }) = self.lent.take() {
            // The plugin may still read the memory until the event fires (an
            // execution in flight); only then may its owner let it go.
            let _ = self.client.api.await_event(done);
            drop(owner);
        }
    }
}

impl Buffer {
    /// Takes ownership of a buffer the plugin returned (already counted as created).
    pub(crate) fn from_raw(client: Arc<ClientInner>, raw: *mut ffi::PJRT_Buffer) -> Buffer {
        Buffer { client, raw, lent: None }
    }

    /// Marks the buffer as reading host memory in place until the plugin
    /// fires `done`; `owner` keeps that memory valid until then.
    pub(crate) fn hold_host(&mut self, done: *mut ffi::PJRT_Event, owner: HostOwner) {
        self.lent = Some(LentHost { done, owner });
    }

    /// Whether the buffer reads host memory in place (see
    /// [`super::client::Client::upload_in_place`]); such a buffer must never
    /// be donated to an execution, which would write into that memory.
    pub fn reads_host_memory(&self) -> bool {
        self.lent.is_some()
    }

    /// The address of the buffer's memory, where the plugin tells one
    /// (`PJRT_Buffer_UnsafePointer`; the CPU plugins do), else `None`.
    pub(crate) fn address(&self) -> Option<usize> {
        let mut args = ffi::PJRT_Buffer_UnsafePointer_Args::new();
        args.buffer = self.raw;
        pjrt_call!(self.client.api, PJRT_Buffer_UnsafePointer, &mut args).ok()?;
        Some(args.buffer_pointer)
    }

    /// A copy of this buffer on device `device` (an index into the client's
    /// devices), made by the plugin device to device, without the host.
    pub fn copy_to_device(&self, device: usize) -> Result<Buffer> {
        let dst = *self.client.devices.get(device).ok_or_else(|| {
            Error::Tensor(format!("device {device} does not exist ({} devices)", self.client.devices.len()))
        })?;
        let mut args = ffi::PJRT_Buffer_CopyToDevice_Args::new();
        args.buffer = self.raw;
        args.dst_device = dst;
        pjrt_call!(self.client.api, PJRT_Buffer_CopyToDevice, &mut args)?;
        created(ObjectKind::Buffer);
        Ok(Buffer::from_raw(self.client.clone(), args.dst_buffer))
    }

    /// The element type.
    pub fn element_type(&self) -> Result<DType> {
        let mut args = ffi::PJRT_Buffer_ElementType_Args::new();
        args.buffer = self.raw;
        pjrt_call!(self.client.api, PJRT_Buffer_ElementType, &mut args)?;
        dtype_of(args.type_).ok_or_else(|| {
            Error::Tensor(format!("buffer has PJRT element type {}, which xlac does not support", args.type_))
        })
    }

    /// The dimensions.
    pub fn dims(&self) -> Result<Vec<usize>> {
        let mut args = ffi::PJRT_Buffer_Dimensions_Args::new();
        args.buffer = self.raw;
        pjrt_call!(self.client.api, PJRT_Buffer_Dimensions, &mut args)?;
        if args.num_dims == 0 {
            return Ok(vec![]);
        }
        // SAFETY: the plugin returns `num_dims` dimensions owned by the buffer.
        let dims = unsafe { std::slice::from_raw_parts(args.dims, args.num_dims) };
        Ok(dims.iter().map(|&d| d as usize).collect())
    }

    /// Waits until the buffer's contents are computed.
    pub fn wait_ready(&self) -> Result<()> {
        let mut args = ffi::PJRT_Buffer_ReadyEvent_Args::new();
        args.buffer = self.raw;
        pjrt_call!(self.client.api, PJRT_Buffer_ReadyEvent, &mut args)?;
        self.client.api.await_event(args.event)
    }

    /// Copies the buffer to the host (dense, row-major), waiting for it first.
    pub fn to_host(&self) -> Result<HostTensor> {
        let ty = self.element_type()?;
        let dims = self.dims()?;
        let len = byte_len(ty, &dims)?;
        let api = self.client.api;
        let mut query = ffi::PJRT_Buffer_ToHostBuffer_Args::new();
        query.src = self.raw;
        pjrt_call!(api, PJRT_Buffer_ToHostBuffer, &mut query)?;
        if query.dst_size != len {
            return Err(Error::Tensor(format!(
                "device buffer {ty}{dims:?} holds {} bytes on the host, expected {len} (non-dense layout?)",
                query.dst_size
            )));
        }
        let mut data = crate::memory::zeroed(&format!("a {ty}{dims:?} result copied from the device"), len)?;
        let mut args = ffi::PJRT_Buffer_ToHostBuffer_Args::new();
        args.src = self.raw;
        args.dst = data.as_mut_ptr().cast();
        args.dst_size = len;
        pjrt_call!(api, PJRT_Buffer_ToHostBuffer, &mut args)?;
        // `data` must stay alive until the copy is done.
        api.await_event(args.event)?;
        HostTensor::new(ty, dims, data)
    }
}
