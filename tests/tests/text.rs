//! The IR text form round-trips: print_full → parse → print_full gives the
//! same text and the same StableHLO, for every fixture and pass case, as
//! written and after -O2. Bad text is reported by line.

use std::collections::BTreeMap;
use std::path::Path;
use xlac_compiler::backend::stablehlo::lower;
use xlac_compiler::frontend::text::parse;
use xlac_compiler::ir::print::print_full;
use xlac_compiler::passes::OptLevel;
use xlac_driver::{compile_model, Options};
use xlac_tests::{case_name, named_fixtures, pass_cases, read_npy_dir, run_trials, trial};

/// `path`'s IR, as written and after -O2, prints, parses back and prints
/// the same, and lowers to the same StableHLO.
fn round_trips(path: &Path, inputs: &BTreeMap<String, xlac_runtime::HostTensor>) {
    for level in [OptLevel::O0, OptLevel::O2] {
        let m = compile_model(path, &Options::at(level, BTreeMap::new()), inputs).unwrap().module;
        let text = print_full(&m);
        let back =
            parse(&text, Path::new("roundtrip.ir")).unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()));
        assert_eq!(print_full(&back), text, "{} at {level:?}", path.display());
        assert_eq!(lower(&back).text, lower(&m).text, "{} at {level:?}", path.display());
    }
}

fn bad_text_is_reported_by_line() {
    let cases = [
        (
            "module @m {\n  input %x: f32[2]\n  %y = exp(%x): f32[3]\n  output %y\n}\n",
            "line 3: `%y` is written as f32[3] but infers as f32[2]",
        ),
        ("module @m {\n  input %x: f32[2]\n  %y = exp %x\n}\n", "line 3: expected `OP(` after `=`"),
        ("modul @m {\n}\n", "line 1: expected `module @NAME {`"),
        ("module @m {\n  input %x: f32[2]\n  output %x\n", "not closed"),
        ("module @m {\n  input %x: f32[2\n}\n", "line 2: expected `]`"),
        ("module @m {\n  input %x: f32[2]\n  %y = frobnicate(%x): f32[2]\n  output %y\n}\n", "unknown op `frobnicate`"),
    ];
    for (text, expected) in cases {
        let e = parse(text, Path::new("case.ir")).err().unwrap_or_else(|| panic!("must fail:\n{text}")).to_string();
        assert!(e.contains("case.ir") && e.contains(expected), "expected `{expected}` in:\n{e}");
    }
}

fn main() {
    let mut trials = Vec::new();
    for (name, dir) in named_fixtures() {
        trials.push(trial(format!("fixture::{name}::round_trips"), move || {
            round_trips(&dir.join("model.json"), &read_npy_dir(&dir.join("inputs")))
        }));
    }
    for (pass, path) in pass_cases().into_iter().filter(|(_, p)| p.extension().is_some_and(|e| e == "json")) {
        trials.push(trial(format!("{}::round_trips", case_name(&pass, &path)), move || {
            round_trips(&path, &BTreeMap::new())
        }));
    }
    trials.push(trial("bad_text_is_reported_by_line", bad_text_is_reported_by_line));
    run_trials(trials)
}
