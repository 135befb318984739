//! The verifier: checks a module's invariants and collects every violation.
//! It re-derives each node's type with the same inference the reader uses, so a
//! rewrite that breaks typing, order or naming is caught where it happens.

use crate::error::{Diagnostic, Error};
use crate::ir::infer::infer;
use crate::ir::{Module, ValueDef};
use std::collections::HashSet;

/// Checks that every operand is defined before use, every node's recorded
/// type is what inference gives, names are unique, outputs exist, and every
/// sharding fits its value and the module's mesh.
/// `origin` names the module in the error (a file, or "after pass X").
pub fn verify(m: &Module, origin: &str) -> Result<(), Error> {
    let mut d = Vec::new();
    let mut defined = vec![false; m.num_values()];
    let mut names = HashSet::new();
    for (i, &v) in m.inputs().iter().enumerate() {
        defined[v.index()] = m.value(v).def == ValueDef::Input(i);
    }
    for (i, p) in m.params().iter().enumerate() {
        defined[p.value.index()] = m.value(p.value).def == ValueDef::Param(i);
    }
    // Names must be unique among the live values: inputs, parameters, node results.
    let live = m
        .inputs()
        .iter()
        .copied()
        .chain(m.params().iter().map(|p| p.value))
        .chain(m.order().iter().map(|&n| m.node(n).output));
    for v in live {
        let data = m.value(v);
        if !names.insert(data.name.as_str()) {
            d.push(Diagnostic::new(format!("value `{}`", data.name), "duplicate value name"));
        }
        if data.alias.is_some() {
            d.push(Diagnostic::new(format!("value `{}`", data.name), "has an alias that was not applied"));
        }
        if let Some(s) = &data.sharding {
            let problem = match &m.mesh {
                None => Err("is sharded but the module has no mesh".to_string()),
                Some(mesh) => s.check(&data.ty.shape, &data.ty, mesh),
            };
            if let Err(e) = problem {
                d.push(Diagnostic::new(format!("value `{}`", data.name), e));
            }
        }
    }
    let mut node_names = HashSet::new();
    for &n in m.order() {
        let node = m.node(n);
        let at = format!("node `{}` ({})", node.name, node.op.name());
        if !node_names.insert(node.name.as_str()) {
            d.push(Diagnostic::new(&at, "duplicate node name"));
        }
        if let Some(&u) = node.inputs.iter().find(|&&u| !defined[u.index()]) {
            d.push(Diagnostic::new(&at, format!("operand `{}` is used before it is defined", m.value(u).name)));
            continue;
        }
        let (lo, hi) = node.op.arity();
        if node.inputs.len() < lo || hi.is_some_and(|h| node.inputs.len() > h) {
            d.push(Diagnostic::new(&at, format!("wrong number of operands: {}", node.inputs.len())));
            continue;
        }
        let types: Vec<_> = node.inputs.iter().map(|&u| &m.value(u).ty).collect();
        match infer(&node.op, &types) {
            Ok(ty) if ty == m.value(node.output).ty => {}
            Ok(ty) => d.push(Diagnostic::new(
                &at,
                format!("result is recorded as {} but infers as {ty}", m.value(node.output).ty),
            )),
            Err(e) => d.push(Diagnostic::new(&at, e)),
        }
        if m.value(node.output).def != ValueDef::Node(n) {
            d.push(Diagnostic::new(&at, "result value does not point back to this node"));
        }
        defined[node.output.index()] = true;
    }
    if m.outputs().is_empty() {
        d.push(Diagnostic::new("outputs", "a module needs at least one output"));
    }
    for &o in m.outputs() {
        if !defined[o.index()] {
            d.push(Diagnostic::new("outputs", format!("output `{}` is not defined", m.value(o).name)));
        }
    }
    let (mut args_given, mut outputs_taken) = (Vec::new(), Vec::new());
    for &(arg, k) in m.donations() {
        let at = format!("donation of `{}`", m.value(arg).name);
        let is_arg = matches!(m.value(arg).def, ValueDef::Input(_) | ValueDef::Param(_));
        match m.outputs().get(k) {
            _ if !is_arg => d.push(Diagnostic::new(&at, "only an input or a parameter can be donated")),
            None => d.push(Diagnostic::new(&at, format!("output {k} does not exist"))),
            Some(&o) if m.value(o).ty != m.value(arg).ty => d.push(Diagnostic::new(
                &at,
                format!(
                    "output {k} is {}, the argument {}: a donated buffer keeps its type",
                    m.value(o).ty,
                    m.value(arg).ty
                ),
            )),
            Some(_) if args_given.contains(&arg) || outputs_taken.contains(&k) => {
                d.push(Diagnostic::new(&at, "an argument and an output are donated once each"))
            }
            Some(_) => {
                args_given.push(arg);
                outputs_taken.push(k);
            }
        }
    }
    if d.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid { origin: origin.to_string(), diagnostics: d })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::dtype::DType;
    use crate::ir::op::{BinaryOp, Op, UnaryOp};
    use crate::ir::types::TensorType;

    #[test]
    fn a_wrong_recorded_type_is_caught() {
        let mut m = Module::new("m");
        let f = |s: &[u64]| TensorType::new(DType::F32, s.to_vec());
        let x = m.add_input("x", f(&[2, 3]));
        let y = m.append_node("y", Op::Unary(UnaryOp::Exp), vec![x], "y", f(&[2, 3]));
        // A rewrite that records the wrong result type.
        let z = m.append_node("z", Op::Binary(BinaryOp::Add), vec![x, y], "z", f(&[3, 2]));
        m.add_output(z);
        let e = verify(&m, "after pass demo").unwrap_err().to_string();
        assert!(
            e.contains("after pass demo: node `z` (add): result is recorded as f32[3,2] but infers as f32[2,3]"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_names_and_missing_outputs_are_caught() {
        let mut m = Module::new("m");
        let x = m.add_input("x", TensorType::new(DType::F32, vec![2]));
        m.append_node("x", Op::Unary(UnaryOp::Exp), vec![x], "x", TensorType::new(DType::F32, vec![2]));
        let e = verify(&m, "m").unwrap_err().to_string();
        assert!(e.contains("duplicate value name") && e.contains("needs at least one output"), "{e}");
    }
}
