//! The dependency rules of ARCHITECTURE.md, checked on the source: which
//! layer's files may name which others (`crate::LAYER` paths and crate
//! names). Doc comments are skipped: they may link anywhere.

use std::path::Path;
use xlac_tests::repo_root;

/// The code lines (not comments) of every `.rs` file under `dir` (or of the file `dir`).
fn code(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
        } else if p.extension().is_some_and(|x| x == "rs") {
            let text = std::fs::read_to_string(&p).unwrap();
            for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
                out.push((p.display().to_string(), line.to_string()));
            }
        }
    }
    out
}

/// No code line under `dir` (relative to the repository) names any of `forbidden`.
fn must_not_name(dir: &str, forbidden: &[&str]) {
    let lines = code(&repo_root().join(dir));
    assert!(!lines.is_empty(), "{dir} has no source");
    let offending: Vec<String> = lines
        .iter()
        .filter(|(_, l)| forbidden.iter().any(|f| l.contains(f)))
        .map(|(file, l)| format!("{file}: {}", l.trim()))
        .collect();
    assert!(offending.is_empty(), "{dir} must not use {forbidden:?}:\n{}", offending.join("\n"));
}

#[test]
fn the_ir_depends_on_no_other_layer() {
    must_not_name("compiler/src/ir", &["crate::frontend", "crate::passes", "crate::backend", "crate::pipeline"]);
}

#[test]
fn frontends_and_backends_know_only_the_ir() {
    must_not_name("compiler/src/frontend", &["crate::passes", "crate::backend", "crate::pipeline"]);
    must_not_name("compiler/src/backend", &["crate::frontend", "crate::passes", "crate::pipeline"]);
}

#[test]
fn autodiff_and_training_know_only_the_ir() {
    must_not_name("compiler/src/autodiff", &["crate::frontend", "crate::passes", "crate::backend", "crate::pipeline"]);
    must_not_name("compiler/src/train", &["crate::frontend", "crate::backend", "crate::pipeline"]);
    // Of the passes, training builds only on the sharding policies (a step split over a mesh).
    let passes: Vec<String> = code(&repo_root().join("compiler/src/train"))
        .into_iter()
        .filter(|(_, l)| l.contains("crate::passes") && !l.contains("crate::passes::sharding::"))
        .map(|(file, l)| format!("{file}: {}", l.trim()))
        .collect();
    assert!(passes.is_empty(), "compiler/src/train uses passes besides passes::sharding:\n{}", passes.join("\n"));
}

#[test]
fn the_memory_plan_reads_only_the_ir() {
    must_not_name("compiler/src/plan", &["crate::frontend", "crate::passes", "crate::backend", "crate::pipeline"]);
}

#[test]
fn passes_do_not_read_models_or_run_the_pipeline() {
    must_not_name("compiler/src/passes", &["crate::frontend", "crate::pipeline", "crate::backend::stablehlo"]);
}

#[test]
fn the_pjrt_layer_is_the_ffi_only() {
    must_not_name(
        "runtime/src/pjrt",
        &[
            "crate::executable",
            "crate::program",
            "crate::sharding",
            "crate::cache",
            "crate::artifact",
            "crate::Executable",
        ],
    );
}

#[test]
fn the_workarounds_are_a_leaf() {
    must_not_name("runtime/src/workarounds.rs", &["crate::"]);
}

#[test]
fn the_runtime_and_the_compiler_do_not_know_each_other() {
    must_not_name("runtime/src", &["xlac_compiler", "xlac_driver"]);
    must_not_name("compiler/src", &["xlac_runtime", "xlac_driver"]);
    must_not_name("core/src", &["xlac_compiler", "xlac_runtime", "xlac_driver"]);
}

#[test]
fn the_binary_holds_no_compiler_pipeline_of_its_own() {
    // The stage order lives in compiler/src/pipeline.rs; the CLI and the driver only call it.
    for dir in ["cli/src", "driver/src"] {
        must_not_name(dir, &["sharding_pipeline", "precision_pass(", "preset(", ".build(&bindings)", "lower(&"]);
    }
}
