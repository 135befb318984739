//! Every PJRT object is destroyed exactly once over compile, transfer and
//! execute cycles. Its own test binary, so no other test's objects count.

use ndarray::array;
use xlac_runtime::{
    object_counts, Client, ClientOptions, CompileOptions, DType, HostTensor, ObjectKind, Program, TensorSpec,
};
use xlac_tests::{cpu_plugin, AlignedFloats};

#[test]
fn every_object_is_destroyed_exactly_once() {
    let Some(plugin) = cpu_plugin() else { return };
    let spec = |name: &str| TensorSpec { name: name.into(), ty: DType::F32, shape: vec![2] };
    let program = Program::new(
        "module @m { func.func public @main(%a: tensor<2xf32>) -> (tensor<2xf32>, tensor<2xf32>) {
          %0 = stablehlo.add %a, %a : tensor<2xf32>
          %1 = stablehlo.multiply %a, %a : tensor<2xf32>
          return %0, %1 : tensor<2xf32>, tensor<2xf32> } }"
            .into(),
        vec![spec("a")],
        vec![spec("sum"), spec("product")],
    );
    let (clients, compiles, cycles) = (2u64, 3u64, 4u64);
    for _ in 0..clients {
        let client = Client::new(&plugin, &ClientOptions::default()).unwrap();
        for _ in 0..compiles {
            let exe = client.compile(&program, &CompileOptions::default()).unwrap();
            for _ in 0..cycles {
                let a = HostTensor::from_array(&array![1.0f32, 2.0]);
                let buf = client.upload(a.as_ref(), exe.device_index()).unwrap();
                let outs = exe.execute(&[&buf]).unwrap();
                assert_eq!(outs[1].to_host().unwrap().to_f64_vec(), vec![1.0, 4.0]);
                exe.run(&[a.as_ref()]).unwrap();
                // Host memory lent in place: its event is awaited when the buffer goes.
                let lent = AlignedFloats::new(&[1.0, 2.0]);
                let buf = client.upload_in_place(lent.tensor(), exe.device_index(), lent.clone()).unwrap();
                assert!(buf.reads_host_memory());
                assert_eq!(exe.execute(&[&buf]).unwrap()[0].to_host().unwrap().to_f64_vec(), vec![2.0, 4.0]);
            }
        }
        // A failing call creates (and must free) a PJRT error.
        let bad = Program { mlir: "not mlir".into(), ..program.clone() };
        assert!(client.compile(&bad, &CompileOptions::default()).is_err());
    }
    let counts = object_counts();
    let get = |k| counts.iter().find(|c| c.kind == k).copied().unwrap();
    for c in &counts {
        assert_eq!(c.created, c.destroyed, "{c:?}");
    }
    let runs = clients * compiles * cycles;
    assert_eq!(get(ObjectKind::Client).created, clients);
    assert_eq!(get(ObjectKind::LoadedExecutable).created, clients * compiles);
    assert_eq!(get(ObjectKind::Executable).created, clients * compiles);
    // Per cycle: execute (1 upload + 2 outputs), run (1 upload + 2 outputs)
    // and execute on lent memory (1 buffer + 2 outputs).
    assert_eq!(get(ObjectKind::Buffer).created, runs * 9);
    assert_eq!(get(ObjectKind::Error).created, clients);
    println!("{counts:?}");
}
