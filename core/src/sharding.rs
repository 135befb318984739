//! Device meshes, value shardings and program partitionings: the annotations
//! XLA's SPMD partitioner splits a program by (the compiler writes them), and
//! how the runtime splits host tensors over devices and reassembles them.
//!
//! A mesh names its axes (`data=2, model=2`); a sharding gives, for each
//! dimension of a value, the mesh axis that dimension is split over, or none.
//! A value is replicated along every mesh axis its sharding does not name.
//! Device `d` sits at the row-major mesh coordinates of `d` (the last axis
//! varies fastest), as Shardy numbers devices.

use std::fmt;

/// A device mesh: named axes with their sizes, in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mesh {
    axes: Vec<(String, u64)>,
}

impl Mesh {
    /// A mesh of `axes`; names must be identifiers, distinct, and sizes ≥ 1.
    pub fn new(axes: Vec<(String, u64)>) -> Result<Mesh, String> {
        if axes.is_empty() {
            return Err("a mesh needs at least one axis".into());
        }
        for (i, (name, size)) in axes.iter().enumerate() {
            let ident = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ident {
                return Err(format!("mesh axis name `{name}` is not an identifier"));
            }
            if *size == 0 {
                return Err(format!("mesh axis `{name}` has size 0"));
            }
            if axes[..i].iter().any(|(n, _)| n == name) {
                return Err(format!("mesh axis `{name}` is named twice"));
            }
        }
        Ok(Mesh { axes })
    }

    /// Parses `data=2,model=2` (the `--mesh` form).
    pub fn parse(text: &str) -> Result<Mesh, String> {
        let axes = text
            .split(',')
            .map(|item| {
                let (name, size) = item
                    .trim()
                    .split_once('=')
                    .ok_or_else(|| format!("expected AXIS=SIZE, found `{}` in `{text}`", item.trim()))?;
                let size = size.trim().parse().map_err(|_| format!("`{size}` is not a size in `{text}`"))?;
                Ok((name.trim().to_string(), size))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Mesh::new(axes)
    }

    /// The axes, in order, with their sizes.
    pub fn axes(&self) -> &[(String, u64)] {
        &self.axes
    }

    /// The size of axis `name`, if the mesh has it.
    pub fn size(&self, name: &str) -> Option<u64> {
        self.axes.iter().find(|(n, _)| n == name).map(|(_, s)| *s)
    }

    /// The mesh of a single-device program: no axis, one device.
    pub fn single() -> Mesh {
        Mesh { axes: Vec::new() }
    }

    /// How many devices the mesh spans (the product of its sizes; 1 without axes).
    pub fn devices(&self) -> u64 {
        self.axes.iter().map(|(_, s)| s).product()
    }

    /// Device `d`'s coordinate along each axis (row-major: the last axis varies fastest).
    pub fn coords(&self, mut d: u64) -> Vec<u64> {
        let mut c = vec![0; self.axes.len()];
        for (i, (_, size)) in self.axes.iter().enumerate().rev() {
            c[i] = d % size;
            d /= size;
        }
        c
    }
}

impl fmt::Display for Mesh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self.axes.iter().map(|(n, s)| format!("{n}={s}")).collect();
        f.write_str(&items.join(", "))
    }
}

/// Per dimension of a value, the mesh axis it is split over (`None`: whole).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Sharding(pub Vec<Option<String>>);

impl Sharding {
    /// No dimension split: every device holds the whole value.
    pub fn replicated(rank: usize) -> Sharding {
        Sharding(vec![None; rank])
    }

    /// True when no dimension is split.
    pub fn is_replicated(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }

    /// The axis dimension `dim` is split over.
    pub fn axis(&self, dim: usize) -> Option<&str> {
        self.0.get(dim).and_then(|a| a.as_deref())
    }

    /// Checks that this sharding fits a value of `shape` (`ty` describes it
    /// in messages, e.g. `f32[4,6]`) on `mesh`: one entry per dimension, known
    /// axes, each axis used once, and every split dimension divisible by its axis size.
    pub fn check(&self, shape: &[u64], ty: &dyn fmt::Display, mesh: &Mesh) -> Result<(), String> {
        if self.0.len() != shape.len() {
            return Err(format!("sharding {self} has {} entries for a value of type {ty}", self.0.len()));
        }
        for (dim, axis) in self.0.iter().enumerate() {
            let Some(axis) = axis else { continue };
            let size = mesh
                .size(axis)
                .ok_or_else(|| format!("sharding {self} names axis `{axis}`, which the mesh ({mesh}) does not have"))?;
            if self.0[..dim].iter().any(|a| a.as_ref() == Some(axis)) {
                return Err(format!("sharding {self} splits two dimensions over axis `{axis}`"));
            }
            if !shape[dim].is_multiple_of(size) {
                return Err(format!(
                    "sharding {self}: dimension {dim} of {ty} (size {}) does not divide over axis `{axis}` of size {size}",
                    shape[dim]
                ));
            }
        }
        Ok(())
    }
}

/// How an SPMD program is split: its mesh and the sharding of each argument
/// and result. A single-device program has [`Mesh::single`] and replicated shardings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partitioning {
    pub mesh: Mesh,
    pub inputs: Vec<Sharding>,
    pub outputs: Vec<Sharding>,
}

impl fmt::Display for Sharding {
    /// `[data,_]`: the IR text form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<&str> = self.0.iter().map(|a| a.as_deref().unwrap_or("_")).collect();
        write!(f, "[{}]", items.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meshes_parse_and_reject_bad_axes() {
        let m = Mesh::parse("data=2, model=4").unwrap();
        assert_eq!((m.devices(), m.size("model"), m.to_string().as_str()), (8, Some(4), "data=2, model=4"));
        assert!(Mesh::parse("data").unwrap_err().contains("expected AXIS=SIZE"));
        assert!(Mesh::parse("data=2,data=2").unwrap_err().contains("named twice"));
        assert!(Mesh::parse("data=0").unwrap_err().contains("size 0"));
        assert!(Mesh::parse("1x=2").unwrap_err().contains("not an identifier"));
    }

    #[test]
    fn shardings_are_checked_against_type_and_mesh() {
        let mesh = Mesh::parse("data=2,model=2").unwrap();
        let (shape, ty) = (&[4, 6], &"f32[4,6]");
        let s = |a: Option<&str>, b: Option<&str>| Sharding(vec![a.map(Into::into), b.map(Into::into)]);
        assert_eq!(s(Some("data"), Some("model")).to_string(), "[data,model]");
        s(Some("data"), Some("model")).check(shape, ty, &mesh).unwrap();
        assert!(s(Some("x"), None).check(shape, ty, &mesh).unwrap_err().contains("axis `x`"));
        assert!(s(Some("data"), Some("data")).check(shape, ty, &mesh).unwrap_err().contains("two dimensions"));
        let e = s(Some("data"), None).check(&[3, 6], &"f32[3,6]", &mesh).unwrap_err();
        assert!(e.contains("dimension 0 of f32[3,6] (size 3) does not divide"), "{e}");
        assert!(Sharding(vec![None]).check(shape, ty, &mesh).unwrap_err().contains("1 entries"));
        assert_eq!((Mesh::single().devices(), mesh.coords(3)), (1, vec![1, 1]));
    }
}
