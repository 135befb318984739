//! Loads an `.xlac` artifact and runs it on ndarray inputs, with the runtime
//! crate alone (no compiler linked), as a Rust service would:
//!
//! ```sh
//! xlac compile fixtures/mlp/model.json --bind batch=2 -o mlp.xlac --aot
//! cargo run -p xlac-runtime --example run_artifact -- mlp.xlac
//! ```

use ndarray::ArrayD;
use xlac_runtime::{Artifact, CacheConfig, Client, ClientOptions, CompilationCache, DType, HostTensor, Platform};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: run_artifact MODEL.xlac")?;
    let artifact = Artifact::open(path.as_ref())?;
    // Of several CPU plugins installed, the one calibrated fastest at this program's work.
    let plugin = xlac_runtime::calibration::discover(Platform::Cpu, None, artifact.workload())?;
    let client = Client::new(&plugin, &ClientOptions::default())?;
    let cache = CompilationCache::new(&CacheConfig::from_env())?;
    let model = artifact.load(&client, &cache)?;

    // One input per declared input: 0.5 everywhere for f32, seeded random otherwise.
    let inputs: Vec<HostTensor> = model
        .inputs()
        .iter()
        .map(|spec| match spec.ty {
            DType::F32 => Ok(HostTensor::from_array(&ArrayD::from_elem(spec.shape.clone(), 0.5f32))),
            ty => HostTensor::random(ty, &spec.shape, 0),
        })
        .collect::<Result<_, _>>()?;
    let refs: Vec<_> = inputs.iter().map(HostTensor::as_ref).collect();
    for (spec, out) in model.outputs().iter().zip(model.run(&refs)?) {
        match out.element_type() {
            DType::F32 => println!("{}: {}", spec.name, out.to_array::<f32>()?),
            _ => println!("{}: {}", spec.name, out.summary()),
        }
    }
    Ok(())
}
