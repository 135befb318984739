//! Pass tests: every file in tests/passes/PASS/ is a model, as IR text (`.ir`,
//! first line `; test pass PASS`) or model.json; the named pass runs on it and
//! the IR before and after is snapshotted (cases named `must_not_fire` must
//! come out unchanged). Every case, and every model
//! fixture, also runs on the CPU plugin at -O0 and -O2 with the same results
//! (a case with a mesh runs split over its devices).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use xlac_compiler::frontend::json::ModelFile;
use xlac_compiler::ir::print::print;
use xlac_compiler::passes::{pass, OptLevel, PassContext};
use xlac_driver::{compile_model, Options, Session};
use xlac_runtime::{CacheConfig, ClientOptions, Platform};
use xlac_tests::{compare, cpu_plugin, fixtures, repo_root};

fn cases() -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(repo_root().join("tests/passes")).unwrap().flatten() {
        let pass = dir.file_name().to_string_lossy().into_owned();
        for f in std::fs::read_dir(dir.path()).unwrap().flatten() {
            out.push((pass.clone(), f.path()));
        }
    }
    out.sort();
    out
}

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

#[test]
fn each_pass_on_its_cases() {
    let cases = cases();
    assert!(cases.len() >= 5);
    for (name, path) in cases {
        let mut m = load(&name, &path);
        // Weight paths print as resolved; keep snapshots independent of the checkout's location.
        let root = repo_root().display().to_string();
        let before = print(&m).replace(&root, "<repo>");
        let mut cx = PassContext::default();
        assert!(cx.verify_each, "tests check that passes reporting no rewrite made none");
        let changed = pass(&name, "test").unwrap().run(&mut m, &mut cx).unwrap() > 0;
        let after = print(&m).replace(&root, "<repo>");
        let case = path.file_stem().unwrap().to_string_lossy().into_owned();
        assert_eq!(changed, before != after, "{name}/{case}: `changed` must say whether the IR changed");
        if case.starts_with("must_not_fire") {
            assert!(!changed, "{name}/{case} must not fire:\n{after}");
        } else {
            assert!(changed, "{name}/{case} should fire");
        }
        insta::assert_snapshot!(
            format!("{name}__{case}"),
            format!("; test pass {name}\n; before\n{before}; after\n{after}")
        );
    }
}

/// Runs `path` at -O0 and -O2 on the CPU plugin with the same random inputs.
fn same_results(session: &Session, path: &Path, bindings: &BTreeMap<String, u64>) {
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

#[test]
fn optimised_programs_compute_the_same_on_xla() {
    let Some(plugin) = cpu_plugin() else { return };
    // Four CPU devices: the sharding cases' meshes span up to four.
    let options = ClientOptions { cpu_device_count: Some(4) };
    let session = Session::new(Platform::Cpu, Some(plugin.path()), &options, &CacheConfig::disabled()).unwrap();
    for (_, path) in cases() {
        same_results(&session, &path, &BTreeMap::new());
    }
    let b: BTreeMap<String, u64> = [("batch".to_string(), 2), ("seq".to_string(), 5)].into_iter().collect();
    for dir in fixtures() {
        let model = ModelFile::load(&dir.join("model.json")).unwrap();
        let bindings = b.iter().filter(|(k, _)| model.symbols().contains(*k)).map(|(k, v)| (k.clone(), *v)).collect();
        same_results(&session, &dir.join("model.json"), &bindings);
    }
}
