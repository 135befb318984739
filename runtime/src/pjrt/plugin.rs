//! Finding and loading PJRT plugins.
//!
//! A plugin is a shared library exporting `GetPjrtApi`. It is loaded once per
//! process and never unloaded (unloading XLA's plugins crashes the process at
//! exit). Discovery looks, in order, at an explicit path, `XLAC_PJRT_PLUGIN`,
//! then the places `pip install` puts the plugin packages.

use super::api::{pjrt_call, string_from, Api};
use super::ffi;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The environment variable naming a plugin library to use.
pub const PLUGIN_ENV: &str = "XLAC_PJRT_PLUGIN";

/// A hardware platform served by a PJRT plugin package.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    Cpu,
    Cuda,
    Tpu,
}

impl Platform {
    /// Parses `cpu`, `cuda` (or `gpu`) and `tpu`.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "cpu" => Some(Platform::Cpu),
            "cuda" | "gpu" => Some(Platform::Cuda),
            "tpu" => Some(Platform::Tpu),
            _ => None,
        }
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Platform::Cpu => "cpu",
            Platform::Cuda => "cuda",
            Platform::Tpu => "tpu",
        }
    }

    /// What to install to get this platform's plugin.
    pub fn install_hint(self) -> &'static str {
        match self {
            Platform::Cpu => "Install XLA's CPU plugin with `pip install xla-cpu-pjrt`, or point XLAC_PJRT_PLUGIN (or --plugin) at a PJRT plugin .so.",
            Platform::Cuda => "Install a CUDA plugin with `pip install jax-cuda13-pjrt` (or jax-cuda12-pjrt, xla-cuda12-pjrt), or point XLAC_PJRT_PLUGIN (or --plugin) at it.",
            Platform::Tpu => "Install the TPU runtime with `pip install libtpu`, or point XLAC_PJRT_PLUGIN (or --plugin) at libtpu.so.",
        }
    }

    /// Plugin libraries of this platform inside one site-packages directory,
    /// best first: the `xla_plugins` and `jax_plugins` namespaces (the
    /// official wheels), then, for the CPU, packages that ship a PJRT CPU
    /// plugin of their own (`lammps_jax_pjrt_cpu`, `fastatomstruct_xla_cpu`:
    /// a top-level package named for PJRT or XLA and the CPU, holding a
    /// `*pjrt*.so`).
    fn candidates_in(self, site: &Path) -> Vec<PathBuf> {
        let so = |f: &PathBuf| f.extension().is_some_and(|e| e == "so");
        let named = |p: &Path, key: &str| p.file_name().is_some_and(|n| n.to_string_lossy().contains(key));
        let mut found = Vec::new();
        match self {
            Platform::Tpu => found.push(site.join("libtpu/libtpu.so")),
            Platform::Cpu | Platform::Cuda => {
                let key = if self == Platform::Cpu { "cpu" } else { "cuda" };
                for ns in ["xla_plugins", "jax_plugins"] {
                    let mut dirs: Vec<PathBuf> =
                        read_dir_sorted(&site.join(ns)).into_iter().filter(|d| named(d, key)).collect();
                    // Newer CUDA first (xla_cuda13 before xla_cuda12).
                    dirs.reverse();
                    for dir in dirs {
                        found.extend(read_dir_sorted(&dir).into_iter().filter(so));
                    }
                }
                if self == Platform::Cpu {
                    // Names first: a site-packages may hold hundreds of entries, each `is_dir` a stat.
                    let packages = read_dir_sorted(site).into_iter().filter(|d| {
                        named(d, "cpu") && (named(d, "pjrt") || named(d, "xla")) && !named(d, "dist-info") && d.is_dir()
                    });
                    for dir in packages {
                        found.extend(read_dir_sorted(&dir).into_iter().filter(|f| so(f) && named(f, "pjrt")));
                    }
                }
            }
        }
        found.retain(|p| p.is_file());
        found
    }
}

fn read_dir_sorted(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).collect();
    v.sort();
    v
}

/// The site-packages directories where pip may have installed packages, in
/// the order they are searched: `PYTHONPATH`, the active virtualenv or conda
/// environment, the user's site, pyenv versions, then the system's.
pub fn site_packages_dirs() -> Vec<PathBuf> {
    let env = |k: &str| std::env::var_os(k).map(PathBuf::from);
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(pp) = std::env::var_os("PYTHONPATH") {
        roots.extend(std::env::split_paths(&pp));
    }
    let home = env("HOME");
    let prefixes: Vec<PathBuf> = [env("VIRTUAL_ENV"), env("CONDA_PREFIX"), home.as_ref().map(|h| h.join(".local"))]
        .into_iter()
        .flatten()
        .collect();
    for p in prefixes {
        roots.extend(python_libs(&p));
    }
    let pyenv = env("PYENV_ROOT").or_else(|| home.as_ref().map(|h| h.join(".pyenv")));
    if let Some(pyenv) = pyenv {
        for version in read_dir_sorted(&pyenv.join("versions")).into_iter().rev() {
            roots.extend(python_libs(&version));
        }
    }
    for p in ["/usr/local", "/usr", "/opt/conda"] {
        roots.extend(python_libs(Path::new(p)));
    }
    roots.push(PathBuf::from("/usr/lib/python3/dist-packages"));
    let mut seen = std::collections::HashSet::new();
    roots.retain(|r| r.is_dir() && seen.insert(r.clone()));
    roots
}

/// `PREFIX/lib/python3.*/{site,dist}-packages`, newest Python first.
fn python_libs(prefix: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for lib in read_dir_sorted(&prefix.join("lib")).into_iter().rev() {
        if lib.file_name().is_some_and(|n| n.to_string_lossy().starts_with("python3")) {
            out.push(lib.join("site-packages"));
            out.push(lib.join("dist-packages"));
        }
    }
    out
}

/// Finds the plugin library to use: `explicit` if given, else `XLAC_PJRT_PLUGIN`,
/// else the first plugin of `platform` in [`site_packages_dirs`] ([`find_all`]'s
/// order). An empty `XLAC_PJRT_PLUGIN` counts as unset.
/// [`crate::calibration::find`] prefers the fastest of several.
pub fn find(platform: Platform, explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = chosen(explicit) {
        return if p.is_file() { Ok(p) } else { Err(Error::PluginLoad { path: p, message: "no such file".into() }) };
    }
    find_all(platform).into_iter().next().ok_or_else(|| Error::PluginNotFound {
        platform: platform.name().into(),
        hint: platform.install_hint().into(),
        searched: site_packages_dirs(),
    })
}

/// The plugin the user chose: `explicit`, else a non-empty `XLAC_PJRT_PLUGIN`.
pub fn chosen(explicit: Option<&Path>) -> Option<PathBuf> {
    let from_env = std::env::var_os(PLUGIN_ENV).filter(|v| !v.is_empty()).map(PathBuf::from);
    explicit.map(Path::to_path_buf).or(from_env)
}

/// Every plugin library of `platform` in [`site_packages_dirs`], in the
/// order [`find`] prefers them, each once.
pub fn find_all(platform: Platform) -> Vec<PathBuf> {
    let mut seen = std::collections::HashSet::new();
    site_packages_dirs()
        .iter()
        .flat_map(|d| platform.candidates_in(d))
        .filter(|p| seen.insert(p.canonicalize().unwrap_or_else(|_| p.clone())))
        .collect()
}

/// The pip distribution (name and version) that installed the library at
/// `path`: the `*.dist-info` beside its package whose RECORD lists it.
pub fn distribution(path: &Path) -> Option<(String, String)> {
    for site in path.ancestors().skip(1) {
        let relative = path.strip_prefix(site).ok()?.to_string_lossy().into_owned();
        for info in read_dir_sorted(site).into_iter().filter(|d| d.extension().is_some_and(|e| e == "dist-info")) {
            let Ok(record) = std::fs::read_to_string(info.join("RECORD")) else { continue };
            if record.lines().any(|l| l.split(',').next() == Some(relative.as_str())) {
                let stem = info.file_stem()?.to_string_lossy().into_owned();
                let (name, version) = stem.split_once('-')?;
                return Some((name.to_string(), version.to_string()));
            }
        }
    }
    None
}

/// Attributes of a plugin, shared by the handles of one loaded plugin.
type Attributes = std::sync::Arc<Vec<(String, AttributeValue)>>;

/// Plugins loaded in this process: path → table and attributes. Each is initialised once.
static LOADED: Mutex<Vec<(PathBuf, Api, Attributes)>> = Mutex::new(Vec::new());

/// A loaded PJRT plugin.
#[derive(Clone)]
pub struct Plugin {
    path: PathBuf,
    pub(crate) api: Api,
    attributes: Attributes,
}

/// A plugin attribute's value.
#[derive(Clone, Debug, PartialEq)]
pub enum AttributeValue {
    String(String),
    Int(i64),
    IntList(Vec<i64>),
    Float(f32),
    Bool(bool),
}

impl std::fmt::Display for AttributeValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttributeValue::String(s) => f.write_str(s),
            AttributeValue::Int(i) => write!(f, "{i}"),
            AttributeValue::IntList(v) => write!(f, "{v:?}"),
            AttributeValue::Float(x) => write!(f, "{x}"),
            AttributeValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl Plugin {
    /// Finds (see [`find`]) and loads a plugin.
    pub fn discover(platform: Platform, explicit: Option<&Path>) -> Result<Plugin> {
        Plugin::load(&find(platform, explicit)?)
    }

    /// Loads the plugin at `path` (once per process), checks its API version
    /// and table size, and initialises it.
    pub fn load(path: &Path) -> Result<Plugin> {
        let key = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, api, attributes)) = loaded.iter().find(|(p, _, _)| *p == key) {
            return Ok(Plugin { path: path.into(), api: *api, attributes: attributes.clone() });
        }
        let fail = |message: String| Error::PluginLoad { path: path.into(), message };
        let flags = libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_LOCAL | 0x1000; // RTLD_NODELETE
                                                                                                // SAFETY: loading a PJRT plugin runs its initialisers; that is what the user asked for.
        let lib = unsafe { libloading::os::unix::Library::open(Some(path), flags) }.map_err(|e| fail(e.to_string()))?;
        // SAFETY: `GetPjrtApi` has this signature in every PJRT plugin.
        let get: libloading::os::unix::Symbol<unsafe extern "C" fn() -> *const ffi::PJRT_Api> =
            unsafe { lib.get(b"GetPjrtApi\0") }
                .map_err(|_| fail("no `GetPjrtApi` symbol: not a PJRT plugin".into()))?;
        // SAFETY: calling the plugin's entry point, which takes no arguments.
        let raw = unsafe { get() };
        // The library stays loaded for the life of the process.
        std::mem::forget(lib);
        if raw.is_null() {
            return Err(fail("GetPjrtApi returned null".into()));
        }
        // SAFETY: `raw` points to the plugin's static table; only its header is read
        // before its `struct_size` is checked to cover every field xlac reads.
        let header_size = unsafe { (*raw).struct_size };
        // SAFETY: as above.
        let version = unsafe { ((*raw).pjrt_api_version.major_version, (*raw).pjrt_api_version.minor_version) };
        if version.0 != ffi::API_MAJOR {
            return Err(Error::ApiVersion { path: path.into(), major: version.0, minor: version.1 });
        }
        if header_size < ffi::api_prefix_size() {
            return Err(fail(format!(
                "its PJRT_Api table has {header_size} bytes, fewer than the {} xlac reads (API {}.{})",
                ffi::api_prefix_size(),
                version.0,
                version.1
            )));
        }
        // SAFETY: the table is static in the never-unloaded plugin and large enough (checked above).
        let api = Api { raw: unsafe { &*raw } };
        let mut init = ffi::PJRT_Plugin_Initialize_Args::new();
        pjrt_call!(api, PJRT_Plugin_Initialize, &mut init)?;
        let attributes = Attributes::new(read_attributes(api)?);
        loaded.push((key, api, attributes.clone()));
        Ok(Plugin { path: path.into(), api, attributes })
    }

    /// The library's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The PJRT API version the plugin reports, as (major, minor).
    pub fn api_version(&self) -> (i32, i32) {
        let v = &self.api.raw.pjrt_api_version;
        (v.major_version, v.minor_version)
    }

    /// The plugin's attributes (e.g. `xla_version`, `stablehlo_current_version`),
    /// read once when it was loaded.
    pub fn attributes(&self) -> &[(String, AttributeValue)] {
        &self.attributes
    }
}

/// Reads a plugin's attributes through its table.
fn read_attributes(api: Api) -> Result<Vec<(String, AttributeValue)>> {
    let mut args = ffi::PJRT_Plugin_Attributes_Args::new();
    pjrt_call!(api, PJRT_Plugin_Attributes, &mut args)?;
    let mut out = Vec::with_capacity(args.num_attributes);
    for i in 0..args.num_attributes {
        // SAFETY: the plugin returns an array of `num_attributes` named values
        // that lives as long as the plugin.
        let nv = unsafe { &*args.attributes.add(i) };
        // SAFETY: name and string values are (pointer, length) pairs owned by the plugin.
        let name = unsafe { string_from(nv.name, nv.name_size) };
        // SAFETY: the union member read is the one `type_` names.
        let value = unsafe {
            match nv.type_ {
                ffi::NAMED_STRING => AttributeValue::String(string_from(nv.value.string_value, nv.value_size)),
                ffi::NAMED_INT64 => AttributeValue::Int(nv.value.int64_value),
                ffi::NAMED_INT64_LIST => {
                    let p = nv.value.int64_array_value;
                    AttributeValue::IntList(if p.is_null() {
                        vec![]
                    } else {
                        std::slice::from_raw_parts(p, nv.value_size).to_vec()
                    })
                }
                ffi::NAMED_FLOAT => AttributeValue::Float(nv.value.float_value),
                _ => AttributeValue::Bool(nv.value.bool_value),
            }
        };
        out.push((name, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty file at `site/relative`, with its folders.
    fn touch(site: &Path, relative: &str) -> PathBuf {
        let path = site.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"").unwrap();
        path
    }

    #[test]
    fn every_cpu_plugin_in_a_site_is_a_candidate_the_official_wheel_first() {
        let site = tempfile::tempdir().unwrap();
        let official = touch(site.path(), "xla_plugins/xla_cpu_pjrt/xla_cpu_pjrt.so");
        let lammps = touch(site.path(), "lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so");
        let fastatom = touch(site.path(), "fastatomstruct_xla_cpu/libpjrt_cpu.so");
        touch(site.path(), "numpy/core/_multiarray.so");
        touch(site.path(), "fastatomstruct_xla_cpu/_native.so");
        touch(site.path(), "xla_cuda_pjrt/libpjrt_cuda.so");
        touch(site.path(), "xla_cpu_pjrt-0.0.1.dist-info/RECORD");
        // A file named like a plugin's package is not one.
        touch(site.path(), "xla_cpu_pjrt.pth");
        assert_eq!(Platform::Cpu.candidates_in(site.path()), [official, fastatom, lammps]);
        assert!(Platform::Cuda.candidates_in(site.path()).is_empty());
    }

    #[test]
    fn a_plugins_distribution_is_the_one_whose_record_lists_it() {
        let site = tempfile::tempdir().unwrap();
        let so = touch(site.path(), "lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so");
        let record =
            "lammps_jax_pjrt_cpu/__init__.py,sha256=x,0\nlammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so,sha256=y,9\n";
        touch(site.path(), "other-1.0.dist-info/RECORD");
        std::fs::create_dir_all(site.path().join("lammps_jax_pjrt_cpu-0.11.2.dist-info")).unwrap();
        std::fs::write(site.path().join("lammps_jax_pjrt_cpu-0.11.2.dist-info/RECORD"), record).unwrap();
        assert_eq!(distribution(&so), Some(("lammps_jax_pjrt_cpu".into(), "0.11.2".into())));
        assert_eq!(distribution(&touch(site.path(), "loose/libpjrt_cpu.so")), None);
    }
}
