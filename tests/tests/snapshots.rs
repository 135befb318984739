//! Snapshots of the printed IR and of the emitted StableHLO for every fixture
//! (one test each), as written (-O0), after the full -O2 pipeline (when it
//! changes anything) and under mixed-bf16 (the IR: where the casts go); and of
//! the fixtures split over a 2×2 mesh. Each snapshot's header names its
//! fixture. Review a changed snapshot as you would review code (`cargo insta review`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use xlac_compiler::ir::print::print;
use xlac_compiler::ir::sharding::Mesh;
use xlac_compiler::passes::precision::Precision;
use xlac_compiler::passes::{OptLevel, ShardPolicy};
use xlac_driver::{compile_model, Options};
use xlac_tests::{named_fixtures, read_npy_dir, repo_root, run_trials, trial};

/// Insta settings whose snapshot header names `model` (relative to the repository).
fn naming(model: &Path) -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_input_file(model.strip_prefix(repo_root()).unwrap_or(model));
    s
}

/// The IR for snapshots: weight paths print as resolved, so the checkout's location is replaced.
fn ir(module: &xlac_compiler::ir::Module) -> String {
    print(module).replace(&repo_root().display().to_string(), "<repo>")
}

fn fixture(name: &str, dir: &Path) {
    let path = dir.join("model.json");
    let inputs = read_npy_dir(&dir.join("inputs"));
    let compile = |options: &Options| compile_model(&path, options, &inputs).unwrap();
    let o0 = compile(&Options::at(OptLevel::O0, BTreeMap::new()));
    let o2 = compile(&Options::default());
    let mixed = compile(&Options { precision: Precision::MixedBf16, ..Options::default() });
    let again = compile(&Options::default());
    assert_eq!(o2.lowered.text, again.lowered.text, "{name}: the lowering is deterministic");
    naming(&path).bind(|| {
        insta::assert_snapshot!(format!("{name}.ir"), ir(&o0.module));
        insta::assert_snapshot!(format!("{name}.stablehlo"), o0.lowered.text);
        // -O2 is snapshotted where it changes the program (else the -O0 snapshots say it all).
        if ir(&o2.module) != ir(&o0.module) || o2.lowered.text != o0.lowered.text {
            insta::assert_snapshot!(format!("{name}.O2.ir"), ir(&o2.module));
            insta::assert_snapshot!(format!("{name}.O2.stablehlo"), o2.lowered.text);
        }
        insta::assert_snapshot!(format!("{name}.mixed-bf16.ir"), ir(&mixed.module));
    });
}

fn sharded(name: &str, path: PathBuf) {
    let b: BTreeMap<String, u64> = [("batch".to_string(), 4), ("seq".to_string(), 8)].into_iter().collect();
    let bindings = if name == "mlp" { b.iter().take(1).map(|(k, v)| (k.clone(), *v)).collect() } else { b };
    let options = Options {
        bindings,
        mesh: Some(Mesh::parse("data=2,model=2").unwrap()),
        policies: vec![ShardPolicy::Data, ShardPolicy::Tensor],
        ..Options::default()
    };
    let model = compile_model(&path, &options, &BTreeMap::new()).unwrap();
    naming(&path).bind(|| {
        insta::assert_snapshot!(format!("{name}.2d.ir"), ir(&model.module));
        insta::assert_snapshot!(format!("{name}.2d.stablehlo"), model.lowered.text);
    });
}

fn main() {
    let mut trials: Vec<_> =
        named_fixtures().into_iter().map(|(name, dir)| trial(name.clone(), move || fixture(&name, &dir))).collect();
    for name in ["mlp", "transformer_block"] {
        let path = repo_root().join("fixtures").join(name).join("model.json");
        trials.push(trial(format!("{name}::2d"), move || sharded(name, path)));
    }
    run_trials(trials)
}
