//! Errors of the runtime. Each names the file, argument or PJRT call concerned.

use std::path::PathBuf;

/// A PJRT error code (`PJRT_Error_Code`), e.g. 3 = INVALID_ARGUMENT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorCode(pub i32);

impl ErrorCode {
    /// The code's name as in absl::StatusCode.
    pub fn name(self) -> &'static str {
        const NAMES: [&str; 17] = [
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        ];
        usize::try_from(self.0).ok().and_then(|i| NAMES.get(i)).copied().unwrap_or("UNKNOWN_CODE")
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// A runtime error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No plugin was found for the platform; the message says what to install.
    #[error("no PJRT plugin found for platform `{platform}`.\n{hint}\nSearched:\n{}", searched.iter().map(|p| format!("  {}", p.display())).collect::<Vec<_>>().join("\n"))]
    PluginNotFound { platform: String, hint: String, searched: Vec<PathBuf> },
    /// The plugin library could not be loaded or is not a PJRT plugin.
    #[error("{}: cannot load PJRT plugin: {message}", path.display())]
    PluginLoad { path: PathBuf, message: String },
    /// The plugin's API version is not one xlac can talk to.
    #[error("{}: PJRT API version {major}.{minor} is not supported (xlac speaks {}.{}; the major version must match)", path.display(), crate::pjrt::ffi::API_MAJOR, crate::pjrt::ffi::API_MINOR)]
    ApiVersion { path: PathBuf, major: i32, minor: i32 },
    /// A PJRT call failed.
    #[error("PJRT {call} failed with {code}: {message}")]
    Pjrt { call: &'static str, code: ErrorCode, message: String },
    /// An argument does not match the program's signature.
    #[error("argument {index} (`{name}`): {message}")]
    Argument { index: usize, name: String, message: String },
    /// A host tensor is inconsistent or has the wrong type for a conversion.
    #[error("{0}")]
    Tensor(String),
    /// A tensor would need more host memory than the machine has available.
    #[error("{what} needs {} of host memory{}", crate::memory::human_bytes(*bytes), available.map(|a| format!(", more than the {} available", crate::memory::human_bytes(a))).unwrap_or_else(|| ", which could not be allocated".into()))]
    OutOfMemory { what: String, bytes: u64, available: Option<u64> },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// A file's contents are not what was expected.
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
}

/// The runtime's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
