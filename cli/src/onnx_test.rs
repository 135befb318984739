//! `xlac onnx-test`: ONNX's backend conformance suite through xlac.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::collections::BTreeMap;
use std::path::PathBuf;
use xlac_compiler::frontend::onnx;
use xlac_driver::onnx_suite::{self, Outcome};
use xlac_driver::Session;

#[derive(Args)]
pub struct OnnxTestArgs {
    /// The suite's directory, as fixtures/onnx/make_suite.py writes it.
    dir: PathBuf,
    /// Run only the cases whose `kind/name` contains this.
    #[arg(long)]
    filter: Option<String>,
    /// A list of `kind/name` expected to pass (one per line, `#` comments): exit 1 if one does not.
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
    /// Write the cases that passed to FILE, as a manifest.
    #[arg(long, value_name = "FILE")]
    write_manifest: Option<PathBuf>,
    /// Print the table per operator (pass / fail / unsupported) as Markdown.
    #[arg(long)]
    table: bool,
    /// The PJRT plugin library (else XLAC_PJRT_PLUGIN, else found where pip installs it).
    #[arg(long, value_name = "PATH", conflicts_with = "interpreter")]
    plugin: Option<PathBuf>,
    /// Run the cases on xlac's reference interpreter (f64/i64) instead of a plugin.
    #[arg(long)]
    interpreter: bool,
}

pub fn onnx_test(a: OnnxTestArgs) -> Result<()> {
    let mut cases = onnx_suite::cases(&a.dir)?;
    if let Some(f) = &a.filter {
        cases.retain(|c| c.id().contains(f.as_str()));
    }
    if cases.is_empty() {
        bail!(
            "{}: no case (expected DIR/<kind>/<case>/model.onnx; fixtures/onnx/make_suite.py writes them)",
            a.dir.display()
        );
    }
    let expected = match &a.manifest {
        Some(m) => onnx_suite::read_manifest(m)?,
        None => Vec::new(),
    };
    let session = if a.interpreter { None } else { Some(Session::cpu(a.plugin.as_deref())?) };
    let mut results = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let o = onnx_suite::run(session.as_ref(), c);
        let line = match &o {
            Outcome::Pass { worst } => format!("pass         {} (worst {:.2} of the tolerance)", c.id(), worst),
            Outcome::Fail { reason } => format!("FAIL         {}: {reason}", c.id()),
            Outcome::Unsupported { reason } => format!("unsupported  {}: {reason}", c.id()),
        };
        eprintln!("[{}/{}] {line}", i + 1, cases.len());
        results.push((c.clone(), o));
    }
    let count = |f: fn(&Outcome) -> bool| results.iter().filter(|(_, o)| f(o)).count();
    let pass = count(|o| matches!(o, Outcome::Pass { .. }));
    let fail = count(|o| matches!(o, Outcome::Fail { .. }));
    let unsupported = count(|o| matches!(o, Outcome::Unsupported { .. }));
    println!("{} cases: {pass} pass, {fail} fail, {unsupported} unsupported", results.len());
    let mut kinds: BTreeMap<&str, [usize; 3]> = BTreeMap::new();
    for (c, o) in &results {
        kinds.entry(&c.kind).or_default()[slot(o)] += 1;
    }
    for (k, [p, f, u]) in &kinds {
        println!("  {k}: {p} pass, {f} fail, {u} unsupported");
    }
    let translated: Vec<&Outcome> = results
        .iter()
        .filter(|(c, _)| c.kind == "node" && c.operator().is_some_and(|op| onnx::translates(&op)))
        .map(|(_, o)| o)
        .collect();
    if !translated.is_empty() {
        let p = translated.iter().filter(|o| matches!(o, Outcome::Pass { .. })).count();
        let share = 100.0 * p as f64 / translated.len() as f64;
        println!("  node tests of an operator xlac translates: {p} of {} pass ({share:.1}%)", translated.len());
    }
    if a.table {
        print!("{}", table(&results));
    }
    if let Some(w) = &a.write_manifest {
        let mut text = String::from("# ONNX conformance cases expected to pass (xlac onnx-test --write-manifest)\n");
        for (c, o) in &results {
            if matches!(o, Outcome::Pass { .. }) {
                text.push_str(&c.id());
                text.push('\n');
            }
        }
        xlac_core::file::replace(w, |f| f.write_all(text.as_bytes()))
            .with_context(|| format!("cannot write {}", w.display()))?;
    }
    let regressed: Vec<String> = expected
        .iter()
        .filter(|id| results.iter().any(|(c, o)| &c.id() == *id && !matches!(o, Outcome::Pass { .. })))
        .cloned()
        .collect();
    if !regressed.is_empty() {
        bail!("{} case(s) of the manifest do not pass: {}", regressed.len(), regressed.join(", "));
    }
    Ok(())
}

fn slot(o: &Outcome) -> usize {
    match o {
        Outcome::Pass { .. } => 0,
        Outcome::Fail { .. } => 1,
        Outcome::Unsupported { .. } => 2,
    }
}

/// The node tests per operator: pass, fail, unsupported.
fn table(results: &[(onnx_suite::Case, Outcome)]) -> String {
    let mut ops: BTreeMap<String, [usize; 3]> = BTreeMap::new();
    for (c, o) in results.iter().filter(|(c, _)| c.kind == "node") {
        let op = c.operator().unwrap_or_else(|| "(several operators)".into());
        ops.entry(op).or_default()[slot(o)] += 1;
    }
    let mut s = String::from("| operator | pass | fail | unsupported |\n|---|---|---|---|\n");
    for (op, [p, f, u]) in ops {
        s.push_str(&format!("| {op} | {p} | {f} | {u} |\n"));
    }
    s
}
