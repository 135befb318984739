//! LoRA, as PEFT's `LoraConfig`: each targeted linear layer `y = x·Wᵀ`
//! becomes `y = x·Wᵀ + (alpha/r)·dropout(x)·Aᵀ·Bᵀ` with `A` of `[r, in]` and
//! `B` of `[out, r]` the only new weights; training then updates the
//! adapters (and the `modules_to_save`, trained in full) and leaves every
//! other weight as it was.
//!
//! Module names follow the checkpoint's: a layer is the prefix of its
//! weight's name (`bert.encoder.layer.0.attention.self.query` for
//! `...query.weight`), and a target matches a module whose name is the
//! target or ends with `.` + the target, as PEFT's list of `target_modules`.
//! The adapters are named `MODULE.lora_A.weight` and `MODULE.lora_B.weight`,
//! PEFT's saved names less its `base_model.model.` prefix.

use super::matches_pattern;
use crate::error::{Diagnostic, Error};
use crate::ir::builder::Builder;
use crate::ir::dtype::DType;
use crate::ir::op::{CompareDir, ConstData, DotDims, Op};
use crate::ir::types::TensorType;
use crate::ir::{Module, Node, ParamSource, Value, STEP_SEED_INPUT};
use std::path::{Path, PathBuf};

/// The prefix PEFT gives every tensor of a saved adapter.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// A LoRA configuration: PEFT's `LoraConfig` fields xlac follows.
#[derive(Clone, Debug, PartialEq)]
pub struct Lora {
    /// The adapters' rank.
    pub r: u64,
    /// `lora_alpha`: the adapters' product is scaled by `alpha / r`.
    pub alpha: f64,
    /// `target_modules`: the linear layers that get adapters.
    pub targets: Vec<String>,
    /// `lora_dropout`: the probability an input element of an adapter is dropped in training.
    pub dropout: f64,
    /// `modules_to_save`: modules trained in full beside the adapters (a new classification head).
    pub modules_to_save: Vec<String>,
    /// Where the adapters start.
    pub init: LoraInit,
}

/// The adapters' starting values.
#[derive(Clone, Debug, PartialEq)]
pub enum LoraInit {
    /// PEFT's default: `A` Kaiming-uniform (`kaiming_uniform_(a=√5)`: uniform
    /// in ±1/√in), drawn from this seed; `B` zero, so the adapted model
    /// starts as the base model.
    Seeded(u64),
    /// A saved PEFT adapter's tensors (`adapter_model.safetensors`); its
    /// `modules_to_save` tensors replace the base model's.
    Adapter(PathBuf),
}

/// One adapted layer.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraSite {
    /// The base weight's parameter name, where its value comes from and its type.
    pub weight: String,
    pub source: ParamSource,
    pub ty: TensorType,
    pub a: String,
    pub b: String,
    /// `alpha / r`.
    pub scale: f64,
    /// The base weight is stored `[in, out]` (GPT-2's `Conv1D`, PEFT's
    /// `fan_in_fan_out`) rather than `[out, in]` (`nn.Linear`).
    pub in_out: bool,
}

impl std::str::FromStr for Lora {
    type Err = String;

    /// `r=8,alpha=16,targets=query,value[,dropout=0.1][,modules_to_save=classifier]`:
    /// a name without `=` continues the list before it; `init` is seeded by 0.
    fn from_str(spec: &str) -> Result<Lora, String> {
        let mut fields: Vec<(String, Vec<String>)> = Vec::new();
        for part in spec.split(',').map(str::trim) {
            match (part.split_once('='), fields.last_mut()) {
                (Some((k, v)), _) => fields.push((k.trim().into(), vec![v.trim().into()])),
                (None, Some((_, list))) if !part.is_empty() => list.push(part.into()),
                _ => return Err(format!("`{part}`: expected KEY=VALUE (r, alpha, targets, dropout, modules_to_save)")),
            }
        }
        let one = |k: &str| -> Result<Option<f64>, String> {
            match fields.iter().find(|(f, _)| f == k) {
                None => Ok(None),
                Some((_, v)) if v.len() == 1 => {
                    v[0].parse().map(Some).map_err(|_| format!("`{k}`: expected a number, found `{}`", v[0]))
                }
                Some((_, v)) => Err(format!("`{k}`: one value, found {}", v.join(","))),
            }
        };
        if let Some((k, _)) =
            fields.iter().find(|(k, _)| !["r", "alpha", "targets", "dropout", "modules_to_save"].contains(&k.as_str()))
        {
            return Err(format!("unknown key `{k}` (r, alpha, targets, dropout, modules_to_save)"));
        }
        let list = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone()).unwrap_or_default();
        let r = one("r")?.ok_or("`r=RANK` is required")?;
        if r < 1.0 || r.fract() != 0.0 {
            return Err(format!("`r`: a whole number of at least 1, found {r}"));
        }
        let lora = Lora {
            r: r as u64,
            alpha: one("alpha")?.unwrap_or(8.0),
            targets: list("targets"),
            dropout: one("dropout")?.unwrap_or(0.0),
            modules_to_save: list("modules_to_save"),
            init: LoraInit::Seeded(0),
        };
        lora.check().map(|()| lora)
    }
}

impl Lora {
    fn check(&self) -> Result<(), String> {
        if self.targets.is_empty() {
            return Err("`targets=NAME[,NAME...]`: at least one module to adapt".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("`dropout`: a probability in [0, 1), found {}", self.dropout));
        }
        Ok(())
    }

    /// The configuration of the PEFT adapter saved in `dir`
    /// (`adapter_config.json`), starting from its tensors
    /// (`adapter_model.safetensors`). Options xlac does not follow (DoRA,
    /// rsLoRA, per-module ranks, trained biases, a regular expression of
    /// targets) are refused by name.
    pub fn from_adapter(dir: &Path) -> Result<Lora, Error> {
        let path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Read { path: path.clone(), source })?;
        let bad = |at: &str, message: String| Error::Invalid {
            origin: path.display().to_string(),
            diagnostics: vec![Diagnostic::new(at, message)],
        };
        let c: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad("$", format!("not JSON: {e}")))?;
        if c["peft_type"] != "LORA" {
            return Err(bad("$.peft_type", format!("expected \"LORA\", found {}", c["peft_type"])));
        }
        for (key, off) in [
            ("use_dora", serde_json::json!(false)),
            ("use_rslora", serde_json::json!(false)),
            ("bias", serde_json::json!("none")),
        ] {
            if !c[key].is_null() && c[key] != off {
                return Err(bad(&format!("$.{key}"), format!("xlac's LoRA needs {off}, found {}", c[key])));
            }
        }
        for key in ["rank_pattern", "alpha_pattern"] {
            if c[key].as_object().is_some_and(|o| !o.is_empty()) {
                return Err(bad(&format!("$.{key}"), "per-module ranks and alphas are not supported".into()));
            }
        }
        let names = |key: &str| -> Result<Vec<String>, Error> {
            match &c[key] {
                serde_json::Value::Null => Ok(vec![]),
                serde_json::Value::Array(a) => a
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(String::from)
                            .ok_or_else(|| bad(&format!("$.{key}"), format!("expected names, found {v}")))
                    })
                    .collect(),
                v => Err(bad(&format!("$.{key}"), format!("expected a list of module names, found {v}"))),
            }
        };
        let number = |key: &str| {
            c[key].as_f64().ok_or_else(|| bad(&format!("$.{key}"), format!("expected a number, found {}", c[key])))
        };
        let r = c["r"]
            .as_u64()
            .filter(|&r| r >= 1)
            .ok_or_else(|| bad("$.r", format!("expected a rank ≥ 1, found {}", c["r"])))?;
        let lora = Lora {
            r,
            alpha: number("lora_alpha")?,
            targets: names("target_modules")?,
            dropout: if c["lora_dropout"].is_null() { 0.0 } else { number("lora_dropout")? },
            modules_to_save: names("modules_to_save")?,
            init: LoraInit::Adapter(dir.join("adapter_model.safetensors")),
        };
        lora.check().map_err(|e| bad("$", e))?;
        Ok(lora)
    }

    /// PEFT's `adapter_config.json` for this configuration, for a model at `base` (its path).
    pub fn adapter_config(&self, base: &Path) -> serde_json::Value {
        serde_json::json!({
            "peft_type": "LORA",
            "base_model_name_or_path": base.display().to_string(),
            "r": self.r,
            "lora_alpha": self.alpha,
            "target_modules": self.targets,
            "lora_dropout": self.dropout,
            "modules_to_save": if self.modules_to_save.is_empty() { serde_json::Value::Null } else { self.modules_to_save.clone().into() },
            "bias": "none",
            "fan_in_fan_out": false,
            "init_lora_weights": true,
            "use_dora": false,
            "use_rslora": false,
            "task_type": null,
            "inference_mode": true
        })
    }

    /// True when module `name` is one of `list`, as PEFT matches names: equal, or ending in `.` + it.
    fn names(list: &[String], name: &str) -> bool {
        list.iter()
            .any(|t| name == t || name.ends_with(&format!(".{t}")) || (t.contains('*') && matches_pattern(t, name)))
    }

    /// True when parameter `param` belongs to one of the `modules_to_save`.
    pub fn saves(&self, param: &str) -> bool {
        let mut module = param;
        while let Some((head, _)) = module.rsplit_once('.') {
            if Lora::names(&self.modules_to_save, head) {
                return true;
            }
            module = head;
        }
        false
    }

    /// Adds the adapters to `m`: every targeted layer rewritten in place, its
    /// adapters new parameters (dropout on their input when `training`).
    /// An error names a target that matches no layer, or a layer that is no
    /// linear layer (its weight read by something else than a contraction).
    pub fn apply(&self, m: &mut Module, training: bool) -> Result<Vec<LoraSite>, Error> {
        let err = |message: String| Error::Invalid {
            origin: "train".into(),
            diagnostics: vec![Diagnostic::new("--lora", message)],
        };
        let weights: Vec<(String, Value)> = m
            .params()
            .iter()
            .map(|p| (m.value(p.value).name.clone(), p.value))
            .filter(|(n, _)| n.strip_suffix(".weight").is_some_and(|module| Lora::names(&self.targets, module)))
            .collect();
        for t in &self.targets {
            if !weights.iter().any(|(n, _)| Lora::names(std::slice::from_ref(t), &n[..n.len() - ".weight".len()])) {
                return Err(err(format!("target `{t}` matches no module with a weight")));
            }
        }
        let mut sites = Vec::new();
        for (name, w) in weights {
            let module = &name[..name.len() - ".weight".len()];
            sites.push(self.adapt(m, module, w, training).map_err(|e| err(format!("module `{module}`: {e}")))?);
        }
        if let LoraInit::Adapter(path) = &self.init {
            // The adapter holds the modules trained in full too, under PEFT's names.
            let saved: Vec<(Value, ParamSource)> = m
                .params()
                .iter()
                .filter(|p| self.saves(&m.value(p.value).name))
                .map(|p| {
                    let view = match &p.source {
                        ParamSource::File { view, .. } => view.clone(),
                        ParamSource::Inline(_) => Default::default(),
                    };
                    let tensor = format!("{PEFT_PREFIX}{}", m.value(p.value).name);
                    (p.value, ParamSource::File { path: path.clone(), tensor, view })
                })
                .collect();
            for (v, source) in saved {
                m.set_param_source(v, source);
            }
        }
        m.apply_aliases();
        crate::ir::verify::verify(m, "after adding the LoRA adapters")?;
        Ok(sites)
    }

    /// Adapts the layers reading weight `w` of `module`.
    fn adapt(&self, m: &mut Module, module: &str, w: Value, training: bool) -> Result<LoraSite, String> {
        let ty = m.value(w).ty.clone();
        if ty.rank() != 2 || !ty.dtype.is_float() {
            return Err(format!("a LoRA target is a linear layer's 2-D float weight, found {ty}"));
        }
        // A weight stored in another float type reaches its layers through one cast.
        let mut read = users(m, w);
        if let [n] = read[..] {
            if matches!(m.node(n).op, Op::Cast { .. }) {
                read = users(m, m.node(n).output);
            }
        }
        if read.is_empty() {
            return Err("its weight is read by no layer".into());
        }
        let layout = |m: &Module, n: Node| -> Result<bool, String> {
            let node = m.node(n);
            match &node.op {
                Op::Dot(d)
                    if node.inputs[1] != node.inputs[0] && d.rhs_batch.is_empty() && d.rhs_contract.len() == 1 =>
                {
                    Ok(d.rhs_contract[0] == 0)
                }
                Op::Linear { acc: None, .. } => Ok(true),
                Op::MatMul { acc: None } if node.inputs[1] != node.inputs[0] => Ok(true),
                op => Err(format!("its weight is read by `{}` ({}): LoRA adapts linear layers", node.name, op.name())),
            }
        };
        let in_out = layout(m, read[0])?;
        for &n in &read[1..] {
            if layout(m, n)? != in_out {
                return Err("its layers read the weight in two layouts".into());
            }
        }
        let (d_in, d_out) = if in_out { (ty.shape[0], ty.shape[1]) } else { (ty.shape[1], ty.shape[0]) };
        let (a_name, b_name) = (format!("{module}.lora_A.weight"), format!("{module}.lora_B.weight"));
        let a_ty = TensorType::new(DType::F32, vec![self.r, d_in]);
        let b_ty = TensorType::new(DType::F32, vec![d_out, self.r]);
        let (a_src, b_src) = match &self.init {
            LoraInit::Seeded(seed) => {
                // kaiming_uniform_(a=√5) on [r, in]: bound = gain·√(3/in), gain = √(2/(1+5)).
                let stream = sites_stream(module);
                let mut rng = xlac_core::rng::Rng::new(*seed, stream);
                let bound = 1.0 / (d_in as f64).sqrt();
                let a = (0..self.r * d_in).map(|_| (2.0 * rng.uniform() - 1.0) * bound).collect();
                let zeros = vec![0.0; (self.r * d_out) as usize];
                (ParamSource::Inline(ConstData::Float(a)), ParamSource::Inline(ConstData::Float(zeros)))
            }
            LoraInit::Adapter(path) => {
                let file = |name: &str| ParamSource::File {
                    path: path.clone(),
                    tensor: format!("{PEFT_PREFIX}{name}"),
                    view: Default::default(),
                };
                (file(&a_name), file(&b_name))
            }
        };
        let a = m.add_param(m.fresh_name(&a_name), a_ty, a_src);
        let b = m.add_param(m.fresh_name(&b_name), b_ty, b_src);
        let scale = self.alpha / self.r as f64;
        for n in read {
            self.adapt_layer(m, n, a, b, scale, training)?;
        }
        let name = |v: Value| m.value(v).name.clone();
        let source = m
            .params()
            .iter()
            .find(|p| p.value == w)
            .map(|p| p.source.clone())
            .ok_or("its weight is not a parameter")?;
        Ok(LoraSite { weight: name(w), source, ty: ty.clone(), a: name(a), b: name(b), scale, in_out })
    }

    /// Rewrites layer `n` (a contraction of its input with the weight: a dot,
    /// a linear or a matmul `x·W`) to add `scale·dropout(x)·Aᵀ·Bᵀ`.
    fn adapt_layer(
        &self,
        m: &mut Module,
        n: Node,
        a: Value,
        b: Value,
        scale: f64,
        training: bool,
    ) -> Result<(), String> {
        let node = m.node(n).clone();
        let x = node.inputs[0];
        let mark = m.order().len();
        let seed = if training && self.dropout > 0.0 { Some(seed_input(m)) } else { None };
        let stream = next_stream(m);
        let mut bld = Builder::new(m);
        let rank = bld.ty(x).rank();
        let contract = match &node.op {
            Op::Dot(d) if d.lhs_batch.is_empty() => d.lhs_contract[0],
            Op::Dot(_) => return Err(format!("`{}` is a batched contraction", node.name)),
            _ => rank - 1,
        };
        let mut input = x;
        if let Some(seed) = seed {
            let shape = bld.ty(x).shape;
            let u = bld.op(Op::RandomUniform { dtype: DType::F32, shape, stream }, &[seed])?;
            let keep = bld.compare_to(CompareDir::Ge, u, self.dropout)?;
            let kept = bld.scale(x, 1.0 / (1.0 - self.dropout))?;
            input = bld.zero_where_not(keep, kept)?;
        }
        let dims = |lhs: usize| DotDims {
            lhs_batch: vec![],
            rhs_batch: vec![],
            lhs_contract: vec![lhs],
            rhs_contract: vec![1],
            acc: None,
        };
        let down = bld.dot(input, a, dims(contract))?;
        let up = bld.dot(down, b, dims(rank - 1))?;
        let delta = bld.scale(up, scale)?;
        let result = match node.op {
            Op::Linear { activation, acc } => {
                let base = bld.op(Op::Linear { activation: None, acc }, &node.inputs)?;
                let sum = bld.add(base, delta)?;
                match activation {
                    Some(f) => bld.unary(f, sum)?,
                    None => sum,
                }
            }
            op => {
                let base = bld.op(op, &node.inputs)?;
                bld.add(base, delta)?
            }
        };
        // The new nodes are named after the layer's, so a layer's rematerialization includes them.
        let built: Vec<Node> = m.order()[mark..].to_vec();
        for (i, k) in built.into_iter().enumerate() {
            m.node_mut(k).name = format!("{}.lora.{i}", node.name);
        }
        m.replace_with_appended(n, mark, result);
        Ok(())
    }
}

/// The nodes that read value `v`, in execution order.
fn users(m: &Module, v: Value) -> Vec<Node> {
    m.order().iter().copied().filter(|&n| m.node(n).inputs.iter().any(|&i| m.resolve(i) == v)).collect()
}

/// The model's random seed input ([`STEP_SEED_INPUT`]), added if it has none.
fn seed_input(m: &mut Module) -> Value {
    let found = m.inputs().iter().copied().find(|&v| m.value(v).name == STEP_SEED_INPUT);
    found.unwrap_or_else(|| m.add_input(STEP_SEED_INPUT, TensorType::scalar(DType::I64)))
}

/// A random stream no `random_uniform` node of `m` draws from yet.
fn next_stream(m: &Module) -> u64 {
    m.order()
        .iter()
        .filter_map(|&n| match m.node(n).op {
            Op::RandomUniform { stream, .. } => Some(stream + 1),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// The seeded initialisation's random stream for a module: a hash of its name, the same on every machine.
fn sites_stream(module: &str) -> u64 {
    module.bytes().fold(0xCBF2_9CE4_8422_2325_u64, |h, c| (h ^ c as u64).wrapping_mul(0x0100_0000_01B3))
}

#[cfg(test)]
mod tests {
    use super::{Lora, LoraInit};

    #[test]
    fn a_spec_reads_lists_and_defaults_as_peft() {
        let l: Lora = "r=8, alpha=16, targets=query,value, dropout=0.05, modules_to_save=classifier".parse().unwrap();
        assert_eq!((l.r, l.alpha, l.dropout), (8, 16.0, 0.05));
        assert_eq!(l.targets, ["query", "value"]);
        assert_eq!(l.modules_to_save, ["classifier"]);
        assert_eq!(l.init, LoraInit::Seeded(0));
        let l: Lora = "r=4,targets=q_proj".parse().unwrap();
        assert_eq!((l.alpha, l.dropout, l.modules_to_save.len()), (8.0, 0.0, 0));
        assert!("r=2.5,targets=q".parse::<Lora>().unwrap_err().contains("whole number"));
        assert!("query,r=2".parse::<Lora>().unwrap_err().contains("KEY=VALUE"));
        assert!("r=2,targets".parse::<Lora>().unwrap_err().contains("`r`: one value"));
        assert!("r=2,alpha=1,2,targets=q".parse::<Lora>().unwrap_err().contains("one value"));
    }

    #[test]
    fn modules_match_by_their_last_names_and_saves_cover_their_parameters() {
        assert!(Lora::names(&["query".into()], "bert.encoder.layer.0.attention.self.query"));
        assert!(!Lora::names(&["query".into()], "bert.encoder.layer.0.attention.self.key_query_x"));
        assert!(Lora::names(&["self.query".into()], "bert.encoder.layer.0.attention.self.query"));
        let l: Lora = "r=1,targets=q,modules_to_save=classifier".parse().unwrap();
        assert!(l.saves("classifier.weight") && l.saves("bert.classifier.bias") && !l.saves("classifier_x.weight"));
    }
}
