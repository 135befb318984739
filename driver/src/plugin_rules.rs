//! Lowering choices that depend on the plugin build a program runs on:
//! each was measured on the builds it names, and a program compiled for a
//! session follows its plugin's rule ([`crate::CompiledModel::lower_for`],
//! a pipeline's stages too; generation sets them before compiling, `generate`).

use crate::Session;
use xlac_compiler::backend::stablehlo::WholeWidening;

/// How products of many rows (a prefill's, or any batch's) read a matrix
/// they widen whole (an int8 one): gathered first on the CPU builds whose
/// GEMM reads the matrix so written (`[in, out]`) faster, else as XLA fuses
/// it (see `WholeWidening`). Products of one row or a few rows apart are not
/// affected.
pub fn whole_widening(session: &Session) -> WholeWidening {
    const GATHERED_FASTER: [(i32, i32); 1] = [(0, 81)];
    if cpu_build_among(session, &GATHERED_FASTER) {
        WholeWidening::Gathered
    } else {
        WholeWidening::AsRead
    }
}

/// Whether the session runs on a CPU plugin reporting one of these PJRT API versions.
pub(crate) fn cpu_build_among(session: &Session, api_versions: &[(i32, i32)]) -> bool {
    session.client.platform_name() == "cpu" && api_versions.contains(&session.plugin.api_version())
}
