//! The IR's text form: stable (same module, same text), readable and diffable.
//! It is what `xlac compile --emit ir` prints and what the snapshots record.

use crate::ir::{Module, ParamSource};
use std::fmt::Write;

/// Prints `m` as text for people: values print as `%name`; each node line
/// shows its op, operands, attributes and result type; long constants and
/// inline parameters show their first 8 values.
pub fn print(m: &Module) -> String {
    print_with(m, 8)
}

/// Prints `m` in full, every value included: the form [`crate::frontend::text::parse`]
/// reads back into the same module.
pub fn print_full(m: &Module) -> String {
    print_with(m, usize::MAX)
}

fn print_with(m: &Module, shown: usize) -> String {
    let mut s = String::new();
    let name = |v| &m.value(v).name;
    // A value's type, then its sharding when it has one: `f32[8,16] sharding [data,_]`.
    let ty = |v| {
        let data = m.value(v);
        match &data.sharding {
            Some(sh) => format!("{} sharding {sh}", data.ty),
            None => data.ty.to_string(),
        }
    };
    let _ = writeln!(s, "module @{} {{", m.name);
    if let Some(mesh) = &m.mesh {
        let _ = writeln!(s, "  mesh {mesh}");
    }
    for &v in m.inputs() {
        let _ = writeln!(s, "  input %{}: {}", name(v), ty(v));
    }
    for p in m.params() {
        let source = match &p.source {
            ParamSource::File { path, tensor, view } => {
                let perm = view.perm.as_ref().map(|p| format!(" transposed {}", format!("{p:?}").replace(' ', "")));
                let convert = view.convert.map(|d| format!(" as {d}"));
                let (perm, convert) = (perm.unwrap_or_default(), convert.unwrap_or_default());
                format!("file {:?} tensor {:?}{perm}{convert}", path.display().to_string(), tensor)
            }
            ParamSource::Inline(data) => format!("inline {}", data.display(shown)),
        };
        let _ = writeln!(s, "  param %{}: {} = {source}", name(p.value), ty(p.value));
    }
    for &n in m.order() {
        let node = m.node(n);
        let operands: Vec<String> = node.inputs.iter().map(|&v| format!("%{}", name(v))).collect();
        let attrs = node.op.attributes_text(shown);
        let attrs = if attrs.is_empty() { String::new() } else { format!(" {{{attrs}}}") };
        let label = if node.name == *name(node.output) { String::new() } else { format!("  ; node {:?}", node.name) };
        let _ = writeln!(
            s,
            "  %{} = {}({}){attrs}: {}{label}",
            name(node.output),
            node.op.name(),
            operands.join(", "),
            ty(node.output)
        );
    }
    let outs: Vec<String> = m
        .outputs()
        .iter()
        .zip(m.output_names())
        .map(|(&v, out)| if *name(v) == *out { format!("%{out}") } else { format!("{out}=%{}", name(v)) })
        .collect();
    let _ = writeln!(s, "  output {}", outs.join(", "));
    for &(arg, out) in m.donations() {
        let _ = writeln!(s, "  ; donate %{} to output {out}", name(arg));
    }
    s.push_str("}\n");
    s
}
