//! SPMD execution on several CPU devices: a program annotated with Shardy
//! shardings, compiled with N partitions, runs with one argument list of
//! shards per device and returns each device's output shard. Data-parallel
//! and tensor-parallel runs on 2 and 4 devices equal the single-device result,
//! and each device really holds only its share of the sharded argument.

use ndarray::{concatenate, Array2, Axis};
use xlac_runtime::{Client, ClientOptions, CompileOptions, ElementType, HostTensor, Program, TensorSpec};
use xlac_tests::cpu_plugin;

fn spec(name: &str, shape: &[usize]) -> TensorSpec {
    TensorSpec { name: name.into(), ty: ElementType::F32, shape: shape.to_vec() }
}

/// tanh(x·w) for x f32[8,4] and w f32[4,8], with the given Shardy shardings of x, w and the result.
fn program(axis: &str, n: usize, x: &str, w: &str, out: &str) -> Program {
    mesh_program(&format!(r#""{axis}"={n}"#), n, x, w, out)
}

/// [`program`] over a mesh written as Shardy axes (`"data"=2, "model"=2`).
fn mesh_program(axes: &str, n: usize, x: &str, w: &str, out: &str) -> Program {
    let mlir = format!(
        r#"module @spmd attributes {{mhlo.num_partitions = {n} : i32, mhlo.num_replicas = 1 : i32}} {{
  sdy.mesh @mesh = <[{axes}]>
  func.func public @main(%x: tensor<8x4xf32> {{sdy.sharding = #sdy.sharding<@mesh, {x}>}}, %w: tensor<4x8xf32> {{sdy.sharding = #sdy.sharding<@mesh, {w}>}}) -> (tensor<8x8xf32> {{sdy.sharding = #sdy.sharding<@mesh, {out}>}}) {{
    %0 = "stablehlo.dot_general"(%x, %w) {{dot_dimension_numbers = #stablehlo.dot<lhs_contracting_dimensions = [1], rhs_contracting_dimensions = [0]>}} : (tensor<8x4xf32>, tensor<4x8xf32>) -> tensor<8x8xf32>
    %1 = stablehlo.tanh %0 : tensor<8x8xf32>
    return %1 : tensor<8x8xf32>
  }}
}}"#
    );
    Program { mlir, inputs: vec![spec("x", &[8, 4]), spec("w", &[4, 8])], outputs: vec![spec("y", &[8, 8])] }
}

fn inputs() -> (Array2<f32>, Array2<f32>) {
    let x = Array2::from_shape_fn((8, 4), |(i, j)| ((i * 4 + j) as f32 * 0.37).sin());
    let w = Array2::from_shape_fn((4, 8), |(i, j)| ((i * 8 + j) as f32 * 0.11).cos() * 0.5);
    (x, w)
}

#[test]
fn data_and_tensor_parallel_runs_equal_one_device() {
    let Some(plugin) = cpu_plugin() else { return };
    let (x, w) = inputs();
    let want = x.dot(&w).mapv(f32::tanh);
    for n in [2usize, 4] {
        let client = Client::new(&plugin, &ClientOptions { cpu_device_count: Some(n as u32) }).unwrap();
        let options = CompileOptions { num_replicas: 1, num_partitions: n as u32 };
        // (mesh axis, shardings of x, w, y, the axis of x and of w that is split, the axis of y to join on)
        let cases = [
            ("data", r#"[{"data"}, {}]"#, "[{}, {}]", r#"[{"data"}, {}]"#, Some(0), None, 0),
            ("model", "[{}, {}]", r#"[{}, {"model"}]"#, r#"[{}, {"model"}]"#, None, Some(1), 1),
        ];
        for (axis, xs, ws, ys, x_split, w_split, y_axis) in cases {
            let exe = client.compile(&program(axis, n, xs, ws, ys), &options).unwrap();
            assert_eq!(exe.device_indices().len(), n);
            let shard = |a: &Array2<f32>, split: Option<usize>, d: usize| -> HostTensor {
                match split {
                    None => HostTensor::from_array(a),
                    Some(ax) => {
                        let k = a.len_of(Axis(ax)) / n;
                        HostTensor::from_array(&a.slice_axis(Axis(ax), (d * k..(d + 1) * k).into()).to_owned())
                    }
                }
            };
            let buffers: Vec<Vec<_>> = exe
                .device_indices()
                .iter()
                .enumerate()
                .map(|(d, &dev)| {
                    vec![
                        client.upload(shard(&x, x_split, d).as_ref(), dev).unwrap(),
                        client.upload(shard(&w, w_split, d).as_ref(), dev).unwrap(),
                    ]
                })
                .collect();
            let lists: Vec<Vec<_>> = buffers.iter().map(|b| b.iter().collect()).collect();
            let outs = exe.execute_partitioned(&lists).unwrap();
            let parts: Vec<_> = outs
                .iter()
                .map(|o| {
                    o[0].to_host().unwrap().to_array::<f32>().unwrap().into_dimensionality::<ndarray::Ix2>().unwrap()
                })
                .collect();
            let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
            let got = concatenate(Axis(y_axis), &views).unwrap();
            let diff = (&got - &want).mapv(f32::abs).fold(0.0f32, |m, &v| m.max(v));
            assert!(diff < 1e-5, "{axis}-parallel on {n} devices differs by {diff}");
            // Each device holds its share: the split argument shrinks with n.
            let m = exe.memory_stats().unwrap();
            let (x_bytes, w_bytes) =
                (8 * 4 * 4 / if x_split.is_some() { n } else { 1 }, 4 * 8 * 4 / if w_split.is_some() { n } else { 1 });
            assert_eq!(m.argument_bytes as usize, x_bytes + w_bytes, "{axis} on {n}: {m:?}");
            println!(
                "{axis}-parallel on {n} devices: max diff {diff:.1e}, per-device argument bytes {}",
                m.argument_bytes
            );
        }
        // A wrong number of argument lists is refused, not passed on.
        let exe = client
            .compile(&program("data", n, r#"[{"data"}, {}]"#, "[{}, {}]", r#"[{"data"}, {}]"#), &options)
            .unwrap();
        let e = exe.execute_partitioned(&[]).err().expect("no argument lists must be refused").to_string();
        assert!(e.contains(&format!("runs on {n} devices, 0 argument lists")), "{e}");
    }
}

#[test]
fn host_arrays_are_sharded_and_reassembled_on_1d_and_2d_meshes() {
    use xlac_runtime::sharding::{Mesh, Sharding};
    let Some(plugin) = cpu_plugin() else { return };
    let (x, w) = inputs();
    let want = x.dot(&w).mapv(f32::tanh).into_dyn();
    let (xt, wt) = (HostTensor::from_array(&x), HostTensor::from_array(&w));
    let s = |dims: &[Option<&str>]| -> Sharding { dims.iter().map(|d| d.map(str::to_string)).collect() };
    /// Shardy mesh axes, the mesh, Shardy shardings of x, w and y, and the same as host shardings.
    type Case = (&'static str, Mesh, &'static str, &'static str, &'static str, [Sharding; 3]);
    let cases: [Case; 3] = [
        (
            r#""data"=4"#,
            Mesh::new(&[("data", 4)]),
            r#"[{"data"}, {}]"#,
            "[{}, {}]",
            r#"[{"data"}, {}]"#,
            [s(&[Some("data"), None]), s(&[None, None]), s(&[Some("data"), None])],
        ),
        (
            r#""model"=2"#,
            Mesh::new(&[("model", 2)]),
            "[{}, {}]",
            r#"[{}, {"model"}]"#,
            r#"[{}, {"model"}]"#,
            [s(&[None, None]), s(&[None, Some("model")]), s(&[None, Some("model")])],
        ),
        (
            r#""data"=2, "model"=2"#,
            Mesh::new(&[("data", 2), ("model", 2)]),
            r#"[{"data"}, {}]"#,
            r#"[{}, {"model"}]"#,
            r#"[{"data"}, {"model"}]"#,
            [s(&[Some("data"), None]), s(&[None, Some("model")]), s(&[Some("data"), Some("model")])],
        ),
    ];
    for (axes, mesh, xs, ws, ys, [xsh, wsh, ysh]) in cases {
        let n = mesh.devices();
        let client = Client::new(&plugin, &ClientOptions { cpu_device_count: Some(n as u32) }).unwrap();
        let exe = client
            .compile(&mesh_program(axes, n, xs, ws, ys), &CompileOptions { num_replicas: 1, num_partitions: n as u32 })
            .unwrap();
        let out = exe.run_sharded(&[xt.as_ref(), wt.as_ref()], &mesh, &[xsh, wsh], &[ysh]).unwrap();
        let got = out[0].to_array::<f32>().unwrap();
        let diff = (&got - &want).mapv(f32::abs).fold(0.0f32, |m, &v| m.max(v));
        assert!(diff < 1e-5, "mesh {axes}: differs by {diff}");
    }
    // A mesh that does not match the program's devices is refused.
    let client = Client::new(&plugin, &ClientOptions { cpu_device_count: Some(2) }).unwrap();
    let exe = client
        .compile(
            &program("data", 2, r#"[{"data"}, {}]"#, "[{}, {}]", r#"[{"data"}, {}]"#),
            &CompileOptions { num_replicas: 1, num_partitions: 2 },
        )
        .unwrap();
    let none = s(&[None, None]);
    let e = exe
        .run_sharded(&[xt.as_ref(), wt.as_ref()], &Mesh::new(&[("data", 4)]), &[none.clone(), none.clone()], &[none])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("mesh spans 4 devices but the program runs on 2"), "{e}");
}
