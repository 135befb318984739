//! Every fixture model compiled by xlac and run on XLA's CPU plugin matches the
//! outputs of the independent NumPy implementation in fixtures/generate.py.

use std::collections::BTreeMap;
use xlac::{compile_model, Session};
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
        let model = compile_model(&dir.join("model.json"), &BTreeMap::new(), &inputs).unwrap();
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
