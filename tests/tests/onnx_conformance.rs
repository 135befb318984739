//! ONNX's backend conformance suite: every case of the committed manifest
//! (fixtures/onnx/expected-pass.txt) passes, one test per case, so a
//! regression fails and names its case. The suite is written by
//! `fixtures/onnx/make_suite.py` (into target/onnx-suite, or
//! `XLAC_ONNX_SUITE`); without it the tests print `skipping`, and fail when
//! `CI` is set. `xlac onnx-test DIR` runs every case, unsupported ones too.

use std::path::PathBuf;
use xlac_driver::onnx_suite::{self, Case, Outcome};
use xlac_tests::{repo_root, run_trials, shared_session, trial, Trial};

fn suite_dir() -> PathBuf {
    std::env::var_os("XLAC_ONNX_SUITE").map_or_else(|| repo_root().join("target/onnx-suite"), PathBuf::from)
}

fn main() {
    let dir = suite_dir();
    let manifest = repo_root().join("fixtures/onnx/expected-pass.txt");
    let expected = onnx_suite::read_manifest(&manifest).expect("the committed manifest");
    if !dir.is_dir() {
        let why = format!(
            "{}: no ONNX conformance suite (pip install onnx numpy && python3 fixtures/onnx/make_suite.py)",
            dir.display()
        );
        if std::env::var_os("CI").is_some() {
            panic!("CI is set but {why}");
        }
        eprintln!("skipping: {why}");
        run_trials(Vec::new());
    }
    let cases = onnx_suite::cases(&dir).expect("the suite's cases");
    // A sample on xlac's reference interpreter too (`xlac onnx-test --interpreter` runs them all).
    let on_interpreter = [
        "node/test_add_bcast",
        "node/test_conv_with_strides_padding",
        "node/test_softmax_axis_0",
        "node/test_gather_1",
        "node/test_div_uint64",
        "node/test_less_int16",
        "node/test_cast_FLOAT_to_FLOAT8E4M3FN",
        "node/test_cast_no_saturate_FLOAT16_to_FLOAT8E5M2",
        "node/test_cast_FLOAT8E4M3FNUZ_to_FLOAT",
        "node/test_sce_mean_weight_ii_4d_log_prob",
        "node/test_bitshift_right_int8_negative_input",
        "node/test_attention_3d_gqa_with_past_and_present",
        "node/test_attention_4d_attn_mask_bool_4d",
        "node/test_attention_4d_fp16",
        "node/test_attention_4d_attn_mask_bool_4d_expanded",
        "node/test_attention_4d_diff_heads_mask4d_padded_kv_expanded",
    ];
    let mut trials: Vec<Trial> = on_interpreter
        .iter()
        .map(|&id| {
            let case: Option<Case> = cases.iter().find(|c| c.id() == id).cloned();
            trial(format!("interpreter/{id}"), move || {
                let case = case.unwrap_or_else(|| panic!("{id} is not in the suite"));
                match onnx_suite::run(None, &case) {
                    Outcome::Pass { .. } => {}
                    other => panic!("{id} on the interpreter: {other:?}"),
                }
            })
        })
        .collect();
    trials.extend(expected.into_iter().map(|id| {
        let case: Option<Case> = cases.iter().find(|c| c.id() == id).cloned();
        trial(id.clone(), move || {
            let case = case.unwrap_or_else(|| panic!("{id} is in the manifest but not in the suite"));
            let Some(session) = shared_session(None) else { return };
            match onnx_suite::run(Some(session), &case) {
                Outcome::Pass { .. } => {}
                other => panic!("{id}: {other:?}"),
            }
        })
    }));
    run_trials(trials);
}
