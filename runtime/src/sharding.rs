//! Sharded tensors: splitting a host tensor into per-device shards by a
//! sharding over a device mesh, keeping them on the devices between calls
//! ([`ShardedBuffer`]), and reassembling them on the host.
//!
//! A mesh has named axes (`data=2, model=2`); device `d` sits at the mesh
//! coordinates of `d` in row-major order (the last axis varies fastest), as
//! Shardy numbers devices. A sharding gives, per tensor dimension, the mesh
//! axis it is split over, or none (replicated along every unnamed axis).

use crate::error::{Error, Result};
use crate::host::{HostTensor, TensorRef, TensorSpec};
use crate::pjrt::buffer::Buffer;
use crate::pjrt::client::Client;
pub use xlac_core::sharding::{Mesh, Partitioning, Sharding};

/// How a program with the signature `inputs` → `outputs` runs on one
/// device: the single mesh, every value whole.
pub fn single_device(inputs: &[TensorSpec], outputs: &[TensorSpec]) -> Partitioning {
    let whole = |s: &TensorSpec| Sharding::replicated(s.shape.len());
    Partitioning {
        mesh: Mesh::single(),
        inputs: inputs.iter().map(whole).collect(),
        outputs: outputs.iter().map(whole).collect(),
    }
}

/// How many partitions (devices) a program split by `p` runs on: 1 without a partitioning.
pub fn partitions(p: Option<&Partitioning>) -> u32 {
    p.map_or(1, |p| p.mesh.devices() as u32)
}

/// A tensor held on a program's devices: buffer `d` is device `d`'s shard
/// (in the program's partition order) under `sharding` over `mesh`. The
/// outputs of [`crate::Executable::execute_sharded`] are these, so they can
/// feed the next call without a trip through the host.
pub struct ShardedBuffer {
    spec: TensorSpec,
    sharding: Sharding,
    mesh: Mesh,
    /// The client's index of the device each shard is on.
    devices: Vec<usize>,
    shards: Vec<Buffer>,
}

impl ShardedBuffer {
    /// Splits `t` by `sharding` over `mesh` and uploads shard `d` to
    /// `devices[d]` (client device indices; as many as the mesh spans).
    /// A replicated tensor is uploaded without a host copy.
    pub fn upload(
        client: &Client,
        name: &str,
        t: TensorRef<'_>,
        sharding: &Sharding,
        mesh: &Mesh,
        devices: &[usize],
    ) -> Result<ShardedBuffer> {
        if devices.len() as u64 != mesh.devices() {
            return Err(Error::Tensor(format!(
                "`{name}`: the mesh spans {} devices but {} were given",
                mesh.devices(),
                devices.len()
            )));
        }
        parts(mesh, name, t.shape, sharding, 0)?;
        let whole = sharding.is_replicated();
        // A strided view is gathered once, not once per shard.
        let dense = if whole { None } else { Some(t.dense_bytes()) };
        let split = dense.as_deref().map(|data| TensorRef { data, byte_strides: None, ..t });
        let shards = devices
            .iter()
            .enumerate()
            .map(|(d, &dev)| match split {
                None => client.upload(t, dev),
                Some(dense) => client.upload(shard(name, dense, sharding, mesh, d)?.as_ref(), dev),
            })
            .collect::<Result<Vec<_>>>()?;
        let spec = TensorSpec { name: name.into(), ty: t.ty, shape: t.shape.to_vec() };
        Ok(ShardedBuffer { spec, sharding: sharding.clone(), mesh: mesh.clone(), devices: devices.to_vec(), shards })
    }

    /// Wraps device shards returned by an execution.
    pub(crate) fn from_shards(
        spec: TensorSpec,
        sharding: Sharding,
        mesh: Mesh,
        devices: Vec<usize>,
        shards: Vec<Buffer>,
    ) -> Self {
        ShardedBuffer { spec, sharding, mesh, devices, shards }
    }

    /// The whole tensor's name, dtype and shape.
    pub fn spec(&self) -> &TensorSpec {
        &self.spec
    }

    /// How it is split over [`ShardedBuffer::mesh`].
    pub fn sharding(&self) -> &Sharding {
        &self.sharding
    }

    /// The mesh it is split over.
    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// The client's index of the device each shard is on, in partition order.
    pub fn devices(&self) -> &[usize] {
        &self.devices
    }

    /// The per-device buffers, in partition order.
    pub fn shards(&self) -> &[Buffer] {
        &self.shards
    }

    /// The same value on `devices` (one per shard, in partition order), each
    /// shard copied there device to device by the plugin.
    pub fn copy_to(&self, devices: &[usize]) -> Result<ShardedBuffer> {
        if devices.len() != self.shards.len() {
            return Err(Error::Tensor(format!(
                "`{}` has {} shards; cannot copy them to {} devices",
                self.spec.name,
                self.shards.len(),
                devices.len()
            )));
        }
        let shards =
            self.shards.iter().zip(devices).map(|(b, &to)| b.copy_to_device(to)).collect::<Result<Vec<_>>>()?;
        Ok(ShardedBuffer {
            spec: self.spec.clone(),
            sharding: self.sharding.clone(),
            mesh: self.mesh.clone(),
            devices: devices.to_vec(),
            shards,
        })
    }

    /// Copies the shards back and reassembles the whole tensor.
    pub fn to_host(&self) -> Result<HostTensor> {
        if self.sharding.is_replicated() {
            return self.shards[0].to_host();
        }
        let shards = self.shards.iter().map(Buffer::to_host).collect::<Result<Vec<_>>>()?;
        unshard(&self.spec.name, &shards, &self.spec.shape, &self.sharding, &self.mesh)
    }
}

/// For each dimension of a tensor `name` of `shape` split by `s` over
/// `mesh`: (number of parts, the part device `d` holds).
fn parts(mesh: &Mesh, name: &str, shape: &[usize], s: &Sharding, d: usize) -> Result<Vec<(usize, usize)>> {
    let bad = |message: String| Error::Argument { index: 0, name: name.into(), message };
    if s.0.len() != shape.len() {
        return Err(bad(format!("sharding {s} has {} entries for a tensor of rank {}", s.0.len(), shape.len())));
    }
    let coords = mesh.coords(d as u64);
    s.0.iter()
        .zip(shape)
        .map(|(axis, &dim)| match axis {
            None => Ok((1, 0)),
            Some(a) => {
                let i = mesh.axes().iter().position(|(n, _)| n == a).ok_or_else(|| {
                    let names: Vec<&str> = mesh.axes().iter().map(|(n, _)| n.as_str()).collect();
                    bad(format!("unknown mesh axis `{a}` (mesh axes: {})", names.join(", ")))
                })?;
                let n = mesh.axes()[i].1 as usize;
                if dim % n != 0 {
                    return Err(bad(format!("dimension of size {dim} does not divide over axis `{a}` of size {n}")));
                }
                Ok((n, coords[i] as usize))
            }
        })
        .collect()
}

/// Visits, in row-major order, the byte offset (in a tensor of `shape`) of
/// every contiguous run of the box `[start, start+len)`; `elem` bytes per element.
fn for_each_run(shape: &[usize], start: &[usize], len: &[usize], elem: usize, mut f: impl FnMut(usize, usize)) {
    let rank = shape.len();
    if rank == 0 {
        f(0, elem);
        return;
    }
    if len.contains(&0) {
        return;
    }
    let run = len[rank - 1] * elem;
    let mut idx = vec![0usize; rank - 1];
    loop {
        let mut off = 0;
        for k in 0..rank {
            let i = if k + 1 == rank { start[k] } else { start[k] + idx[k] };
            off = off * shape[k] + i;
        }
        f(off * elem, run);
        let mut k = rank - 1;
        loop {
            if k == 0 {
                return;
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < len[k] {
                break;
            }
            idx[k] = 0;
        }
    }
}

/// The shard of `t` that device `d` of `mesh` holds under `s`.
pub fn shard(name: &str, t: TensorRef<'_>, s: &Sharding, mesh: &Mesh, d: usize) -> Result<HostTensor> {
    let parts = parts(mesh, name, t.shape, s, d)?;
    let len: Vec<usize> = t.shape.iter().zip(&parts).map(|(&dim, &(n, _))| dim / n).collect();
    let start: Vec<usize> = len.iter().zip(&parts).map(|(&l, &(_, i))| l * i).collect();
    let elem = t.ty.size_bytes();
    let whole = t.dense_bytes();
    let mut data = Vec::with_capacity(len.iter().product::<usize>() * elem);
    for_each_run(t.shape, &start, &len, elem, |off, n| data.extend_from_slice(&whole[off..off + n]));
    HostTensor::new(t.ty, len, data)
}

/// Reassembles a tensor of `shape` from every device's shard under `s`
/// (devices holding the same part are replicas; the first is used).
pub fn unshard(name: &str, shards: &[HostTensor], shape: &[usize], s: &Sharding, mesh: &Mesh) -> Result<HostTensor> {
    let first = shards.first().ok_or_else(|| Error::Tensor(format!("`{name}`: no shards")))?;
    let (ty, elem) = (first.element_type(), first.element_type().size_bytes());
    let mut data = vec![0u8; shape.iter().product::<usize>() * elem];
    for (d, sh) in shards.iter().enumerate() {
        let parts = parts(mesh, name, shape, s, d)?;
        let len: Vec<usize> = shape.iter().zip(&parts).map(|(&dim, &(n, _))| dim / n).collect();
        if sh.shape() != len.as_slice() || sh.element_type() != ty {
            return Err(Error::Tensor(format!(
                "`{name}`: device {d} returned {}{:?}, expected {ty}{len:?}",
                sh.element_type(),
                sh.shape()
            )));
        }
        let start: Vec<usize> = len.iter().zip(&parts).map(|(&l, &(_, i))| l * i).collect();
        let mut src = 0;
        for_each_run(shape, &start, &len, elem, |off, n| {
            data[off..off + n].copy_from_slice(&sh.data()[src..src + n]);
            src += n;
        });
    }
    HostTensor::new(ty, shape.to_vec(), data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn shards_reassemble_on_a_2d_mesh() {
        let a = Array3::from_shape_fn((4, 3, 6), |(i, j, k)| (i * 100 + j * 10 + k) as i32);
        let t = HostTensor::from_array(&a);
        let mesh = Mesh::parse("data=2,model=3").unwrap();
        let s = Sharding(vec![Some("data".into()), None, Some("model".into())]);
        let shards: Vec<HostTensor> =
            (0..mesh.devices() as usize).map(|d| shard("a", t.as_ref(), &s, &mesh, d).unwrap()).collect();
        // Device 4 is at (data 1, model 1): rows 2..4, columns 2..4.
        assert_eq!(shards[4].shape(), &[2, 3, 2]);
        assert_eq!(shards[4].to_f64_vec()[0], 202.0);
        assert_eq!(unshard("a", &shards, &[4, 3, 6], &s, &mesh).unwrap(), t);
    }

    #[test]
    fn bad_shardings_name_the_value() {
        let t = HostTensor::from_array(&ndarray::Array2::<f32>::zeros((5, 4)));
        let mesh = Mesh::parse("data=2").unwrap();
        let e = shard("x", t.as_ref(), &Sharding(vec![Some("data".into()), None]), &mesh, 0).unwrap_err().to_string();
        assert!(e.contains("`x`") && e.contains("size 5 does not divide over axis `data` of size 2"), "{e}");
        let e = shard("x", t.as_ref(), &Sharding(vec![None, Some("model".into())]), &mesh, 0).unwrap_err().to_string();
        assert!(e.contains("unknown mesh axis `model`"), "{e}");
    }
}
