//! Common subexpression elimination: nodes with the same op, attributes and
//! operands compute the same value (every v1 op is pure), so later ones
//! become aliases of the first. DCE then removes them.

use crate::ir::{Module, Value};
use std::collections::HashMap;

/// Aliases each repeated computation to its first occurrence; returns how many were found.
pub fn run(m: &mut Module) -> usize {
    let mut seen: HashMap<(String, Vec<Value>), Value> = HashMap::new();
    let mut rewrites = 0;
    for n in m.order().to_vec() {
        let node = m.node(n);
        let inputs: Vec<Value> = node.inputs.iter().map(|&v| m.resolve(v)).collect();
        // The op's Debug form holds its kind and every attribute, exactly.
        let key = (format!("{:?}", node.op), inputs);
        let output = node.output;
        match seen.get(&key) {
            Some(&first) => {
                m.set_alias(output, first);
                rewrites += 1;
            }
            None => {
                seen.insert(key, output);
            }
        }
    }
    rewrites
}
