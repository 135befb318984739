//! Snapshots of the printed IR and of the emitted StableHLO for every fixture,
//! as written (-O0), after the full -O2 pipeline, and under mixed-bf16 (the
//! IR: where the casts go). Review a changed snapshot as you would review
//! code (`cargo insta review`).

use std::collections::BTreeMap;
use xlac_compiler::ir::print::print;
use xlac_compiler::passes::precision::Precision;
use xlac_compiler::passes::OptLevel;
use xlac_driver::{compile_model, Options};
use xlac_tests::{fixtures, read_npy_dir, repo_root};

#[test]
fn ir_and_stablehlo_of_every_fixture() {
    let root = repo_root().display().to_string();
    for dir in fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let inputs = read_npy_dir(&dir.join("inputs"));
        for (level, suffix) in [(OptLevel::O0, ""), (OptLevel::O2, ".O2")] {
            let path = dir.join("model.json");
            let model = compile_model(&path, &Options::at(level, BTreeMap::new()), &inputs).unwrap();
            // Weight paths print as resolved; keep snapshots independent of the checkout's location.
            let ir = print(&model.module).replace(&root, "<repo>");
            insta::assert_snapshot!(format!("{name}{suffix}.ir"), ir);
            insta::assert_snapshot!(format!("{name}{suffix}.stablehlo"), model.lowered.text);
        }
        let mixed = Options { precision: Precision::MixedBf16, ..Options::default() };
        let model = compile_model(&dir.join("model.json"), &mixed, &inputs).unwrap();
        insta::assert_snapshot!(format!("{name}.mixed-bf16.ir"), print(&model.module).replace(&root, "<repo>"));
    }
}

#[test]
fn lowering_is_deterministic() {
    for dir in fixtures() {
        let inputs = read_npy_dir(&dir.join("inputs"));
        let a = compile_model(&dir.join("model.json"), &Default::default(), &inputs).unwrap();
        let b = compile_model(&dir.join("model.json"), &Default::default(), &inputs).unwrap();
        assert_eq!(a.lowered.text, b.lowered.text, "{}", dir.display());
    }
}

#[test]
fn ir_and_stablehlo_of_sharded_fixtures() {
    use xlac_compiler::ir::sharding::Mesh;
    use xlac_compiler::passes::ShardPolicy;

    let root = repo_root().display().to_string();
    let b: BTreeMap<String, u64> = [("batch".to_string(), 4), ("seq".to_string(), 8)].into_iter().collect();
    for name in ["mlp", "transformer_block"] {
        let path = repo_root().join("fixtures").join(name).join("model.json");
        let bindings = if name == "mlp" { b.iter().take(1).map(|(k, v)| (k.clone(), *v)).collect() } else { b.clone() };
        let options = Options {
            bindings,
            mesh: Some(Mesh::parse("data=2,model=2").unwrap()),
            policies: vec![ShardPolicy::Data, ShardPolicy::Tensor],
            ..Options::default()
        };
        let model = compile_model(&path, &options, &BTreeMap::new()).unwrap();
        insta::assert_snapshot!(format!("{name}.2d.ir"), print(&model.module).replace(&root, "<repo>"));
        insta::assert_snapshot!(format!("{name}.2d.stablehlo"), model.lowered.text);
    }
}
