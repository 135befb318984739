//! Every fixture model compiled by xlac and run on XLA's CPU plugin matches the
//! outputs of the independent NumPy implementation in fixtures/generate.py
//! (one test per fixture).

use std::collections::BTreeMap;
use std::path::Path;
use xlac_compiler::passes::OptLevel;
use xlac_driver::{compile_model, eval_model, Options};
use xlac_tests::{compare, named_fixtures, read_npy_dir, run_trials, shared_session, trial};

/// `dir`'s model, compiled without the cache (this checks XLA's results
/// themselves), matches its NumPy expectations.
fn matches_numpy(dir: &Path) {
    let Some(session) = shared_session(None) else { return };
    let inputs = read_npy_dir(&dir.join("inputs"));
    let expected = read_npy_dir(&dir.join("expected"));
    let model = compile_model(&dir.join("model.json"), &Default::default(), &inputs).unwrap();
    let outputs = session.run(&model, &inputs, 0).unwrap();
    assert_eq!(outputs.len(), expected.len(), "{}", dir.display());
    let failures: Vec<String> = outputs
        .iter()
        .filter_map(|(name, actual)| {
            compare(&format!("{}:{name}", dir.display()), actual, &expected[name], 1e-5, 1e-6).err()
        })
        .collect();
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

fn integer_division_by_zero_is_defined_and_never_crashes() {
    let path = xlac_tests::repo_root().join("tests/models/integer_division.json");
    let a = xlac_runtime::HostTensor::from_array(&ndarray::array![7i32, -7, 5, i32::MIN, 3, -9]);
    let b = xlac_runtime::HostTensor::from_array(&ndarray::array![2i32, 2, 0, -1, 0, 4]);
    let c = xlac_runtime::HostTensor::from_array(&ndarray::array![200u8, 3]);
    let given: BTreeMap<String, _> =
        [("a".to_string(), a), ("b".to_string(), b), ("c".to_string(), c)].into_iter().collect();
    let want_q = vec![3.0, -3.0, 0.0, i32::MIN as f64, 0.0, -2.0];
    for level in [OptLevel::O0, OptLevel::O2] {
        let model = compile_model(&path, &Options::at(level, BTreeMap::new()), &given).unwrap();
        let reference = eval_model(&model, &given, 0).unwrap();
        assert_eq!(reference[0].1.to_f64_vec(), want_q);
        assert_eq!(reference[1].1.to_f64_vec(), vec![0.0, 0.0]);
        let Some(session) = shared_session(None) else { continue };
        let xla = session.run(&model, &given, 0).unwrap();
        assert_eq!(xla[0].1.to_f64_vec(), want_q);
        assert_eq!(xla[1].1.to_f64_vec(), vec![0.0, 0.0]);
    }
}

fn main() {
    let fixtures = named_fixtures();
    assert!(fixtures.len() >= 4, "expected the mlp, cnn, transformer_block and ops fixtures");
    let mut trials: Vec<_> = fixtures
        .into_iter()
        .map(|(name, dir)| trial(format!("{name}::matches_numpy"), move || matches_numpy(&dir)))
        .collect();
    trials.push(trial(
        "integer_division_by_zero_is_defined_and_never_crashes",
        integer_division_by_zero_is_defined_and_never_crashes,
    ));
    run_trials(trials)
}
