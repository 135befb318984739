//! Dead code elimination: drops the nodes that no module output depends on.

use crate::ir::Module;

/// Removes dead nodes; returns how many were removed.
pub fn run(m: &mut Module) -> usize {
    let mut live = vec![false; m.num_values()];
    for &o in m.outputs() {
        live[m.resolve(o).index()] = true;
    }
    for &n in m.order().iter().rev() {
        let node = m.node(n);
        if live[node.output.index()] {
            for &i in &node.inputs {
                live[m.resolve(i).index()] = true;
            }
        }
    }
    let before = m.order().len();
    let output_of: Vec<usize> = m.order().iter().map(|&n| m.node(n).output.index()).collect();
    let mut position = 0;
    m.retain_nodes(|_| {
        position += 1;
        live[output_of[position - 1]]
    });
    before - m.order().len()
}
