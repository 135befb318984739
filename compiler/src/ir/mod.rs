//! The IR layer: element types, tensor types, the op set, type inference,
//! the verifier, the printer, sharding annotations, and the module itself
//! (values and nodes in arenas, addressed by `u32` ids, with the execution
//! order kept apart from the node data, as in Cranelift, so that rewrites can
//! create nodes first and place them later).
//!
//! Depends on nothing else in the crate but [`crate::error`].

pub mod builder;
pub use xlac_core::dtype;
pub mod infer;
pub mod op;
pub mod print;
pub use xlac_core::sharding;
pub mod types;
pub mod verify;

/// The model input (an `i64` scalar) a training step feeds a new random seed
/// every step; dropout's `random_uniform` nodes read it.
pub const STEP_SEED_INPUT: &str = "dropout_seed";

use crate::ir::op::{ConstData, Op};
use crate::ir::sharding::{Mesh, Sharding};
use crate::ir::types::TensorType;
use std::path::PathBuf;
use xlac_core::view::WeightView;

/// A value: a module input, a parameter, or the result of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Value(pub(crate) u32);

/// A node: one op applied to values, producing one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Node(pub(crate) u32);

impl Value {
    /// The arena index of this value.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl Node {
    /// The arena index of this node.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Where a value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueDef {
    /// The i-th module input.
    Input(usize),
    /// The i-th parameter.
    Param(usize),
    /// The result of a node.
    Node(Node),
}

/// A value's name (unique among live values), type and definition.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueData {
    pub name: String,
    pub ty: TensorType,
    pub def: ValueDef,
    /// Set when a rewrite replaced this value by another of the same type:
    /// every use means the alias. See [`Module::resolve`].
    pub alias: Option<Value>,
    /// How the value is split over the module's mesh, when annotated.
    pub sharding: Option<Sharding>,
}

/// A node's name (for messages; unique among nodes), op and operands.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeData {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<Value>,
    pub output: Value,
}

/// Where a parameter's data lives.
#[derive(Clone, Debug, PartialEq)]
pub enum ParamSource {
    /// A tensor in a safetensors file (absolute, or relative to the working
    /// directory), read through `view` (its dimensions permuted, its floats
    /// rounded to another type). The runtime applies a view tensor by tensor
    /// while uploading.
    File { path: PathBuf, tensor: String, view: WeightView },
    /// Values written in model.json, row-major, one per element.
    Inline(ConstData),
}

/// A named parameter (weights): a runtime argument of the compiled program.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub value: Value,
    pub source: ParamSource,
}

/// A whole model: its inputs, parameters, nodes in execution order and outputs.
/// A module that [`crate::ir::verify::verify`] accepts is well typed, acyclic and in topological order.
#[derive(Clone, Debug, PartialEq)]
pub struct Module {
    pub name: String,
    /// The device mesh the shardings refer to; `None` for a single-device program.
    pub mesh: Option<Mesh>,
    values: Vec<ValueData>,
    nodes: Vec<NodeData>,
    order: Vec<Node>,
    inputs: Vec<Value>,
    params: Vec<Param>,
    outputs: Vec<Value>,
    output_names: Vec<String>,
    /// Arguments (inputs or parameters) whose buffer an output reuses: the
    /// caller hands the argument over and gets the output in its place (an
    /// in-place update, such as a training step's parameters).
    donations: Vec<(Value, usize)>,
    /// Every value name ever given (names never change), for [`Module::fresh_name`].
    names: std::collections::HashSet<String>,
}

impl Module {
    /// An empty module.
    pub fn new(name: impl Into<String>) -> Self {
        Module {
            name: name.into(),
            mesh: None,
            values: Vec::new(),
            nodes: Vec::new(),
            order: Vec::new(),
            inputs: Vec::new(),
            params: Vec::new(),
            outputs: Vec::new(),
            output_names: Vec::new(),
            names: std::collections::HashSet::new(),
            donations: Vec::new(),
        }
    }

    /// Adds a module input.
    pub fn add_input(&mut self, name: impl Into<String>, ty: TensorType) -> Value {
        let v = self.push_value(name.into(), ty, ValueDef::Input(self.inputs.len()));
        self.inputs.push(v);
        v
    }

    /// Adds a parameter.
    pub fn add_param(&mut self, name: impl Into<String>, ty: TensorType, source: ParamSource) -> Value {
        let v = self.push_value(name.into(), ty, ValueDef::Param(self.params.len()));
        self.params.push(Param { value: v, source });
        v
    }

    /// Makes parameter `v` read its data from `source` (of the same type).
    pub fn set_param_source(&mut self, v: Value, source: ParamSource) {
        if let ValueDef::Param(i) = self.values[v.index()].def {
            self.params[i].source = source;
        }
    }

    /// Adds a node at the end of the execution order; its result has type `ty`.
    pub fn append_node(
        &mut self,
        name: impl Into<String>,
        op: Op,
        inputs: Vec<Value>,
        output_name: impl Into<String>,
        ty: TensorType,
    ) -> Value {
        let node = Node(self.nodes.len() as u32);
        let output = self.push_value(output_name.into(), ty, ValueDef::Node(node));
        self.nodes.push(NodeData { name: name.into(), op, inputs, output });
        self.order.push(node);
        output
    }

    /// Adds a node just before `at` in the execution order; its result has type `ty`.
    pub fn insert_before(&mut self, at: Node, name: &str, op: Op, inputs: Vec<Value>, ty: TensorType) -> Value {
        let node = Node(self.nodes.len() as u32);
        let output = self.push_value(name.to_string(), ty, ValueDef::Node(node));
        self.nodes.push(NodeData { name: name.into(), op, inputs, output });
        let pos = self.order.iter().position(|&n| n == at).unwrap_or(self.order.len());
        self.order.insert(pos, node);
        output
    }

    /// A value name not used by any value of the module: `base`, else `base.N`.
    pub fn fresh_name(&self, base: &str) -> String {
        std::iter::once(base.to_string())
            .chain((1..).map(|i| format!("{base}.{i}")))
            .find(|n| !self.names.contains(n))
            .expect("an unused name exists")
    }

    /// Removes the nodes no output depends on; returns how many were removed.
    pub fn remove_dead_nodes(&mut self) -> usize {
        let mut live = vec![false; self.num_values()];
        for &o in self.outputs() {
            live[self.resolve(o).index()] = true;
        }
        for &n in self.order().iter().rev() {
            let node = self.node(n);
            if live[node.output.index()] {
                for &i in &node.inputs {
                    live[self.resolve(i).index()] = true;
                }
            }
        }
        let before = self.order.len();
        let nodes = &self.nodes;
        self.order.retain(|n| live[nodes[n.index()].output.index()]);
        before - self.order.len()
    }

    /// Removes the parameters no live node uses (after folding replaced them).
    /// Returns how many were removed.
    pub fn remove_unused_params(&mut self) -> usize {
        let mut used = vec![false; self.values.len()];
        for &n in &self.order {
            for &i in &self.nodes[n.index()].inputs {
                used[self.resolve(i).index()] = true;
            }
        }
        for &o in &self.outputs {
            used[self.resolve(o).index()] = true;
        }
        let before = self.params.len();
        self.params.retain(|p| used[p.value.index()]);
        for (i, p) in self.params.iter().enumerate() {
            self.values[p.value.index()].def = ValueDef::Param(i);
        }
        before - self.params.len()
    }

    /// Appends `callee`'s nodes, in its order, with its inputs bound to
    /// `args` and its parameters to `params` (values of this module, of the
    /// same types, in the callee's order); each node and value is named
    /// `prefix` + its callee name (made fresh). Returns the values of the
    /// callee's outputs.
    pub fn inline(&mut self, callee: &Module, args: &[Value], params: &[Value], prefix: &str) -> Vec<Value> {
        debug_assert_eq!(args.len(), callee.inputs.len(), "one argument per callee input");
        debug_assert_eq!(params.len(), callee.params.len(), "one value per callee parameter");
        let mut map: Vec<Option<Value>> = vec![None; callee.values.len()];
        for (&i, &a) in callee.inputs.iter().zip(args) {
            map[i.index()] = Some(a);
        }
        for (p, &v) in callee.params.iter().zip(params) {
            map[p.value.index()] = Some(v);
        }
        let get =
            |map: &[Option<Value>], v: Value| map[callee.resolve(v).index()].expect("callee in topological order");
        for &n in &callee.order {
            let node = &callee.nodes[n.index()];
            let inputs: Vec<Value> = node.inputs.iter().map(|&i| get(&map, i)).collect();
            let out = &callee.values[node.output.index()];
            let name = self.fresh_name(&format!("{prefix}{}", out.name));
            let v = self.append_node(name.clone(), node.op.clone(), inputs, name, out.ty.clone());
            self.values[v.index()].sharding = out.sharding.clone();
            map[node.output.index()] = Some(v);
        }
        callee.outputs.iter().map(|&o| get(&map, o)).collect()
    }

    /// Removes every output (a program built from the module chooses its own).
    pub fn clear_outputs(&mut self) {
        self.outputs.clear();
        self.output_names.clear();
        self.donations.clear();
    }

    /// Makes parameter `v` a module input, after the existing ones: a value
    /// the caller supplies on every call instead of a weight loaded once.
    /// Returns its source, for the caller to load the first value from.
    pub fn promote_param_to_input(&mut self, v: Value) -> Option<ParamSource> {
        let i = self.params.iter().position(|p| p.value == v)?;
        let param = self.params.remove(i);
        for (j, p) in self.params.iter().enumerate() {
            self.values[p.value.index()].def = ValueDef::Param(j);
        }
        self.values[v.index()].def = ValueDef::Input(self.inputs.len());
        self.inputs.push(v);
        Some(param.source)
    }

    /// Declares that output `output` reuses argument `arg`'s buffer (same type).
    pub fn donate(&mut self, arg: Value, output: usize) {
        self.donations.push((arg, output));
    }

    /// The donations: (argument, index of the output that reuses its buffer).
    pub fn donations(&self) -> &[(Value, usize)] {
        &self.donations
    }

    /// Marks a value as a module output (in order), named by the value's name.
    pub fn add_output(&mut self, value: Value) {
        self.output_names.push(self.values[value.index()].name.clone());
        self.outputs.push(value);
    }

    /// Makes output `i` another value, keeping its name in the signature.
    pub fn set_output(&mut self, i: usize, v: Value) {
        self.outputs[i] = v;
    }

    /// Annotates (or, with `None`, un-annotates) how value `v` is split over the mesh.
    pub fn set_sharding(&mut self, v: Value, sharding: Option<Sharding>) {
        self.values[v.index()].sharding = sharding;
    }

    /// Changes the type of a value (a retyping pass re-infers every node after it).
    pub fn set_type(&mut self, v: Value, ty: TensorType) {
        self.values[v.index()].ty = ty;
    }

    /// Renames output `i` in the signature.
    pub fn set_output_name(&mut self, i: usize, name: impl Into<String>) {
        self.output_names[i] = name.into();
    }

    /// The names of the outputs in the signature. They stay fixed when a
    /// rewrite makes an output another value.
    pub fn output_names(&self) -> &[String] {
        &self.output_names
    }

    fn push_value(&mut self, name: String, ty: TensorType, def: ValueDef) -> Value {
        let v = Value(self.values.len() as u32);
        self.names.insert(name.clone());
        self.values.push(ValueData { name, ty, def, alias: None, sharding: None });
        v
    }

    /// The value `v` stands for, following aliases.
    pub fn resolve(&self, mut v: Value) -> Value {
        while let Some(a) = self.values[v.index()].alias {
            v = a;
        }
        v
    }

    /// Makes every use of `old` a use of `new` ("replace all uses", in O(1)).
    /// The types must be equal; the rewrite is applied by [`Module::apply_aliases`].
    /// `new` takes over `old`'s sharding annotation when it has none itself.
    pub fn set_alias(&mut self, old: Value, new: Value) {
        let new = self.resolve(new);
        debug_assert_eq!(self.values[old.index()].ty, self.values[new.index()].ty, "an alias keeps the type");
        if old != new {
            self.values[old.index()].alias = Some(new);
            if self.values[new.index()].sharding.is_none() {
                self.values[new.index()].sharding = self.values[old.index()].sharding.clone();
            }
        }
    }

    /// Rewrites every operand and output through the aliases, then clears
    /// them. An output that becomes another value keeps its own name in the
    /// signature through [`Module::output_names`].
    pub fn apply_aliases(&mut self) {
        if self.values.iter().all(|v| v.alias.is_none()) {
            return;
        }
        for n in 0..self.nodes.len() {
            for i in 0..self.nodes[n].inputs.len() {
                self.nodes[n].inputs[i] = self.resolve(self.nodes[n].inputs[i]);
            }
        }
        for i in 0..self.outputs.len() {
            self.outputs[i] = self.resolve(self.outputs[i]);
        }
        for v in &mut self.values {
            v.alias = None;
        }
    }

    /// Puts the nodes appended since the execution order held `mark` nodes
    /// in the place of node `at`, which leaves the order, and makes every use
    /// of `at`'s result a use of `result` (an alias, of the same type): a node
    /// rewritten in place with a [`builder::Builder`]. The new nodes read only
    /// values defined before `at` and each other.
    pub fn replace_with_appended(&mut self, at: Node, mark: usize, result: Value) {
        let built = self.order.split_off(mark);
        let pos = self.order.iter().position(|&n| n == at).expect("a node in the execution order");
        let old = self.nodes[at.index()].output;
        self.order.splice(pos..=pos, built);
        self.set_alias(old, result);
    }

    /// Mutable access to a node, for rewrites that keep its result type.
    pub fn node_mut(&mut self, n: Node) -> &mut NodeData {
        &mut self.nodes[n.index()]
    }

    /// Keeps only the nodes for which `keep` is true in the execution order
    /// (the arena keeps their data; they are simply no longer part of the module).
    pub fn retain_nodes(&mut self, mut keep: impl FnMut(Node) -> bool) {
        self.order.retain(|&n| keep(n));
    }

    /// The data of a value.
    pub fn value(&self, v: Value) -> &ValueData {
        &self.values[v.index()]
    }

    /// The data of a node.
    pub fn node(&self, n: Node) -> &NodeData {
        &self.nodes[n.index()]
    }

    /// Nodes in execution order.
    pub fn order(&self) -> &[Node] {
        &self.order
    }

    /// The module inputs, in signature order.
    pub fn inputs(&self) -> &[Value] {
        &self.inputs
    }

    /// The parameters, in signature order (after the inputs).
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// The module outputs, in order.
    pub fn outputs(&self) -> &[Value] {
        &self.outputs
    }

    /// How many values exist (ids are `0..num_values`).
    pub fn num_values(&self) -> usize {
        self.values.len()
    }
}
