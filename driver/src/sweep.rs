//! Hyperparameter search (`xlac sweep`): what a sweep varies and where
//! its values come from, the trials drawn at random or on a grid, each
//! trial's configuration, and median pruning.
//!
//! Every trial runs the same compiled step: the step is built tunable
//! ([`TrainConfig::tunable`]), its learning rate, weight decay, betas and
//! schedule (kind, warmup, length) scalar inputs that [`knob_inputs`]
//! fills for a trial, so a sweep of any size costs one XLA compile.

use crate::{CompiledModel, Error};
use std::collections::BTreeMap;
use xlac_compiler::train::optim::{Optimizer, Schedule};
use xlac_compiler::train::{StepArg, TrainConfig};
use xlac_runtime::HostTensor;

/// A hyperparameter a sweep varies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tunable {
    Lr,
    WeightDecay,
    Warmup,
    Beta1,
    Beta2,
    /// The schedule: 0 constant, 1 linear, 2 cosine.
    Schedule,
}

const TUNABLES: [(Tunable, &str); 6] = [
    (Tunable::Lr, "lr"),
    (Tunable::WeightDecay, "weight_decay"),
    (Tunable::Warmup, "warmup"),
    (Tunable::Beta1, "beta1"),
    (Tunable::Beta2, "beta2"),
    (Tunable::Schedule, "schedule"),
];

const SCHEDULES: [&str; 3] = ["constant", "linear", "cosine"];

impl Tunable {
    /// The name `--param` takes.
    pub fn name(self) -> &'static str {
        TUNABLES.iter().find(|(t, _)| *t == self).map(|(_, n)| *n).expect("every tunable is named")
    }

    /// `value` as the table shows it (a schedule by name).
    pub fn show(self, value: f64) -> String {
        match self {
            Tunable::Schedule => SCHEDULES.get(value as usize).copied().unwrap_or("?").to_string(),
            Tunable::Warmup => format!("{value}"),
            _ if value == 0.0 => "0".into(),
            _ if (1e-2..1e3).contains(&value.abs()) => format!("{value:.4}"),
            _ => format!("{value:.3e}"),
        }
    }
}

/// Where a hyperparameter's values are drawn from.
#[derive(Clone, Debug, PartialEq)]
pub enum Space {
    /// One of these.
    Choice(Vec<f64>),
    /// Uniform in `[lo, hi]`.
    Uniform { lo: f64, hi: f64 },
    /// Log-uniform in `[lo, hi]` (both > 0).
    LogUniform { lo: f64, hi: f64 },
    /// A whole number in `lo..=hi`.
    Integers { lo: u64, hi: u64 },
}

/// One `--param`: a hyperparameter and its space.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub tunable: Tunable,
    pub space: Space,
}

impl std::str::FromStr for Param {
    type Err = String;

    /// `lr=log:1e-5:1e-2` (log-uniform), `lr=1e-4:1e-2` (uniform),
    /// `warmup=0:100` (whole numbers), `weight_decay=0,0.01,0.1` (a choice),
    /// `schedule=linear,cosine`.
    fn from_str(spec: &str) -> Result<Param, String> {
        let (name, values) =
            spec.split_once('=').ok_or_else(|| format!("`{spec}`: expected NAME=VALUES, e.g. lr=log:1e-5:1e-2"))?;
        let names: Vec<&str> = TUNABLES.iter().map(|(_, n)| *n).collect();
        let tunable = TUNABLES
            .iter()
            .find(|(_, n)| *n == name.trim())
            .map(|(t, _)| *t)
            .ok_or_else(|| format!("`{name}` is not a hyperparameter a sweep varies ({})", names.join(", ")))?;
        let bad = |what: &str| format!("`{spec}`: {what}");
        let number = |s: &str| s.trim().parse::<f64>().map_err(|_| bad(&format!("`{s}` is not a number")));
        let values = values.trim();
        let space = if tunable == Tunable::Schedule {
            let codes = values.split(',').map(|v| {
                SCHEDULES
                    .iter()
                    .position(|s| *s == v.trim())
                    .map(|c| c as f64)
                    .ok_or_else(|| bad(&format!("`{v}` is not a schedule ({})", SCHEDULES.join(", "))))
            });
            Space::Choice(codes.collect::<Result<_, _>>()?)
        } else if let Some(range) = values.strip_prefix("log:") {
            let (lo, hi) = range.split_once(':').ok_or_else(|| bad("expected log:LOW:HIGH"))?;
            let (lo, hi) = (number(lo)?, number(hi)?);
            if !(lo > 0.0 && lo < hi) {
                return Err(bad("a log range needs 0 < LOW < HIGH"));
            }
            Space::LogUniform { lo, hi }
        } else if let Some((lo, hi)) = values.split_once(':') {
            if tunable == Tunable::Warmup {
                let whole = |s: &str| s.trim().parse::<u64>().map_err(|_| bad(&format!("`{s}` is not a step count")));
                let (lo, hi) = (whole(lo)?, whole(hi)?);
                if lo > hi {
                    return Err(bad("LOW is above HIGH"));
                }
                Space::Integers { lo, hi }
            } else {
                let (lo, hi) = (number(lo)?, number(hi)?);
                if lo >= hi {
                    return Err(bad("a range needs LOW < HIGH"));
                }
                Space::Uniform { lo, hi }
            }
        } else {
            let list: Vec<f64> = values.split(',').map(number).collect::<Result<_, _>>()?;
            if tunable == Tunable::Warmup && list.iter().any(|w| *w < 0.0 || w.fract() != 0.0) {
                return Err(bad("warmup is a whole number of steps"));
            }
            Space::Choice(list)
        };
        Ok(Param { tunable, space })
    }
}

/// A trial's values, one per `--param`, in their order.
pub type Assignment = Vec<(Tunable, f64)>;

/// `n` trials drawn at random from `params`' spaces, seeded by `seed`.
pub fn random(params: &[Param], n: usize, seed: u64) -> Vec<Assignment> {
    let mut rng = xlac_core::rng::Rng::new(seed, 0x5EE9);
    (0..n)
        .map(|_| {
            params
                .iter()
                .map(|p| {
                    let u = rng.uniform();
                    let value = match &p.space {
                        Space::Choice(list) => list[((u * list.len() as f64) as usize).min(list.len() - 1)],
                        Space::Uniform { lo, hi } => lo + u * (hi - lo),
                        Space::LogUniform { lo, hi } => (lo.ln() + u * (hi.ln() - lo.ln())).exp(),
                        Space::Integers { lo, hi } => (lo + ((u * (hi - lo + 1) as f64) as u64).min(hi - lo)) as f64,
                    };
                    (p.tunable, value)
                })
                .collect()
        })
        .collect()
}

/// Every combination of `params`' choices (the last varying fastest); an
/// error naming a parameter whose space is a range.
pub fn grid(params: &[Param]) -> Result<Vec<Assignment>, String> {
    let mut trials: Vec<Assignment> = vec![Vec::new()];
    for p in params {
        let Space::Choice(list) = &p.space else {
            return Err(format!(
                "--grid takes lists of values: `{}` is a range (give e.g. {}=1e-4,1e-3)",
                p.tunable.name(),
                p.tunable.name()
            ));
        };
        trials = trials
            .into_iter()
            .flat_map(|t| {
                list.iter().map(move |&v| {
                    let mut t = t.clone();
                    t.push((p.tunable, v));
                    t
                })
            })
            .collect();
    }
    Ok(trials)
}

/// The trial `assignment` of a sweep whose other settings are `base` (its
/// schedule `steps` long) and `lr`: its configuration and learning rate.
pub fn configure(
    base: &TrainConfig,
    lr: f64,
    steps: u64,
    assignment: &Assignment,
) -> Result<(TrainConfig, f64), String> {
    let mut config = base.clone();
    let mut lr = lr;
    let (mut kind, mut warmup) = match config.schedule {
        Schedule::Constant => (0, 0),
        Schedule::Linear { warmup, .. } => (1, warmup),
        Schedule::Cosine { warmup, .. } => (2, warmup),
    };
    for &(tunable, value) in assignment {
        match tunable {
            Tunable::Lr => lr = value,
            Tunable::Warmup => warmup = value as u64,
            Tunable::Schedule => kind = value as usize,
            Tunable::WeightDecay => match &mut config.optimizer {
                Optimizer::Sgd { weight_decay, .. }
                | Optimizer::AdamW { weight_decay, .. }
                | Optimizer::AdamW8bit { weight_decay, .. }
                | Optimizer::Adafactor { weight_decay, .. } => *weight_decay = value,
            },
            Tunable::Beta1 | Tunable::Beta2 => match &mut config.optimizer {
                Optimizer::AdamW { beta1, beta2, .. } | Optimizer::AdamW8bit { beta1, beta2, .. } => {
                    *(if tunable == Tunable::Beta1 { beta1 } else { beta2 }) = value
                }
                other => return Err(format!("{} has no betas to vary", other.name())),
            },
        }
    }
    config.schedule = match kind {
        0 => Schedule::Constant,
        1 => Schedule::Linear { warmup, total: steps },
        _ => Schedule::Cosine { warmup, total: steps },
    };
    Ok((config, lr))
}

/// The knob inputs of the tunable step `step` for a trial configured as
/// `config`, by input name (what [`crate::train::Trainer::resume`] takes).
pub fn knob_inputs(step: &CompiledModel, config: &TrainConfig) -> Result<BTreeMap<String, HostTensor>, Error> {
    let args = step.step_args.as_deref().unwrap_or_default();
    let m = &step.module;
    let mut out = BTreeMap::new();
    for (arg, &v) in args.iter().zip(m.inputs()) {
        if let StepArg::Knob { knob, .. } = arg {
            let value = knob.value(&config.optimizer, &config.schedule) as f32;
            out.insert(m.value(v).name.clone(), HostTensor::from_array(&ndarray::arr0(value)));
        }
    }
    if out.is_empty() {
        return Err(Error::Input {
            model: step.path.clone(),
            name: "train".into(),
            message: "the step was not built tunable: its hyperparameters are constants".into(),
        });
    }
    Ok(out)
}

/// What a sweep ranks trials by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// The evaluation's loss: lower is better.
    EvalLoss,
    /// The evaluation's accuracy: higher is better.
    EvalAccuracy,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::EvalLoss => "eval_loss",
            Metric::EvalAccuracy => "eval_accuracy",
        }
    }

    /// True when `a` is better than `b`.
    pub fn better(self, a: f64, b: f64) -> bool {
        match self {
            Metric::EvalLoss => a < b,
            Metric::EvalAccuracy => a > b,
        }
    }
}

/// Median pruning as Optuna's `MedianPruner` (defaults: 5 startup trials, no
/// warmup steps): a trial whose value at an evaluation step is worse than
/// the median of the earlier trials' values at that step stops there, once
/// `startup` trials have finished.
pub struct MedianPruner {
    startup: usize,
    metric: Metric,
    /// Each finished (or pruned) trial's values, by step.
    history: Vec<BTreeMap<u64, f64>>,
}

impl MedianPruner {
    pub fn new(metric: Metric, startup: usize) -> MedianPruner {
        MedianPruner { startup, metric, history: Vec::new() }
    }

    /// True when a trial with `value` at `step` should stop.
    pub fn prune(&self, step: u64, value: f64) -> bool {
        let finished = self.history.iter().filter(|h| !h.is_empty()).count();
        if finished < self.startup {
            return false;
        }
        let mut at: Vec<f64> = self.history.iter().filter_map(|h| h.get(&step).copied()).collect();
        if at.is_empty() {
            return false;
        }
        at.sort_by(f64::total_cmp);
        let n = at.len();
        let median = if n % 2 == 1 { at[n / 2] } else { (at[n / 2 - 1] + at[n / 2]) / 2.0 };
        self.metric.better(median, value)
    }

    /// Records a trial's values, by step, once it ends.
    pub fn record(&mut self, values: BTreeMap<u64, f64>) {
        self.history.push(values);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(s: &str) -> Param {
        s.parse().unwrap()
    }

    #[test]
    fn params_parse_each_space_and_name_what_is_wrong() {
        assert_eq!(param("lr=log:1e-5:1e-2").space, Space::LogUniform { lo: 1e-5, hi: 1e-2 });
        assert_eq!(param("weight_decay=0,0.01,0.1").space, Space::Choice(vec![0.0, 0.01, 0.1]));
        assert_eq!(param("warmup=0:100").space, Space::Integers { lo: 0, hi: 100 });
        assert_eq!(param("beta2=0.9:0.999").space, Space::Uniform { lo: 0.9, hi: 0.999 });
        assert_eq!(param("schedule=linear,cosine").space, Space::Choice(vec![1.0, 2.0]));
        let e = |s: &str| s.parse::<Param>().unwrap_err();
        assert!(e("momentum=0.9").contains("not a hyperparameter a sweep varies"), "{}", e("momentum=0.9"));
        assert!(e("lr=log:0:1").contains("0 < LOW < HIGH"));
        assert!(e("schedule=step").contains("`step` is not a schedule"));
        assert!(e("warmup=1.5,2").contains("whole number"));
        assert!(e("lr").contains("expected NAME=VALUES"));
    }

    #[test]
    fn random_trials_are_seeded_and_stay_in_their_spaces() {
        let params = [param("lr=log:1e-5:1e-2"), param("warmup=0:10"), param("weight_decay=0,0.1")];
        let (a, b) = (random(&params, 50, 3), random(&params, 50, 3));
        assert_eq!(a, b);
        assert_ne!(a, random(&params, 50, 4));
        for t in &a {
            assert!((1e-5..=1e-2).contains(&t[0].1) && (0.0..=10.0).contains(&t[1].1) && t[1].1.fract() == 0.0);
            assert!([0.0, 0.1].contains(&t[2].1));
        }
        // A log-uniform draw spreads over the decades.
        assert!(a.iter().any(|t| t[0].1 < 1e-4) && a.iter().any(|t| t[0].1 > 1e-3));
    }

    #[test]
    fn a_grid_is_every_combination_and_refuses_ranges() {
        let g = grid(&[param("lr=1e-3,1e-2"), param("schedule=constant,linear,cosine")]).unwrap();
        assert_eq!(g.len(), 6);
        assert_eq!(g[1], vec![(Tunable::Lr, 1e-3), (Tunable::Schedule, 1.0)]);
        assert!(grid(&[param("lr=log:1e-5:1e-2")]).unwrap_err().contains("--grid takes lists"));
    }

    #[test]
    fn the_median_pruner_waits_for_its_startup_trials_then_stops_the_worse_half() {
        let mut p = MedianPruner::new(Metric::EvalLoss, 2);
        assert!(!p.prune(10, 9.0), "no trial finished yet");
        p.record([(10, 1.0), (20, 0.5)].into());
        assert!(!p.prune(10, 9.0), "one startup trial of two");
        p.record([(10, 3.0), (20, 2.0)].into());
        assert!(p.prune(10, 2.5) && !p.prune(10, 1.5), "the median at step 10 is 2");
        assert!(!p.prune(30, 99.0), "no trial reported at step 30");
        let mut acc = MedianPruner::new(Metric::EvalAccuracy, 1);
        acc.record([(5, 0.8)].into());
        assert!(acc.prune(5, 0.7) && !acc.prune(5, 0.9));
    }

    #[test]
    fn a_trial_configures_the_optimizer_and_the_schedule() {
        use xlac_compiler::autodiff::Remat;
        use xlac_compiler::train::loss::Loss;
        use xlac_compiler::train::shard::Zero;
        let base = TrainConfig {
            loss: Loss::Mse,
            output: None,
            optimizer: Optimizer::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 },
            schedule: Schedule::Constant,
            clip_norm: None,
            freeze: vec![],
            accumulate: 1,
            remat: Remat::None,
            lora: None,
            loss_scale: None,
            zero: Zero::Off,
            tunable: true,
        };
        let t = vec![(Tunable::Lr, 0.5), (Tunable::Beta2, 0.98), (Tunable::Schedule, 2.0), (Tunable::Warmup, 3.0)];
        let (c, lr) = configure(&base, 1e-3, 40, &t).unwrap();
        assert_eq!(lr, 0.5);
        assert_eq!(c.optimizer, Optimizer::AdamW { beta1: 0.9, beta2: 0.98, eps: 1e-8, weight_decay: 0.01 });
        assert_eq!(c.schedule, Schedule::Cosine { warmup: 3, total: 40 });
        let sgd = TrainConfig { optimizer: Optimizer::default_for("sgd").unwrap(), ..base };
        assert!(configure(&sgd, 1e-3, 40, &vec![(Tunable::Beta1, 0.8)]).unwrap_err().contains("sgd has no betas"));
    }
}
