//! ONNX's backend conformance suite run through xlac (`xlac onnx-test`, the
//! conformance test): each case's model imported and compiled at its inputs'
//! shapes, run on the session's plugin, every output compared with the
//! suite's expected one as ONNX's runner compares them (`numpy.testing.
//! assert_allclose`: `|x - e| <= atol + rtol·|e|`, NaN where NaN is
//! expected, the same dtype and shape).
//!
//! The suite is written out by `fixtures/onnx/make_suite.py` as
//! `DIR/<kind>/<case>/model.onnx` with `test_data_set_<k>/input_<i>.pb` and
//! `output_<i>.pb`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use xlac_compiler::frontend::onnx;
use xlac_compiler::pipeline::Options;
use xlac_runtime::HostTensor;

use crate::{compile_model, eval_model, Error, Session};

/// One case of the suite.
#[derive(Clone, Debug)]
pub struct Case {
    /// `node`, `pytorch-converted`, `pytorch-operator`, `simple` or `light`.
    pub kind: String,
    pub name: String,
    pub dir: PathBuf,
}

impl Case {
    /// `kind/name`, as the manifest lists it.
    pub fn id(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }

    /// The operator a node test is about: its graph's one operator, or the one
    /// whose name the case's starts with; `None` for a model of several.
    pub fn operator(&self) -> Option<String> {
        let ops = onnx::operators(&self.dir.join("model.onnx")).ok()?;
        if ops.len() == 1 {
            return ops.into_iter().next();
        }
        let name = self.name.trim_start_matches("test_").replace('_', "");
        ops.into_iter().filter(|o| name.starts_with(&o.to_lowercase())).max_by_key(String::len)
    }
}

/// How a case went.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Every output within tolerance; the largest error relative to the tolerance allowed.
    Pass { worst: f64 },
    /// Wrong results or an error other than "unsupported".
    Fail { reason: String },
    /// Something xlac does not translate (an operator, attribute, dtype).
    Unsupported { reason: String },
}

/// The cases under `dir`, sorted by kind and name.
pub fn cases(dir: &Path) -> Result<Vec<Case>, Error> {
    let mut out = Vec::new();
    let read = |p: &Path| std::fs::read_dir(p).map_err(|source| xlac_compiler::Error::Read { path: p.into(), source });
    for kind in read(dir)? {
        let kind = kind.map_err(|source| xlac_compiler::Error::Read { path: dir.into(), source })?;
        if !kind.path().is_dir() {
            continue;
        }
        for case in read(&kind.path())? {
            let case = case.map_err(|source| xlac_compiler::Error::Read { path: kind.path(), source })?;
            if case.path().join("model.onnx").is_file() {
                out.push(Case {
                    kind: kind.file_name().to_string_lossy().into_owned(),
                    name: case.file_name().to_string_lossy().into_owned(),
                    dir: case.path(),
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
    Ok(out)
}

/// The case ids (`kind/name`) a manifest lists: one per line, `#` comments.
pub fn read_manifest(path: &Path) -> Result<Vec<String>, Error> {
    let text =
        std::fs::read_to_string(path).map_err(|source| xlac_compiler::Error::Read { path: path.into(), source })?;
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// Runs one case on `session`, or on xlac's reference interpreter when `None`.
pub fn run(session: Option<&Session>, case: &Case) -> Outcome {
    match try_run(session, case) {
        Ok(o) => o,
        Err(Error::Compiler(e @ xlac_compiler::Error::Unsupported { .. })) => {
            Outcome::Unsupported { reason: first_line(&e) }
        }
        Err(e) => Outcome::Fail { reason: first_line(&e) },
    }
}

fn first_line(e: &dyn std::fmt::Display) -> String {
    let s = e.to_string();
    let lines: Vec<&str> = s.lines().collect();
    // An error's first line names the file; its diagnostics follow.
    lines.get(1).or(lines.first()).map_or(String::new(), |l| l.trim().to_string())
}

fn try_run(session: Option<&Session>, case: &Case) -> Result<Outcome, Error> {
    let model = case.dir.join("model.onnx");
    let names = onnx::input_names(&model)?;
    let (rtol, atol) = tolerance(&case.dir);
    let mut worst: f64 = 0.0;
    let mut sets: Vec<PathBuf> = std::fs::read_dir(&case.dir)
        .map_err(|source| xlac_compiler::Error::Read { path: case.dir.clone(), source })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("test_data_set_")))
        .collect();
    sets.sort();
    for set in sets {
        let mut given = BTreeMap::new();
        for (i, name) in names.iter().enumerate() {
            let p = set.join(format!("input_{i}.pb"));
            if !p.exists() {
                return Ok(Outcome::Unsupported {
                    reason: format!("input {i} is not a tensor (sequence, map or optional)"),
                });
            }
            given.insert(name.clone(), host(&onnx::read_tensor(&p)?)?);
        }
        let compiled = compile_model(&model, &Options::default(), &given)?;
        let outputs = match session {
            Some(s) => s.run(&compiled, &given, 0)?,
            None => eval_model(&compiled, &given, 0)?,
        };
        for (i, (name, got)) in outputs.iter().enumerate() {
            let p = set.join(format!("output_{i}.pb"));
            if !p.exists() {
                return Ok(Outcome::Unsupported { reason: format!("expected output {i} is not a tensor") });
            }
            let want = onnx::read_tensor(&p)?;
            let want = host(&want)?;
            match compare(got, &want, rtol, atol) {
                Ok(w) => worst = worst.max(w),
                Err(m) => return Ok(Outcome::Fail { reason: format!("{}: output {i} `{name}`: {m}", set_name(&set)) }),
            }
        }
    }
    Ok(Outcome::Pass { worst })
}

fn set_name(p: &Path) -> String {
    p.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned())
}

fn host(t: &onnx::TensorFile) -> Result<HostTensor, Error> {
    Ok(HostTensor::new(t.dtype, t.shape.iter().map(|&d| d as usize).collect(), t.data.clone())?)
}

/// The case's tolerance: `tolerance.txt` (rtol atol) where the suite gives one, else ONNX's default.
fn tolerance(dir: &Path) -> (f64, f64) {
    let text = std::fs::read_to_string(dir.join("tolerance.txt")).unwrap_or_default();
    let v: Vec<f64> = text.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    match v[..] {
        [r, a] => (r, a),
        _ => (1e-3, 1e-7),
    }
}

/// `Ok(worst)`: the largest `|x - e| / (atol + rtol·|e|)` (at most 1); `Err` says what differs.
pub fn compare(got: &HostTensor, want: &HostTensor, rtol: f64, atol: f64) -> Result<f64, String> {
    if got.element_type() != want.element_type() {
        return Err(format!("dtype {} where {} is expected", got.element_type(), want.element_type()));
    }
    if got.shape() != want.shape() {
        return Err(format!("shape {:?} where {:?} is expected", got.shape(), want.shape()));
    }
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    let mut worst: f64 = 0.0;
    for (i, (&x, &e)) in g.iter().zip(&w).enumerate() {
        if e.is_nan() || x.is_nan() {
            if e.is_nan() != x.is_nan() {
                return Err(format!("element {i} is {x} where {e} is expected"));
            }
            continue;
        }
        if e.is_infinite() || x.is_infinite() {
            if x != e {
                return Err(format!("element {i} is {x} where {e} is expected"));
            }
            continue;
        }
        let r = (x - e).abs() / (atol + rtol * e.abs());
        if r > 1.0 {
            return Err(format!("element {i} is {x} where {e} is expected (rtol {rtol}, atol {atol})"));
        }
        worst = worst.max(r);
    }
    Ok(worst)
}
