//! Errors of the compiler: every one names where (file, JSON path or node) and what was expected.

use std::fmt;
use std::path::PathBuf;

/// One problem found in a model, at a place a person can find.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// A JSON path such as `nodes[3].attrs.axis`, or a node such as ``node `h1` (matmul)``.
    pub location: String,
    /// What was found and what was expected.
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic at `location`.
    pub fn new(location: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic { location: location.into(), message: message.into() }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// A compiler error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// The model file is not valid JSON.
    #[error("{}:{line}:{column}: malformed JSON: {message}", path.display())]
    Json { path: PathBuf, line: usize, column: usize, message: String },
    /// A compiler option names something that does not exist (a pass, a stage)
    /// or combines options that do not go together.
    #[error("{option}: {message}")]
    Option { option: String, message: String },
    /// The model is invalid; every problem found is listed.
    #[error("{}", render(origin, diagnostics))]
    Invalid { origin: String, diagnostics: Vec<Diagnostic> },
    /// The model is valid but uses what xlac does not translate (an ONNX
    /// operator, opset, element type or attribute); every one found is listed.
    #[error("{}", render(origin, diagnostics))]
    Unsupported { origin: String, diagnostics: Vec<Diagnostic> },
}

impl Error {
    /// A JSON syntax error in `path`, at serde_json's line and column.
    pub(crate) fn json(path: &std::path::Path, e: &serde_json::Error) -> Error {
        Error::Json {
            path: path.into(),
            line: e.line(),
            column: e.column(),
            message: e.to_string().split(" at line").next().unwrap_or_default().to_string(),
        }
    }

    /// The diagnostics of an [`Error::Invalid`], empty for the other kinds.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            Error::Invalid { diagnostics, .. } | Error::Unsupported { diagnostics, .. } => diagnostics,
            _ => &[],
        }
    }
}

/// The candidate closest to `name` within edit distance 2, for "did you mean" hints.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, &cb) in b.iter().enumerate() {
                cur.push((prev[j] + (ca != cb) as usize).min(prev[j + 1] + 1).min(cur[j] + 1));
            }
            prev = cur;
        }
        prev[b.len()]
    }
    candidates.into_iter().map(|n| (distance(name, n), n)).filter(|(d, _)| *d <= 2).min().map(|(_, n)| n)
}

/// `"; did you mean `x`?"` when a candidate is close to `name`, else empty.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    closest(name, candidates).map(|s| format!("; did you mean `{s}`?")).unwrap_or_default()
}

fn render(origin: &str, diagnostics: &[Diagnostic]) -> String {
    let lines: Vec<String> = diagnostics.iter().map(|d| format!("{origin}: {d}")).collect();
    let mut s = lines.join("\n");
    if diagnostics.len() > 1 {
        s.push_str(&format!("\n{} errors", diagnostics.len()));
    }
    s
}
