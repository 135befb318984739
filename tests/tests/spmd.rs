//! SPMD execution on several CPU devices, at the runtime level: a program
//! annotated with Shardy shardings, compiled with one partition per mesh
//! device, runs on host tensors split by the shardings and reassembled, or on
//! sharded device buffers that stay on the devices between calls.

use ndarray::Array2;
use xlac_runtime::sharding::{Mesh, Partitioning, Sharding};
use xlac_runtime::{Client, ClientOptions, DType, HostTensor, Program, TensorSpec};
use xlac_tests::cpu_plugin;

fn spec(name: &str) -> TensorSpec {
    TensorSpec { name: name.into(), ty: DType::F32, shape: vec![8, 8] }
}

fn s(dims: &[Option<&str>]) -> Sharding {
    Sharding(dims.iter().map(|d| d.map(str::to_string)).collect())
}

/// Shardy's form of a sharding: `[{"data"}, {}]`.
fn sdy(sh: &Sharding) -> String {
    let dims: Vec<String> = sh.0.iter().map(|a| a.as_ref().map_or("{}".into(), |a| format!("{{\"{a}\"}}"))).collect();
    format!("[{}]", dims.join(", "))
}

/// tanh(x·w) for x, w f32[8,8] on `mesh`, with the shardings of x, w and the result.
fn program(mesh: &Mesh, [x, w, y]: [Sharding; 3]) -> Program {
    let axes: Vec<String> = mesh.axes().iter().map(|(n, s)| format!("\"{n}\"={s}")).collect();
    let mlir = format!(
        r#"module @spmd attributes {{mhlo.num_partitions = {n} : i32, mhlo.num_replicas = 1 : i32}} {{
  sdy.mesh @mesh = <[{axes}]>
  func.func public @main(%x: tensor<8x8xf32> {{sdy.sharding = #sdy.sharding<@mesh, {xs}>}}, %w: tensor<8x8xf32> {{sdy.sharding = #sdy.sharding<@mesh, {ws}>}}) -> (tensor<8x8xf32> {{sdy.sharding = #sdy.sharding<@mesh, {ys}>}}) {{
    %0 = "stablehlo.dot_general"(%x, %w) {{dot_dimension_numbers = #stablehlo.dot<lhs_contracting_dimensions = [1], rhs_contracting_dimensions = [0]>}} : (tensor<8x8xf32>, tensor<8x8xf32>) -> tensor<8x8xf32>
    %1 = stablehlo.tanh %0 : tensor<8x8xf32>
    return %1 : tensor<8x8xf32>
  }}
}}"#,
        n = mesh.devices(),
        axes = axes.join(", "),
        xs = sdy(&x),
        ws = sdy(&w),
        ys = sdy(&y),
    );
    let partitioning = Some(Partitioning { mesh: mesh.clone(), inputs: vec![x, w], outputs: vec![y] });
    Program { partitioning, ..Program::new(mlir, vec![spec("x"), spec("w")], vec![spec("y")]) }
}

fn inputs() -> (Array2<f32>, Array2<f32>) {
    let x = Array2::from_shape_fn((8, 8), |(i, j)| ((i * 8 + j) as f32 * 0.37).sin());
    let w = Array2::from_shape_fn((8, 8), |(i, j)| ((i * 8 + j) as f32 * 0.11).cos() * 0.5);
    (x, w)
}

fn max_diff(a: &HostTensor, b: &Array2<f32>) -> f32 {
    let a = a.to_array::<f32>().unwrap().into_dimensionality::<ndarray::Ix2>().unwrap();
    (&a - b).mapv(f32::abs).fold(0.0, |m, &v| m.max(v))
}

#[test]
fn data_tensor_and_2d_parallel_runs_equal_one_device() {
    let Some(plugin) = cpu_plugin() else { return };
    let (x, w) = inputs();
    let want = x.dot(&w).mapv(f32::tanh);
    let (xt, wt) = (HostTensor::from_array(&x), HostTensor::from_array(&w));
    let (d, m, none) = (Some("data"), Some("model"), None);
    // (mesh, shardings of x, w, y, per-device bytes of x and w)
    let cases = [
        (Mesh::parse("data=2").unwrap(), [s(&[d, none]), s(&[none, none]), s(&[d, none])], 128 + 256),
        (Mesh::parse("data=4").unwrap(), [s(&[d, none]), s(&[none, none]), s(&[d, none])], 64 + 256),
        (Mesh::parse("model=2").unwrap(), [s(&[none, none]), s(&[none, m]), s(&[none, m])], 256 + 128),
        (Mesh::parse("model=4").unwrap(), [s(&[none, none]), s(&[none, m]), s(&[none, m])], 256 + 64),
        (Mesh::parse("data=2,model=2").unwrap(), [s(&[d, none]), s(&[none, m]), s(&[d, m])], 128 + 128),
    ];
    for (mesh, shardings, bytes) in cases {
        let n = mesh.devices();
        let client = Client::new(&plugin, &ClientOptions { cpu_device_count: Some(n as u32) }).unwrap();
        let program = program(&mesh, shardings.clone());
        let exe = client.compile(&program, &program.compile_options()).unwrap();
        assert_eq!(exe.devices().len() as u64, n);
        let got = exe.run(&[xt.as_ref(), wt.as_ref()]).unwrap();
        let diff = max_diff(&got[0], &want);
        assert!(diff < 1e-5, "mesh {}: differs by {diff}", mesh);
        // Each device holds its share: the split arguments shrink with the mesh.
        let stats = exe.memory_stats().unwrap();
        assert_eq!(stats.argument_bytes, bytes, "mesh {}: {stats:?}", mesh);
        // The device shards have the partition's shapes.
        let x_on = exe.upload_argument(0, xt.as_ref()).unwrap();
        let rows = if shardings[0].0[0].is_some() { 8 / mesh.axes()[0].1 as usize } else { 8 };
        for b in x_on.shards() {
            assert_eq!(b.dims().unwrap(), vec![rows, 8]);
        }
        println!("mesh {}: max diff {diff:.1e}, per-device argument bytes {}", mesh, stats.argument_bytes);
    }
}

#[test]
fn sharded_outputs_feed_the_next_call_on_device() {
    let Some(plugin) = cpu_plugin() else { return };
    let (x, w) = inputs();
    let mesh = Mesh::parse("data=2").unwrap();
    let client = Client::new(&plugin, &ClientOptions { cpu_device_count: Some(2) }).unwrap();
    let rows = s(&[Some("data"), None]);
    let dp = program(&mesh, [rows.clone(), s(&[None, None]), rows.clone()]);
    let exe = client.compile(&dp, &dp.compile_options()).unwrap();
    let xb = exe.upload_argument(0, HostTensor::from_array(&x).as_ref()).unwrap();
    let wb = exe.upload_argument(1, HostTensor::from_array(&w).as_ref()).unwrap();
    // y1 = tanh(x·w) stays split over the devices and is the next call's x.
    let y1 = exe.execute_sharded(&[&xb, &wb]).unwrap().remove(0);
    assert_eq!((y1.sharding(), y1.shards().len()), (&rows, 2));
    let y2 = exe.execute_sharded(&[&y1, &wb]).unwrap().remove(0).to_host().unwrap();
    let want = x.dot(&w).mapv(f32::tanh).dot(&w).mapv(f32::tanh);
    assert!(max_diff(&y2, &want) < 1e-5);

    // A tensor split another way than the program expects is refused, naming the argument.
    let by_columns = s(&[None, Some("model")]);
    let tensor_mesh = Mesh::parse("model=2").unwrap();
    let tp = program(&tensor_mesh, [s(&[None, None]), by_columns.clone(), by_columns]);
    let tensor_exe = client.compile(&tp, &tp.compile_options()).unwrap();
    let y = tensor_exe
        .execute_sharded(&[
            &tensor_exe.upload_argument(0, HostTensor::from_array(&x).as_ref()).unwrap(),
            &tensor_exe.upload_argument(1, HostTensor::from_array(&w).as_ref()).unwrap(),
        ])
        .unwrap()
        .remove(0);
    let e = exe.execute_sharded(&[&y, &wb]).err().expect("a mis-split argument must be refused").to_string();
    assert!(e.contains("`x`") && e.contains("but the program expects"), "{e}");
}

#[test]
fn a_mesh_larger_than_the_devices_is_refused() {
    let Some(plugin) = cpu_plugin() else { return };
    let client = Client::new(&plugin, &ClientOptions { cpu_device_count: Some(2) }).unwrap();
    let mesh = Mesh::parse("data=4").unwrap();
    let rows = s(&[Some("data"), None]);
    let program = program(&mesh, [rows.clone(), s(&[None, None]), rows]);
    let e = client.compile(&program, &program.compile_options()).err().expect("4 partitions on 2 devices").to_string();
    assert!(e.contains("runs on 4 devices") && e.contains("the client has 2") && e.contains("--cpu-devices"), "{e}");
}

#[test]
fn a_split_program_placed_on_other_devices_runs_there_and_its_shards_move_on() {
    let Some(plugin) = cpu_plugin() else { return };
    let (x, w) = inputs();
    let want = x.dot(&w).mapv(f32::tanh);
    let mesh = Mesh::parse("data=2").unwrap();
    let client = Client::new(&plugin, &ClientOptions { cpu_device_count: Some(4) }).unwrap();
    let rows = s(&[Some("data"), None]);
    let shardings = [rows.clone(), s(&[None, None]), rows.clone()];
    // The same program on devices 0-1 and, placed, on devices 2-3 (a pipeline's second stage).
    let first = program(&mesh, shardings.clone());
    let second = Program { devices: Some(vec![2, 3]), ..program(&mesh, shardings) };
    assert_eq!(second.default_devices(), [2, 3]);
    let (a, b) = (
        client.compile(&first, &first.compile_options()).unwrap(),
        client.compile(&second, &second.compile_options()).unwrap(),
    );
    assert_eq!((a.devices(), b.devices()), (&[0, 1][..], &[2, 3][..]));
    let xb = a.upload_argument(0, HostTensor::from_array(&x).as_ref()).unwrap();
    let wa = a.upload_argument(1, HostTensor::from_array(&w).as_ref()).unwrap();
    let y = a.execute_sharded(&[&xb, &wa]).unwrap().remove(0);
    // Shard d of the first stage's result goes to device 2 + d, split as the second takes it.
    let moved = y.copy_to(b.devices()).unwrap();
    let wb = b.upload_argument(1, HostTensor::from_array(&w).as_ref()).unwrap();
    let z = b.execute_sharded(&[&moved, &wb]).unwrap().remove(0);
    let twice = want.dot(&w).mapv(f32::tanh);
    assert!(max_diff(&z.to_host().unwrap(), &twice) < 1e-5);
    let misplaced = Program { devices: Some(vec![2]), ..second.clone() };
    let e = client.compile(&misplaced, &misplaced.compile_options()).err().unwrap().to_string();
    assert!(e.contains("runs on 2 devices but is placed on 1"), "{e}");
}

/// Two executions at once of an SPMD program with an all-reduce (the
/// contraction split over the devices), from two threads with different
/// inputs on one client, each get their own sums (the test binaries share
/// one multi-device session between cases on two threads).
#[test]
fn concurrent_executions_keep_their_collectives_apart() {
    let Some(plugin) = cpu_plugin() else { return };
    let mesh = Mesh::parse("model=4").unwrap();
    let client = Client::new(&plugin, &ClientOptions { cpu_device_count: Some(4) }).unwrap();
    let m = Some("model");
    let p = program(&mesh, [s(&[None, m]), s(&[m, None]), s(&[None, None])]);
    let exe = client.compile(&p, &p.compile_options()).unwrap();
    let (x, w) = inputs();
    std::thread::scope(|scope| {
        for k in [1.0f32, -3.0] {
            let (exe, x, w) = (&exe, &x, &w);
            scope.spawn(move || {
                let xk = x.mapv(|v| v * k);
                let want = xk.dot(w).mapv(f32::tanh);
                let (xt, wt) = (HostTensor::from_array(&xk), HostTensor::from_array(w));
                for run in 0..300 {
                    let got = exe.run(&[xt.as_ref(), wt.as_ref()]).unwrap();
                    let diff = max_diff(&got[0], &want);
                    assert!(diff < 1e-5, "inputs times {k}, run {run}: differs by {diff}");
                }
            });
        }
    });
}
