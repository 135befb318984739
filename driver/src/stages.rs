//! Pipeline parallelism at run time (`xlac run --pipeline S --microbatches M`):
//! a model cut into stages ([`xlac_compiler::stages`]), stage `s` compiled
//! for device `s` with its weights there, the batch split into micro-batches
//! that flow from stage to stage, each value copied device to device by the
//! plugin (no host round trip).
//!
//! Each stage runs on a thread of its own, taking the micro-batches in order
//! as soon as their inputs are there: the GPipe schedule (for a forward
//! pass, 1F1B's too). [`Timeline`] records when each stage was busy, so the
//! idle share per device (the bubble) is measured, beside the theory's
//! `(S − 1) / (M + S − 1)`.

use crate::{CompiledModel, DeviceModel, Error, Session};
use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};
use xlac_compiler::stages::{Cut, Source};
use xlac_runtime::{HostTensor, ShardedBuffer};

/// A run's outputs, by name.
pub type Outputs = Vec<(String, HostTensor)>;

/// Each stage's outputs, per micro-batch, once made.
type Made = Vec<Vec<Option<Vec<ShardedBuffer>>>>;

/// A model's stages, loaded: stage `s` on device `s`.
pub struct Pipeline {
    stages: Vec<(DeviceModel, Vec<Source>)>,
    /// The model's inputs' names, in order.
    inputs: Vec<String>,
    /// Each model output: its name and (stage, output).
    outputs: Vec<(String, (usize, usize))>,
}

/// When each stage was busy while a pipeline ran.
#[derive(Clone, Debug)]
pub struct Timeline {
    /// Per stage, per micro-batch: (start, end) since the run began.
    pub busy: Vec<Vec<(Duration, Duration)>>,
    /// The whole run.
    pub wall: Duration,
}

impl Timeline {
    /// The share of the run stage `s`'s device was idle.
    pub fn idle_share(&self, s: usize) -> f64 {
        let busy: Duration = self.busy[s].iter().map(|(a, b)| *b - *a).sum();
        1.0 - busy.as_secs_f64() / self.wall.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// GPipe's bubble: the idle share of each device with `stages` stages and
/// `micro` equal micro-batches, `(S − 1) / (M + S − 1)`.
pub fn bubble_theory(stages: usize, micro: usize) -> f64 {
    (stages as f64 - 1.0) / (micro + stages - 1) as f64
}

impl Pipeline {
    /// Lowers and loads the stages of `cut`, a cut of `model` (compiled at the
    /// micro-batch's shapes), stage `s` on device `s` of `session`, each
    /// lowered as `session`'s plugin reads it best ([`CompiledModel::lower_for`]).
    pub fn load(session: &Session, model: &CompiledModel, cut: Cut) -> Result<Pipeline, Error> {
        let m = &model.module;
        let inputs = m.inputs().iter().map(|&v| m.value(v).name.clone()).collect();
        let outputs = m.output_names().iter().cloned().zip(cut.outputs.iter().copied()).collect();
        let mut stages = Vec::new();
        for (s, stage) in cut.stages.into_iter().enumerate() {
            let mut compiled = CompiledModel {
                path: model.path.clone(),
                bindings: model.bindings.clone(),
                module: stage.module,
                lowered: stage.lowered,
                stats: Vec::new(),
                capped: Vec::new(),
                step_args: None,
                lora: Vec::new(),
                devices: Some(vec![s]),
            };
            compiled.lower_for(session);
            let (device, _) = session.load(&compiled, &mut |_| {})?;
            stages.push((device, stage.sources));
        }
        Ok(Pipeline { stages, inputs, outputs })
    }

    /// Each stage's floating-point operations by XLA's cost analysis of its
    /// compiled program (`None` where the plugin does not implement it).
    pub fn xla_flops(&self) -> Vec<Option<f64>> {
        self.stages
            .iter()
            .map(|(d, _)| {
                let costs = d.exe.cost_analysis().ok()?;
                costs.into_iter().find(|(k, _)| k == "flops").map(|(_, v)| v)
            })
            .collect()
    }

    /// The device each stage runs on, in order.
    pub fn devices(&self) -> Vec<usize> {
        self.stages.iter().flat_map(|(d, _)| d.exe.devices().to_vec()).collect()
    }

    /// Runs the micro-batches `micro` (each the model's inputs by name)
    /// through the stages: the outputs of each micro-batch, by name, and when
    /// each stage was busy.
    pub fn run(&self, micro: &[BTreeMap<String, HostTensor>]) -> Result<(Vec<Outputs>, Timeline), Error> {
        let (n, count) = (self.stages.len(), micro.len());
        // Each stage's outputs per micro-batch, filled as they are made; `failed` stops the others.
        let slots = (0..n).map(|_| (0..count).map(|_| None).collect()).collect();
        let made: Mutex<(Made, bool)> = Mutex::new((slots, false));
        let ready = Condvar::new();
        let start = Instant::now();
        let busy: Vec<Result<Vec<(Duration, Duration)>, Error>> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..n)
                .map(|s| {
                    let (made, ready) = (&made, &ready);
                    scope.spawn(move || {
                        let result = self.run_stage(s, micro, made, ready, start);
                        if result.is_err() {
                            made.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
                            ready.notify_all();
                        }
                        result
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
        });
        let wall = start.elapsed();
        let busy = busy.into_iter().collect::<Result<Vec<_>, _>>()?;
        let made = made.into_inner().unwrap_or_else(|e| e.into_inner()).0;
        let output = |k: usize, (name, (s, o)): &(String, (usize, usize))| -> Result<(String, HostTensor), Error> {
            let buffers = made[*s][k].as_ref().expect("every stage ran every micro-batch");
            Ok((name.clone(), buffers[*o].to_host()?))
        };
        let out = (0..count)
            .map(|k| self.outputs.iter().map(|o| output(k, o)).collect::<Result<Vec<_>, _>>())
            .collect::<Result<Vec<_>, _>>()?;
        Ok((out, Timeline { busy, wall }))
    }

    /// Stage `s`'s thread: each micro-batch in turn, once its inputs are made.
    fn run_stage(
        &self,
        s: usize,
        micro: &[BTreeMap<String, HostTensor>],
        made: &Mutex<(Made, bool)>,
        ready: &Condvar,
        start: Instant,
    ) -> Result<Vec<(Duration, Duration)>, Error> {
        let (device, sources) = &self.stages[s];
        let mut busy = Vec::with_capacity(micro.len());
        for (k, given) in micro.iter().enumerate() {
            let mut args = Vec::with_capacity(sources.len());
            for (i, source) in sources.iter().enumerate() {
                args.push(match *source {
                    Source::Input(j) => {
                        let name = &self.inputs[j];
                        let t = given.get(name).ok_or_else(|| Error::Input {
                            model: "pipeline".into(),
                            name: name.clone(),
                            message: "missing from the micro-batch".into(),
                        })?;
                        device.exe.upload_argument(i, t.as_ref())?
                    }
                    Source::Stage { stage, output } => {
                        let mut guard = made.lock().unwrap_or_else(|e| e.into_inner());
                        loop {
                            if guard.1 {
                                return Err(Error::Input {
                                    model: "pipeline".into(),
                                    name: format!("stage {s}"),
                                    message: "another stage failed".into(),
                                });
                            }
                            if let Some(outs) = &guard.0[stage][k] {
                                break outs[output].copy_to(device.exe.devices())?;
                            }
                            guard = ready.wait(guard).unwrap_or_else(|e| e.into_inner());
                        }
                    }
                });
            }
            let from = start.elapsed();
            let outs = device.execute(&args)?;
            for o in &outs {
                o.shards().iter().try_for_each(|b| b.wait_ready())?;
            }
            busy.push((from, start.elapsed()));
            made.lock().unwrap_or_else(|e| e.into_inner()).0[s][k] = Some(outs);
            ready.notify_all();
        }
        Ok(busy)
    }
}

/// Splits every input of `given` along its first axis into `count` equal
/// micro-batches; an error names an input whose first axis does not divide.
pub fn split(given: &BTreeMap<String, HostTensor>, count: usize) -> Result<Vec<BTreeMap<String, HostTensor>>, Error> {
    let mut out = vec![BTreeMap::new(); count];
    for (name, t) in given {
        let rows = t.shape().first().copied().unwrap_or(0);
        if count == 0 || rows % count != 0 {
            return Err(Error::Input {
                model: "pipeline".into(),
                name: name.clone(),
                message: format!("its first axis ({rows}) does not split into {count} micro-batches"),
            });
        }
        let per = t.data().len() / count;
        let mut shape = t.shape().to_vec();
        shape[0] = rows / count;
        for (k, part) in out.iter_mut().enumerate() {
            part.insert(
                name.clone(),
                HostTensor::new(t.element_type(), shape.clone(), t.data()[k * per..(k + 1) * per].to_vec())?,
            );
        }
    }
    Ok(out)
}

/// The micro-batches' outputs joined along their first axis, by name.
pub fn join(parts: Vec<Outputs>) -> Result<Outputs, Error> {
    let Some(first) = parts.first() else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for (i, (name, t)) in first.iter().enumerate() {
        if t.shape().is_empty() {
            return Err(Error::Input {
                model: "pipeline".into(),
                name: name.clone(),
                message: "a scalar output: its micro-batches' values do not join into a batch".into(),
            });
        }
        let mut data = Vec::new();
        let mut rows = 0;
        for p in &parts {
            data.extend_from_slice(p[i].1.data());
            rows += p[i].1.shape().first().copied().unwrap_or(1);
        }
        let mut shape = t.shape().to_vec();
        if let Some(r) = shape.first_mut() {
            *r = rows;
        }
        out.push((name.clone(), HostTensor::new(t.element_type(), shape, data)?));
    }
    Ok(out)
}
