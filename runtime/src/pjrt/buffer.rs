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
}

// SAFETY: PJRT buffers are thread-safe (PjRtBuffer's methods may be called
// concurrently); xlac never mutates one after creation.
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
    }
}

impl Buffer {
    /// Takes ownership of a buffer the plugin returned (already counted as created).
    pub(crate) fn from_raw(client: Arc<ClientInner>, raw: *mut ffi::PJRT_Buffer) -> Buffer {
        Buffer { client, raw }
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
