//! Every fixture model compiled by xlac and run on XLA's CPU plugin matches the
//! outputs of the independent NumPy implementation in fixtures/generate.py.

use std::collections::BTreeMap;
use xlac_driver::{compile_model, Options, Session};
use xlac_runtime::{CacheConfig, ClientOptions, Platform};
use xlac_tests::{compare, cpu_plugin, fixtures, read_npy_dir};

#[test]
fn fixtures_match_numpy_on_the_cpu_plugin() {
    let Some(plugin) = cpu_plugin() else { return };
    // Compiled without the cache: this test checks XLA's results themselves.
    let session =
        Session::new(Platform::Cpu, Some(plugin.path()), &ClientOptions::default(), &CacheConfig::disabled()).unwrap();
    let mut failures = Vec::new();
    let dirs = fixtures();
    assert!(dirs.len() >= 4, "expected the mlp, cnn, transformer_block and ops fixtures");
    for dir in dirs {
        let inputs = read_npy_dir(&dir.join("inputs"));
        let expected = read_npy_dir(&dir.join("expected"));
        let model = compile_model(&dir.join("model.json"), &Default::default(), &inputs).unwrap();
        let outputs = session.run(&model, &inputs, 0).unwrap();
        assert_eq!(outputs.len(), expected.len(), "{}", dir.display());
        for (name, actual) in &outputs {
            let want = &expected[name];
            if let Err(e) = compare(&format!("{}:{name}", dir.display()), actual, want, 1e-5, 1e-6) {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn integer_division_by_zero_is_defined_and_never_crashes() {
    let path = xlac_tests::repo_root().join("tests/models/integer_division.json");
    let a = xlac_runtime::HostTensor::from_array(&ndarray::array![7i32, -7, 5, i32::MIN, 3, -9]);
    let b = xlac_runtime::HostTensor::from_array(&ndarray::array![2i32, 2, 0, -1, 0, 4]);
    let c = xlac_runtime::HostTensor::from_array(&ndarray::array![200u8, 3]);
    let given: BTreeMap<String, _> =
        [("a".to_string(), a), ("b".to_string(), b), ("c".to_string(), c)].into_iter().collect();
    let want_q = vec![3.0, -3.0, 0.0, i32::MIN as f64, 0.0, -2.0];
    for level in [xlac_compiler::passes::OptLevel::O0, xlac_compiler::passes::OptLevel::O2] {
        let model = compile_model(&path, &Options::at(level, BTreeMap::new()), &given).unwrap();
        let reference = xlac_driver::eval_model(&model, &given, 0).unwrap();
        assert_eq!(reference[0].1.to_f64_vec(), want_q);
        assert_eq!(reference[1].1.to_f64_vec(), vec![0.0, 0.0]);
        let Some(plugin) = cpu_plugin() else { continue };
        let session =
            Session::new(Platform::Cpu, Some(plugin.path()), &ClientOptions::default(), &CacheConfig::disabled())
                .unwrap();
        let xla = session.run(&model, &given, 0).unwrap();
        assert_eq!(xla[0].1.to_f64_vec(), want_q);
        assert_eq!(xla[1].1.to_f64_vec(), vec![0.0, 0.0]);
    }
}
