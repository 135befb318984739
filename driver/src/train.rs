//! Running a training step program ([`xlac_compiler::train`]): the state it
//! starts from (the weights from their files, zeroed optimizer state, step
//! 0, the base learning rate) and, after each step, the state the next one
//! takes (the step's donated outputs, by the input each replaces).

use crate::{CompiledModel, Error, Parameters};
use std::collections::BTreeMap;
use xlac_compiler::train::{StepArg, REPORTED};
use xlac_compiler::TensorType;
use xlac_runtime::HostTensor;

/// The scalars one step reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
}

/// The step program's inputs besides the batch, as they start: by input name.
pub fn initial_state(model: &CompiledModel, lr: f64) -> Result<BTreeMap<String, HostTensor>, Error> {
    let args = model.step_args.as_ref().ok_or_else(|| Error::Input {
        model: model.path.clone(),
        name: "train".into(),
        message: "the model was not compiled as a training step".into(),
    })?;
    let m = &model.module;
    let inputs: Vec<(&String, &TensorType)> = m.inputs().iter().map(|&v| (&m.value(v).name, &m.value(v).ty)).collect();
    let weights: Vec<_> = args
        .iter()
        .zip(&inputs)
        .filter_map(|(a, (_, ty))| match a {
            StepArg::Weight(source) => Some((source, *ty)),
            _ => None,
        })
        .collect();
    let params = Parameters::of(weights)?;
    let mut next_weight = 0;
    let mut state = BTreeMap::new();
    for (arg, (name, ty)) in args.iter().zip(inputs) {
        let shape: Vec<usize> = ty.shape.iter().map(|&d| d as usize).collect();
        let value = match arg {
            StepArg::Batch | StepArg::Labels => continue,
            StepArg::Weight(_) => {
                let v = params.value(next_weight)?;
                next_weight += 1;
                let t = v.as_ref()?;
                HostTensor::new(t.ty, t.shape.to_vec(), t.dense_bytes().into_owned())?
            }
            StepArg::State => {
                let bytes =
                    xlac_runtime::memory::zeroed(&format!("optimizer state `{name}`"), ty.size_bytes() as usize)?;
                HostTensor::new(ty.dtype, shape, bytes)?
            }
            StepArg::StepCount => HostTensor::from_array(&ndarray::arr0(0.0f32)),
            StepArg::LearningRate => HostTensor::from_array(&ndarray::arr0(lr as f32)),
        };
        state.insert(name.clone(), value);
    }
    Ok(state)
}

/// Splits a step's outputs into its report and the state the next step
/// takes (each updated value under the name of the input it replaces),
/// carrying the inputs no output replaces (the learning rate) over from `state`.
pub fn after_step(
    outputs: Vec<(String, HostTensor)>,
    state: &mut BTreeMap<String, HostTensor>,
) -> Result<StepReport, String> {
    let scalar = |i: usize| -> Result<f64, String> {
        let (name, t) = outputs.get(i).ok_or("a step reports loss, grad_norm and lr")?;
        if name != REPORTED[i] {
            return Err(format!("output {i} is `{name}`, expected `{}`", REPORTED[i]));
        }
        t.to_f64_vec().first().copied().ok_or_else(|| format!("`{name}` is empty"))
    };
    let report = StepReport { loss: scalar(0)?, grad_norm: scalar(1)?, lr: scalar(2)? };
    for (name, t) in outputs.into_iter().skip(REPORTED.len()) {
        state.insert(name, t);
    }
    Ok(report)
}
