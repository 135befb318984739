//! Pass tests, one per case: every file in tests/passes/PASS/ is a model, as
//! IR text (`.ir`, first line `; test pass PASS`) or model.json; the named
//! pass runs on it and the IR before and after is snapshotted (cases named
//! `must_not_fire` must come out unchanged; the snapshot's header names the
//! case). Every case, and every model fixture, also runs on the CPU plugin
//! at -O0 and -O2 with the same results (a case with a mesh runs split over
//! its devices).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use xlac_compiler::frontend::json::ModelFile;
use xlac_compiler::ir::print::print;
use xlac_compiler::passes::{pass, OptLevel, PassContext};
use xlac_driver::{compile_model, Options};
use xlac_tests::{case_name, compare, named_fixtures, pass_cases, repo_root, run_trials, shared_session, trial};

/// Reads a case, checking an `.ir` file's header names its pass.
fn load(pass: &str, path: &Path) -> xlac_compiler::ir::Module {
    if path.extension().is_some_and(|e| e == "ir") {
        let text = std::fs::read_to_string(path).unwrap();
        assert_eq!(text.lines().next(), Some(format!("; test pass {pass}").as_str()), "{}: header", path.display());
        xlac_compiler::frontend::text::parse(&text, path).unwrap()
    } else {
        ModelFile::load(path).unwrap().build(&BTreeMap::new()).unwrap()
    }
}

fn snapshot(name: &str, path: &Path) {
    let mut m = load(name, path);
    // Weight paths print as resolved; keep snapshots independent of the checkout's location.
    let root = repo_root().display().to_string();
    let before = print(&m).replace(&root, "<repo>");
    let mut cx = PassContext::default();
    assert!(cx.verify_each, "tests check that passes reporting no rewrite made none");
    let changed = pass(name, "test").unwrap().run(&mut m, &mut cx).unwrap() > 0;
    let after = print(&m).replace(&root, "<repo>");
    let case = path.file_stem().unwrap().to_string_lossy().into_owned();
    assert_eq!(changed, before != after, "{name}/{case}: the rewrite count must say whether the IR changed");
    if case.starts_with("must_not_fire") {
        assert!(!changed, "{name}/{case} must not fire:\n{after}");
    } else {
        assert!(changed, "{name}/{case} should fire");
    }
    let mut settings = insta::Settings::clone_current();
    settings.set_input_file(path.strip_prefix(repo_root()).unwrap_or(path));
    settings.bind(|| {
        insta::assert_snapshot!(
            format!("{name}__{case}"),
            format!("; test pass {name}\n; before\n{before}; after\n{after}")
        )
    });
}

/// Runs `path` at -O0 and -O2 on the CPU plugin with the same random inputs.
fn same_results(path: &Path, bindings: &BTreeMap<String, u64>) {
    // Four CPU devices: the sharding cases' meshes span up to four.
    let Some(session) = shared_session(Some(4)) else { return };
    let mut results = Vec::new();
    for level in [OptLevel::O0, OptLevel::O2] {
        let model = compile_model(path, &Options::at(level, bindings.clone()), &BTreeMap::new()).unwrap();
        results.push(session.run(&model, &BTreeMap::new(), 7).unwrap());
    }
    for ((name, o0), (_, o2)) in results[0].iter().zip(&results[1]) {
        // Fusion and weight folding regroup f32 arithmetic: equal within f32 rounding.
        compare(&format!("{}:{name}", path.display()), o2, o0, 1e-5, 1e-6).unwrap();
    }
}

fn fixture_on_xla(dir: PathBuf) {
    let b: BTreeMap<String, u64> = [("batch".to_string(), 2), ("seq".to_string(), 5)].into_iter().collect();
    let model = ModelFile::load(&dir.join("model.json")).unwrap();
    let bindings = b.into_iter().filter(|(k, _)| model.symbols().contains(k)).collect();
    same_results(&dir.join("model.json"), &bindings);
}

fn main() {
    let cases = pass_cases();
    assert!(cases.len() >= 5);
    let mut trials = Vec::new();
    for (pass, path) in cases {
        let name = case_name(&pass, &path);
        let file = path.clone();
        trials.push(trial(format!("{name}::snapshot"), move || snapshot(&pass, &file)));
        trials.push(trial(format!("{name}::o0_and_o2_agree_on_xla"), move || same_results(&path, &BTreeMap::new())));
    }
    for (name, dir) in named_fixtures() {
        trials.push(trial(format!("fixture::{name}::o0_and_o2_agree_on_xla"), move || fixture_on_xla(dir)));
    }
    run_trials(trials)
}
