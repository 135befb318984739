//! Defects of particular plugin builds' XLA that xlac steers around: for
//! each, the builds it was measured on and the compile option that avoids
//! it. [`Client::compile_mlir`](crate::Client::compile_mlir) sets them on
//! every compile for such a plugin that may meet the defect ([`for_program`]);
//! `xlac devices` lists them.

/// One XLA debug option xlac sets for a plugin build, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workaround {
    /// The debug option's name, as `XLA_FLAGS` spells it without `--`.
    pub option: &'static str,
    /// Its value.
    pub value: OptionValue,
    /// The defect it avoids, in a line.
    pub reason: &'static str,
    /// True when the defect needs a product reading an operand XLA computes
    /// as a broadcast: a program without one goes without the workaround
    /// (`CompileOptions::products_read_broadcasts`).
    pub only_if_products_read_broadcasts: bool,
}

/// A debug option's value, typed as XLA's option overrides take it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionValue {
    /// A string or enum option, in `XLA_FLAGS`'s spelling (a repeated
    /// option's values comma-separated).
    Text(&'static str),
    /// A boolean option.
    Bool(bool),
}

impl std::fmt::Display for OptionValue {
    /// As `XLA_FLAGS` spells it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OptionValue::Text(t) => f.write_str(t),
            OptionValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// The 0.115 build's XLA (`lammps-jax-pjrt-cpu` 0.11.2) fuses a reduce with
/// the dot or convolution that produces it into one YNNPACK fusion; when a
/// product's operand is a broadcast constant, the fusion's sums are wrong: a
/// 169×4 by 4×64 product summed over its rows added only the first of the
/// four terms, and ONNX's light SqueezeNet (a convolution by uniform weights
/// before its global pool) gave zeros or NaN as glibc's `MALLOC_PERTURB_`
/// filled fresh memory, so it reads memory nobody wrote. Its default fusion
/// types are the individual dot, the individual convolution and the reduce
/// (measured: the optimized HLO with exactly these three is the default's);
/// without the reduce type the products still run in YNNPACK, and
/// ResNet-50, DenseNet-121, Inception v1 and SqueezeNet ran as fast within
/// noise (AMD EPYC, AVX2, 2026-12-03). The 0.106 build
/// (`fastatomstruct-xla-cpu` 2026.6.23) gave the right sums unaided. The
/// calibration runs this shape for its check, so a build with the defect
/// and no workaround here is never chosen by default. What the defect needs
/// (2026-12-05, AMD Zen 5, that product summed over its rows with the reduce
/// fusion on, against the interpreter): a broadcast operand, of a constant
/// (off by 15) or of a runtime scalar (off by 4.6e17: unwritten memory);
/// a dense constant or a parameter operand summed right. What the workaround
/// costs: about 3–5% of MiniLM-L6's batch-8 forward and of its training step
/// (`docs/benchmarks.md`), so a program none of whose products may read a
/// broadcast goes without it (the StableHLO lowering tells, conservatively:
/// `Lowered::products_read_broadcasts`).
const YNN_REDUCE_FUSION: Workaround = Workaround {
    option: "xla_cpu_experimental_ynn_fusion_type",
    value: OptionValue::Text("LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"),
    reason: "its YNNPACK fusions of a reduce with a dot or convolution by a broadcast sum wrongly",
    only_if_products_read_broadcasts: true,
};

/// The 0.81 build's XLA (`xla-cpu-pjrt`) keeps what XNNPACK prepared from a
/// product's parameter from one execution to the next, by the buffer's
/// address: a parameter given new values in a buffer at an address seen
/// before (an upload into freed memory, or an update in place) is
/// multiplied as it was. Measured (AMD EPYC, AVX-512, 2026-12-04): a
/// 128×384 by 384×384 product by weights uploaded afresh each run gave an
/// earlier run's product from the second run on; the MiniLM-L6 classifier
/// trained with an evaluation after every step took a wrong second step
/// (loss 0.44660 at step 3 against PyTorch's 0.44534), and the trajectory
/// is right with XNNPACK off. Neither `xla_cpu_experimental_xnn_fusion_type`
/// nor `xla_cpu_experimental_xnn_graph_fusion_mode` avoids it; the 0.115
/// build is right. Off, the products run on Eigen: MiniLM-L6's forward on
/// 0.81 took 28.5 ms against 23 at batch 1 and the same within noise at
/// batch 8 (170–180 ms); the calibration times 0.81 so.
const XNNPACK_STALE_WEIGHTS: Workaround = Workaround {
    option: "xla_cpu_use_xnnpack",
    value: OptionValue::Bool(false),
    reason: "XNNPACK reuses what it prepared from a parameter at a reused address, new values unread",
    only_if_products_read_broadcasts: false,
};

/// The workarounds for a plugin reporting PJRT API `api_version`, less any
/// whose option the user sets in `xla_flags` (the `XLA_FLAGS` text): a
/// compile option would override the user's choice.
pub fn for_api_version(api_version: (i32, i32), xla_flags: &str) -> Vec<Workaround> {
    let known = KNOWN.iter().find(|(api, _)| *api == api_version).map_or(&[][..], |(_, w)| w);
    known.iter().filter(|w| !xla_flags.contains(w.option)).copied().collect()
}

/// The workarounds of each plugin build, by its PJRT API version.
const KNOWN: &[((i32, i32), &[Workaround])] = &[((0, 115), &[YNN_REDUCE_FUSION]), ((0, 81), &[XNNPACK_STALE_WEIGHTS])];

/// Every workaround this xlac knows, one `API option=value` each: what a
/// plugin's speed was measured under (a calibration timed under another set
/// is timed again).
pub fn known_signature() -> String {
    let each = KNOWN
        .iter()
        .flat_map(|((major, minor), ws)| ws.iter().map(move |w| format!("{major}.{minor} {}={}", w.option, w.value)));
    each.collect::<Vec<_>>().join("; ")
}

/// The workarounds for a plugin reporting PJRT API `api_version` in this
/// process (its `XLA_FLAGS` read now).
pub fn for_plugin_api(api_version: (i32, i32)) -> Vec<Workaround> {
    for_api_version(api_version, &std::env::var("XLA_FLAGS").unwrap_or_default())
}

/// Of `workarounds` (a plugin's), those a program needs: all but the ones
/// whose defect needs products reading broadcasts, when its products read
/// none (`products_read_broadcasts` false).
pub fn for_program(workarounds: Vec<Workaround>, products_read_broadcasts: bool) -> Vec<Workaround> {
    workarounds.into_iter().filter(|w| !w.only_if_products_read_broadcasts || products_read_broadcasts).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_measured_build_gets_its_workaround() {
        assert_eq!(for_api_version((0, 115), ""), [YNN_REDUCE_FUSION]);
        assert_eq!(for_api_version((0, 81), ""), [XNNPACK_STALE_WEIGHTS]);
        assert_eq!(for_api_version((0, 106), ""), []);
        assert_eq!(XNNPACK_STALE_WEIGHTS.value.to_string(), "false");
        let signature = known_signature();
        assert!(signature.contains("0.81 xla_cpu_use_xnnpack=false"), "{signature}");
        assert!(signature.contains("0.115 xla_cpu_experimental_ynn_fusion_type=LIBRARY_"), "{signature}");
    }

    #[test]
    fn a_program_without_broadcast_products_goes_without_their_workaround() {
        assert_eq!(for_program(for_api_version((0, 115), ""), true), [YNN_REDUCE_FUSION]);
        assert_eq!(for_program(for_api_version((0, 115), ""), false), []);
        assert_eq!(for_program(for_api_version((0, 81), ""), false), [XNNPACK_STALE_WEIGHTS]);
    }

    #[test]
    fn the_users_own_setting_wins() {
        let flags = "--xla_backend_optimization_level=0 --xla_cpu_experimental_ynn_fusion_type=reduce";
        assert_eq!(for_api_version((0, 115), flags), []);
        assert_eq!(for_api_version((0, 115), "--xla_backend_optimization_level=0"), [YNN_REDUCE_FUSION]);
        assert_eq!(for_api_version((0, 81), "--xla_cpu_use_xnnpack=true"), []);
    }
}
