//! Cache keys: SHA-256 over labelled, ordered components, each of which is
//! also digested on its own so that a miss can be explained component by
//! component. Nothing that varies between runs (addresses, timestamps, map
//! order, absolute paths) goes in.

use sha2::{Digest, Sha256};
use std::fmt::Write;

/// The version of the cache's entry format and key recipe.
pub const CACHE_FORMAT_VERSION: u32 = 1;

/// One labelled component of a key, with the digest of its value and a short
/// readable form of it (empty for large values such as the program).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyComponent {
    pub label: String,
    pub digest: String,
    pub shown: String,
}

/// A cache key and the components it was made from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheKey {
    /// Hex SHA-256 of all components, length-prefixed, in order.
    pub hex: String,
    pub components: Vec<KeyComponent>,
}

/// The program as the key sees it: comment lines dropped (xlac's lowering
/// names the IR node above each op's lines) and the module's own name
/// replaced by `@program`. Neither changes what XLA compiles, so renaming a
/// node or a model still hits the cache.
pub fn canonical_program(mlir: &str) -> String {
    let mut out = String::with_capacity(mlir.len());
    for line in mlir.lines().filter(|l| !l.trim_start().starts_with("//")) {
        match line.trim_start().strip_prefix("module @") {
            Some(rest) if out.is_empty() => {
                let name_len = rest.find(|c: char| c.is_whitespace() || c == '{').unwrap_or(rest.len());
                out.push_str("module @program");
                out.push_str(&rest[name_len..]);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Hex of the SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Builds a [`CacheKey`] from components added in a fixed order.
#[derive(Default)]
pub struct KeyBuilder {
    hasher: Sha256,
    components: Vec<KeyComponent>,
}

impl KeyBuilder {
    /// A builder that starts with the cache format version.
    pub fn new() -> Self {
        let mut b = KeyBuilder::default();
        b.add("cache_format", CACHE_FORMAT_VERSION.to_string().as_bytes(), true);
        b
    }

    /// Adds a component; `show` keeps its value readable in explanations.
    pub fn add(&mut self, label: &str, value: &[u8], show: bool) -> &mut Self {
        for part in [label.as_bytes(), value] {
            self.hasher.update((part.len() as u64).to_le_bytes());
            self.hasher.update(part);
        }
        let digest = sha256_hex(value);
        let shown = if show {
            String::from_utf8_lossy(value).into_owned()
        } else {
            format!("{} bytes, sha256 {}…", value.len(), &digest[..12])
        };
        self.components.push(KeyComponent { label: label.into(), digest, shown });
        self
    }

    /// The finished key.
    pub fn finish(self) -> CacheKey {
        CacheKey { hex: hex(&self.hasher.finalize()), components: self.components }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canonical_program_drops_comments_and_the_module_name() {
        let a = "module @mlp attributes {x} {\n  // fc1 = linear\n  %0 = op \"//not a comment\"\n}\n";
        let b = "module @renamed attributes {x} {\n  // dense = linear\n  %0 = op \"//not a comment\"\n}\n";
        assert_eq!(canonical_program(a), canonical_program(b));
        assert_eq!(canonical_program(a), "module @program attributes {x} {\n  %0 = op \"//not a comment\"\n}\n");
        assert_ne!(canonical_program(a), canonical_program(&a.replace("%0 = op", "%0 = other")));
    }

    #[test]
    fn keys_depend_on_every_component_and_its_label() {
        let key = |parts: &[(&str, &str)]| {
            let mut b = KeyBuilder::new();
            for (l, v) in parts {
                b.add(l, v.as_bytes(), true);
            }
            b.finish().hex
        };
        let a = key(&[("program", "x"), ("options", "y")]);
        assert_eq!(a, key(&[("program", "x"), ("options", "y")]));
        assert_ne!(a, key(&[("program", "x"), ("options", "z")]));
        assert_ne!(a, key(&[("program", "xo"), ("ptions", "y")]));
        assert_eq!(a.len(), 64);
    }
}
