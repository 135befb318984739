//! Dead code elimination: drops the nodes that no module output depends on.

use crate::ir::Module;

/// Removes dead nodes; returns how many were removed.
pub fn run(m: &mut Module) -> usize {
    m.remove_dead_nodes()
}
