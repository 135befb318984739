//! The runtime against the real CPU plugin: compile, run, signature checks,
//! errors, and that every PJRT object is destroyed exactly once.

use ndarray::array;
use xlac_core::view::permuted_layout;
use xlac_runtime::{
    Client, ClientOptions, CompileOptions, DType, Error, HostTensor, Program, ShardedBuffer, TensorRef, TensorSpec,
};
use xlac_tests::{cpu_plugin, AlignedFloats};

const ADD: &str = "module @m {
  func.func public @main(%a: tensor<2x2xf32>, %b: tensor<2x2xf32>) -> (tensor<2x2xf32>) {
    %0 = stablehlo.add %a, %b : tensor<2x2xf32>
    return %0 : tensor<2x2xf32>
  }
}";

fn spec(name: &str, ty: DType, shape: &[usize]) -> TensorSpec {
    TensorSpec { name: name.into(), ty, shape: shape.to_vec() }
}

fn add_program() -> Program {
    let f = DType::F32;
    Program::new(ADD.into(), vec![spec("a", f, &[2, 2]), spec("b", f, &[2, 2])], vec![spec("out", f, &[2, 2])])
}

#[test]
fn compiles_and_runs_with_signature_checks() {
    let Some(plugin) = cpu_plugin() else { return };
    assert_eq!(plugin.api_version().0, 0);
    let client = Client::new(&plugin, &ClientOptions { cpu_device_count: Some(2) }).unwrap();
    assert_eq!(client.platform_name(), "cpu");
    assert_eq!(client.devices().len(), 2);
    let exe = client.compile(&add_program(), &CompileOptions::default()).unwrap();
    let a = HostTensor::from_array(&array![[1.0f32, 2.0], [3.0, 4.0]]);
    // On device: outputs can be awaited and fed back without a host round trip.
    let buf = client.upload(a.as_ref(), exe.device_index()).unwrap();
    let once = exe.execute(&[&buf, &buf]).unwrap();
    once[0].wait_ready().unwrap();
    let twice = exe.execute(&[&once[0], &once[0]]).unwrap();
    assert_eq!(twice[0].to_host().unwrap().to_array::<f32>().unwrap(), array![[4.0f32, 8.0], [12.0, 16.0]].into_dyn());
    let out = exe.run(&[a.as_ref(), a.as_ref()]).unwrap();
    assert_eq!(out[0].to_array::<f32>().unwrap(), array![[2.0f32, 4.0], [6.0, 8.0]].into_dyn());

    // The plugin would run these on reinterpreted bits; the runtime refuses them.
    let ints = HostTensor::from_array(&array![[1i32, 2], [3, 4]]);
    let e = exe.run(&[a.as_ref(), ints.as_ref()]).unwrap_err();
    assert!(matches!(&e, Error::Argument { index: 1, name, .. } if name == "b"), "{e}");
    assert!(e.to_string().contains("expected f32[2, 2], found i32[2, 2]"), "{e}");
    let flat = HostTensor::from_array(&array![1.0f32, 2.0, 3.0, 4.0]);
    assert!(exe.run(&[a.as_ref(), flat.as_ref()]).unwrap_err().to_string().contains("found f32[4]"));
    assert!(exe.run(&[a.as_ref()]).unwrap_err().to_string().contains("expected 2 arguments"));

    // Arguments uploaded before compiling, onto the devices the program gets
    // by default, are accepted; ones on another device are refused.
    assert_eq!((add_program().default_devices(), exe.devices()), (vec![0], &[0][..]));
    let p = add_program().partitioning_or_single();
    let on = |d: usize| ShardedBuffer::upload(&client, "a", a.as_ref(), &p.inputs[0], &p.mesh, &[d]).unwrap();
    let sum = exe.execute_sharded(&[&on(0), &on(0)]).unwrap().remove(0).to_host().unwrap();
    assert_eq!(sum.to_array::<f32>().unwrap(), array![[2.0f32, 4.0], [6.0, 8.0]].into_dyn());
    let e = exe.execute_sharded(&[&on(1), &on(0)]).err().expect("a buffer on another device").to_string();
    assert!(e.contains("held on devices [1], but the program runs on devices [0]"), "{e}");

    // A strided view (here `a` transposed, read in place) uploads dense.
    let (shape, strides) = permuted_layout(DType::F32, a.shape(), &[1, 0]).unwrap();
    let at = TensorRef::strided(DType::F32, &shape, a.data(), &strides).unwrap();
    let out = exe.run(&[a.as_ref(), at]).unwrap();
    assert_eq!(out[0].to_array::<f32>().unwrap(), array![[2.0f32, 5.0], [5.0, 8.0]].into_dyn());
}

#[test]
fn compile_errors_carry_code_and_position() {
    let Some(plugin) = cpu_plugin() else { return };
    let client = Client::new(&plugin, &ClientOptions::default()).unwrap();
    let mut bad = add_program();
    bad.mlir = bad.mlir.replace("stablehlo.add", "stablehlo.nonsense");
    let e = client.compile(&bad, &CompileOptions::default()).err().expect("bad MLIR must not compile");
    let text = e.to_string();
    assert!(matches!(e, Error::Pjrt { call: "PJRT_Client_Compile", .. }), "{text}");
    assert!(text.contains(":3:"), "the message should carry the line: {text}");
}

#[test]
fn every_dtype_round_trips_through_a_device_buffer() {
    let Some(plugin) = cpu_plugin() else { return };
    let client = Client::new(&plugin, &ClientOptions::default()).unwrap();
    for ty in DType::ALL {
        let t = HostTensor::random(ty, &[3, 5], 11).unwrap();
        let buf = client.upload(t.as_ref(), 0).unwrap();
        assert_eq!(buf.element_type().unwrap(), ty);
        assert_eq!(buf.dims().unwrap(), vec![3, 5]);
        assert_eq!(buf.to_host().unwrap(), t, "{ty}");
    }
    let scalar = HostTensor::from_array(&ndarray::arr0(half::bf16::from_f32(2.5)));
    let back = client.upload(scalar.as_ref(), 0).unwrap().to_host().unwrap();
    assert_eq!(back.to_array::<half::bf16>().unwrap().into_raw_vec_and_offset().0, vec![half::bf16::from_f32(2.5)]);
}

#[test]
fn a_serialized_executable_loads_and_runs_even_when_serialized_twice() {
    let Some(plugin) = cpu_plugin() else { return };
    let client = Client::new(&plugin, &ClientOptions::default()).unwrap();
    let exe = client.compile(&add_program(), &CompileOptions::default()).unwrap();
    let first = exe.serialize().unwrap();
    let second = exe.serialize().unwrap();
    let a = HostTensor::from_array(&array![[1.0f32, 2.0], [3.0, 4.0]]);
    for (i, bytes) in [first, second].iter().enumerate() {
        let loaded = client.load_serialized(bytes, &add_program()).unwrap();
        let out = loaded
            .run(&[a.as_ref(), a.as_ref()])
            .unwrap_or_else(|e| panic!("serialization {i} ({} bytes): {e}", bytes.len()));
        assert_eq!(out[0].to_array::<f32>().unwrap(), array![[2.0f32, 4.0], [6.0, 8.0]].into_dyn());
    }
    assert!(client.load_serialized(b"not an executable", &add_program()).is_err());
    // A loaded executable serializes to the bytes it came from: re-serializing a
    // deserialized one loses its compiled code (seen across processes).
    let bytes = exe.serialize().unwrap();
    let loaded = client.load_serialized(&bytes, &add_program()).unwrap();
    assert_eq!(loaded.serialize().unwrap(), bytes);
}

#[test]
fn cost_analysis_and_memory_stats() {
    let Some(plugin) = cpu_plugin() else { return };
    let client = Client::new(&plugin, &ClientOptions::default()).unwrap();
    let f = DType::F32;
    let program = Program::new(
        "module @mm { func.func public @main(%a: tensor<8x16xf32>, %b: tensor<16x4xf32>) -> (tensor<8x4xf32>) {
          %0 = \"stablehlo.dot_general\"(%a, %b) {dot_dimension_numbers = #stablehlo.dot<lhs_contracting_dimensions = [1], rhs_contracting_dimensions = [0]>} : (tensor<8x16xf32>, tensor<16x4xf32>) -> tensor<8x4xf32>
          return %0 : tensor<8x4xf32> } }"
            .into(),
        vec![spec("a", f, &[8, 16]), spec("b", f, &[16, 4])],
        vec![spec("out", f, &[8, 4])],
    );
    let exe = client.compile(&program, &CompileOptions::default()).unwrap();
    // Some plugins (the 0.115 CPU build) do not implement cost analysis: that is reported, not faked.
    match exe.cost_analysis() {
        Ok(costs) => {
            let flops = costs.iter().find(|(k, _)| k == "flops").map(|(_, v)| *v).unwrap();
            assert_eq!(flops, 2.0 * 8.0 * 16.0 * 4.0, "{costs:?}");
        }
        Err(xlac_runtime::Error::Pjrt { code, .. }) if code.name() == "UNIMPLEMENTED" => {
            eprintln!("this plugin does not implement cost analysis")
        }
        Err(e) => panic!("{e}"),
    }
    let m = exe.memory_stats().unwrap();
    assert_eq!(m.argument_bytes, (8 * 16 + 16 * 4) * 4, "{m:?}");
    assert_eq!(m.output_bytes, 8 * 4 * 4, "{m:?}");
}

/// `p' = p − g` with `p` donated to the result: XLA updates it in place.
const UPDATE: &str = "module @m {
  func.func public @main(%p: tensor<4xf32> {tf.aliasing_output = 0 : i32}, %g: tensor<4xf32>) -> (tensor<4xf32>) {
    %0 = stablehlo.subtract %p, %g : tensor<4xf32>
    return %0 : tensor<4xf32>
  }
}";

/// [`UPDATE`] compiled, `p` donated to the result.
fn compile_update(client: &Client) -> xlac_runtime::Executable {
    let f = DType::F32;
    let mut program =
        Program::new(UPDATE.into(), vec![spec("p", f, &[4]), spec("g", f, &[4])], vec![spec("p", f, &[4])]);
    program.donations = vec![(0, 0)];
    client.compile(&program, &CompileOptions::default()).unwrap()
}

#[test]
fn donated_arguments_are_given_and_updated_in_place() {
    use xlac_runtime::Arg;
    let Some(plugin) = cpu_plugin() else { return };
    let client = Client::new(&plugin, &ClientOptions::default()).unwrap();
    let exe = compile_update(&client);
    assert_eq!(exe.memory_stats().unwrap().alias_bytes, 16, "the update reuses p's buffer");
    let up = |t: &HostTensor, i: usize| exe.upload_argument(i, t.as_ref()).unwrap();
    let (p, g) = (
        HostTensor::from_array(&array![1.0f32, 2.0, 3.0, 4.0]),
        HostTensor::from_array(&array![0.5f32, 0.5, 0.5, 0.5]),
    );
    let grad = up(&g, 1);
    let mut param = up(&p, 0);
    // Lending a donated argument, or giving a lent one, is refused before anything runs.
    let e = exe.execute_sharded(&[&param, &grad]).err().expect("p is donated").to_string();
    assert!(e.contains("`p`") && e.contains("pass it by value"), "{e}");
    let e = exe.execute_donating(vec![Arg::Lend(&param), Arg::Lend(&grad)]).err().expect("p is given").to_string();
    assert!(e.contains("donates it: give it"), "{e}");
    for _ in 0..3 {
        param = exe.execute_donating(vec![Arg::Give(param), Arg::Lend(&grad)]).unwrap().remove(0);
    }
    assert_eq!(param.to_host().unwrap().to_f64_vec(), vec![-0.5, 0.5, 1.5, 2.5]);
    // Host tensors are uploaded afresh: donating them costs the caller nothing.
    assert_eq!(exe.run(&[p.as_ref(), g.as_ref()]).unwrap()[0].to_f64_vec(), vec![0.5, 1.5, 2.5, 3.5]);
}

/// Host memory lent in place: the buffer keeps its owner alive, reads the
/// bytes where they are, and is never donated.
#[test]
fn host_memory_is_lent_in_place_and_never_donated() {
    use xlac_runtime::Arg;
    let Some(plugin) = cpu_plugin() else { return };
    let client = Client::new(&plugin, &ClientOptions::default()).unwrap();
    let exe = compile_update(&client);
    let (p, g) = (AlignedFloats::new(&[1.0, 2.0, 3.0, 4.0]), AlignedFloats::new(&[0.5; 4]));
    let lent_g = exe.upload_argument_in_place(1, g.tensor(), g.clone()).unwrap();
    assert!(lent_g.shards()[0].reads_host_memory(), "g is read in place");
    // The donated argument is copied, so the program may write its result there.
    let copied_p = exe.upload_argument_in_place(0, p.tensor(), p.clone()).unwrap();
    assert!(!copied_p.shards()[0].reads_host_memory());
    drop(g);
    let out = exe.execute_donating(vec![Arg::Give(copied_p), Arg::Lend(&lent_g)]).unwrap().remove(0);
    assert_eq!(out.to_host().unwrap().to_f64_vec(), vec![0.5, 1.5, 2.5, 3.5]);
    assert_eq!(p.values(), vec![1.0f32, 2.0, 3.0, 4.0], "the host memory is untouched");
    // A buffer reading host memory is refused where the program would write into it.
    let lent_p = client.upload_in_place(p.tensor(), 0, p.clone()).unwrap();
    assert!(lent_p.reads_host_memory());
    let e = exe.execute(&[&lent_p, &lent_g.shards()[0]]).err().expect("p is donated").to_string();
    assert!(e.contains("`p`") && e.contains("reads host memory in place"), "{e}");
    assert_eq!(p.values(), vec![1.0f32, 2.0, 3.0, 4.0]);
    // Memory the plugin cannot read in place (unaligned here) is copied.
    let unaligned = TensorRef { shape: &[3], data: &p.tensor().data[4..], ..p.tensor() };
    let copied = client.upload_in_place(unaligned, 0, p.clone()).unwrap();
    assert!(!copied.reads_host_memory());
    assert_eq!(copied.to_host().unwrap().to_f64_vec(), vec![2.0, 3.0, 4.0]);
}

#[test]
fn a_program_compiled_for_a_device_runs_there_and_buffers_move_device_to_device() {
    let Some(plugin) = cpu_plugin() else { return };
    let client = Client::new(&plugin, &ClientOptions { cpu_device_count: Some(3) }).unwrap();
    let on_two = Program { devices: Some(vec![2]), ..add_program() };
    assert_eq!(on_two.default_devices(), [2]);
    let exe = client.compile(&on_two, &on_two.compile_options()).unwrap();
    assert_eq!(exe.devices(), [2], "compiled for device 2");
    let a = HostTensor::from_array(&array![[1.0f32, 2.0], [3.0, 4.0]]);
    let on_zero = client.upload(a.as_ref(), 0).unwrap();
    // Moved from device 0 to device 2 by the plugin, run there, and moved on to device 1.
    let moved = on_zero.copy_to_device(2).unwrap();
    let sum = exe.execute(&[&moved, &moved]).unwrap().remove(0);
    let back = sum.copy_to_device(1).unwrap();
    assert_eq!(back.to_host().unwrap().to_array::<f32>().unwrap(), array![[2.0f32, 4.0], [6.0, 8.0]].into_dyn());
    let e = on_zero.copy_to_device(3).err().unwrap().to_string();
    assert!(e.contains("device 3 does not exist (3 devices)"), "{e}");
    let nowhere = Program { devices: Some(vec![5]), ..add_program() };
    let e = client.compile(&nowhere, &nowhere.compile_options()).err().unwrap().to_string();
    assert!(e.contains("device 5 does not exist"), "{e}");
}

/// `x[32, 256]` times four int8 `[256, 256]` matrices widened, one after the
/// other: XLA's default CPU scheduler widens all four at the start (they
/// depend on arguments alone), the memory-minimising one each where it is
/// read. So the compile options' XLA flag reaches XLA: fewer temporaries on
/// the official plugin (PJRT API 0.81: 1 MiB against 320 KiB); the 0.115
/// build compiles with it but schedules both alike (1 MiB, measured).
#[test]
fn xla_flags_reach_the_compiler() {
    let Some(plugin) = cpu_plugin() else { return };
    let client = Client::new(&plugin, &ClientOptions::default()).unwrap();
    let mut lines = Vec::new();
    let mut x = "%x".to_string();
    for i in 0..4 {
        lines.push(format!("%w{i} = stablehlo.convert %q{i} : (tensor<256x256xi8>) -> tensor<256x256xf32>"));
        lines.push(format!(
            "%y{i} = \"stablehlo.dot_general\"({x}, %w{i}) {{dot_dimension_numbers = #stablehlo.dot<lhs_contracting_dimensions = [1], rhs_contracting_dimensions = [1]>}} : (tensor<32x256xf32>, tensor<256x256xf32>) -> tensor<32x256xf32>"
        ));
        x = format!("%y{i}");
    }
    let args: Vec<String> = (0..4).map(|i| format!("%q{i}: tensor<256x256xi8>")).collect();
    let mlir = format!(
        "module @chain {{ func.func public @main(%x: tensor<32x256xf32>, {}) -> (tensor<32x256xf32>) {{\n{}\nreturn {x} : tensor<32x256xf32> }} }}",
        args.join(", "),
        lines.join("\n")
    );
    let mut inputs = vec![spec("x", DType::F32, &[32, 256])];
    inputs.extend((0..4).map(|i| spec(&format!("q{i}"), DType::I8, &[256, 256])));
    let program = Program::new(mlir, inputs, vec![spec("y", DType::F32, &[32, 256])]);
    let temps = |memory_minimising: bool| {
        let mut options = CompileOptions::default();
        if memory_minimising {
            options.xla_flags.insert("xla_cpu_enable_concurrency_optimized_scheduler".into(), false);
        }
        client.compile(&program, &options).unwrap().memory_stats().unwrap().temp_bytes
    };
    let (default, minimising) = (temps(false), temps(true));
    eprintln!("temporaries: default scheduler {default} bytes, memory-minimising {minimising}");
    assert!(minimising <= default, "default {default}, memory-minimising {minimising}");
    if plugin.api_version() == (0, 81) {
        assert!(minimising < default, "default {default}, memory-minimising {minimising}");
    }
}

/// A product by a broadcast constant whose result is reduced: the 0.115
/// build's XLA fuses the two into one YNNPACK fusion whose sums are wrong
/// (here a quarter of the right one: only the first of the four terms;
/// ONNX's light SqueezeNet gave NaN from it), unless xlac's workaround for
/// that build turns those fusions off (`xlac_runtime::workarounds`). Every
/// plugin must give the sum.
#[test]
fn a_product_by_a_broadcast_constant_then_reduced_is_right() {
    let Some(plugin) = cpu_plugin() else { return };
    let client = Client::new(&plugin, &ClientOptions::default()).unwrap();
    let mlir = "module @m {
  func.func public @main(%x: tensor<169x4xf32>) -> (tensor<64xf32>) {
    %c = stablehlo.constant dense<0.5> : tensor<f32>
    %w = stablehlo.broadcast_in_dim %c, dims = [] : (tensor<f32>) -> tensor<4x64xf32>
    %y = \"stablehlo.dot_general\"(%x, %w) {dot_dimension_numbers = #stablehlo.dot<lhs_contracting_dimensions = [1], rhs_contracting_dimensions = [0]>} : (tensor<169x4xf32>, tensor<4x64xf32>) -> tensor<169x64xf32>
    %zero = stablehlo.constant dense<0.0> : tensor<f32>
    %s = \"stablehlo.reduce\"(%y, %zero) ({
    ^bb0(%a: tensor<f32>, %b: tensor<f32>):
      %t = stablehlo.add %a, %b : tensor<f32>
      stablehlo.return %t : tensor<f32>
    }) {dimensions = array<i64: 0>} : (tensor<169x64xf32>, tensor<f32>) -> tensor<64xf32>
    return %s : tensor<64xf32>
  }
}";
    let program = Program::new(mlir.into(), vec![spec("x", DType::F32, &[169, 4])], vec![spec("s", DType::F32, &[64])]);
    let exe = client.compile(&program, &CompileOptions::default()).unwrap();
    // Small integers and halves: every partial sum is exact in f32.
    let x: Vec<f32> = (0..169 * 4).map(|i| (i % 7) as f32).collect();
    let expected = x.iter().sum::<f32>() * 0.5;
    let x = HostTensor::from_array(&ndarray::Array2::from_shape_vec((169, 4), x).unwrap());
    let out = exe.run(&[x.as_ref()]).unwrap()[0].to_array::<f32>().unwrap();
    let wrong: Vec<(usize, f32)> = out.iter().copied().enumerate().filter(|&(_, v)| v != expected).collect();
    assert!(wrong.is_empty(), "expected {expected} in all 64, found {wrong:?} (plugin API {:?})", plugin.api_version());
}

/// A driver session on `plugin`, without the compilation cache.
fn driver_session(plugin: &xlac_runtime::Plugin) -> xlac_driver::Session {
    let cache = xlac_runtime::CacheConfig::disabled();
    xlac_driver::Session::new(xlac_runtime::Platform::Cpu, Some(plugin.path()), &ClientOptions::default(), &cache)
        .unwrap()
}

/// Products summed over their rows, from model.json through the driver: by
/// a broadcast of an input scalar and of a constant (the lowering says they
/// read broadcasts, so the 0.115 build keeps its workaround for them: without
/// it they summed unwritten memory) and by a matrix given as an input (it
/// reads none, so it goes without); on every plugin XLA's sums equal the
/// interpreter's.
#[test]
fn products_reading_broadcasts_are_compiled_with_their_workaround() {
    use std::collections::BTreeMap;
    let Some(plugin) = cpu_plugin() else { return };
    let session = driver_session(&plugin);
    let broadcast = |of: &str| serde_json::json!({"op": "broadcast_to", "inputs": [of], "outputs": ["w"], "attrs": {"shape": [4, 64]}});
    let half =
        serde_json::json!({"op": "constant", "outputs": ["c"], "attrs": {"dtype": "f32", "shape": [], "value": 0.5}});
    let cases = [
        ("of an input", vec![broadcast("s")], vec![("s", vec![])], true),
        ("of a constant", vec![half, broadcast("c")], vec![], true),
        ("given", vec![], vec![("w", vec![4, 64])], false),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (case, weight, extra, reads) in cases {
        let mut inputs = vec![serde_json::json!({"name": "x", "dtype": "f32", "shape": [169, 4]})];
        inputs.extend(extra.iter().map(|(n, shape)| serde_json::json!({"name": n, "dtype": "f32", "shape": shape})));
        let mut nodes = weight;
        nodes.push(serde_json::json!({"op": "matmul", "inputs": ["x", "w"], "outputs": ["y"]}));
        nodes.push(serde_json::json!({"op": "reduce_sum", "inputs": ["y"], "outputs": ["r"], "attrs": {"axes": [0]}}));
        let doc = serde_json::json!({"format_version": 1, "name": "m", "inputs": inputs, "parameters": [], "nodes": nodes, "outputs": ["r"]});
        let path = dir.path().join("model.json");
        std::fs::write(&path, doc.to_string()).unwrap();
        let model = xlac_driver::compile_model(&path, &xlac_driver::Options::default(), &BTreeMap::new()).unwrap();
        assert_eq!(model.lowered.products_read_broadcasts, reads, "{case}: {}", model.lowered.text);
        let want = xlac_driver::eval_model(&model, &BTreeMap::new(), 5).unwrap();
        let got = session.run(&model, &BTreeMap::new(), 5).unwrap();
        xlac_tests::compare(case, &got[0].1, &want[0].1, 1e-5, 1e-5).unwrap();
    }
}

/// Softmax and log-softmax of rows whose logits are far from 0: equal ones
/// of 1e10 (a uniform row), ones apart by hundreds at 3e9 (one-hot), `-inf`
/// beside finite ones, and the lowest finite f32 (a mask): on every plugin
/// within 1e-6 of the interpreter. Then the softmax of the same rows each
/// the mean of 169 copies, as ONNX's SqueezeNet pools its logits (XLA
/// contracted the mean's multiply into the subtraction of the maximum, so a
/// row's copies fell below it by thousands and the softmax was 0/0 before
/// the lowering's guards; whether it does depends on the machine): a
/// distribution, finite and summing to 1.
#[test]
fn softmax_of_extreme_logits_is_right() {
    use std::collections::BTreeMap;
    let Some(plugin) = cpu_plugin() else { return };
    let session = driver_session(&plugin);
    let lowest = f32::MIN;
    let rows: [[f32; 4]; 4] = [
        [1e10; 4],
        [3e9, 3e9 + 512.0, 3e9, 3e9 - 1024.0],
        [f32::NEG_INFINITY, 0.0, 1.0, 2.0],
        [lowest, lowest, 0.5, lowest],
    ];
    let x: Vec<f32> = rows.iter().flatten().copied().collect();
    let pooled: Vec<f32> = x.iter().flat_map(|&v| std::iter::repeat_n(v, 169)).collect();
    let node = |op: &str, input: &str| serde_json::json!({"op": op, "inputs": [input], "outputs": [format!("{op}.{input}")], "attrs": {"axis": 1}});
    let doc = serde_json::json!({
        "format_version": 1, "name": "m",
        "inputs": [{"name": "x", "dtype": "f32", "shape": [4, 4]}, {"name": "y", "dtype": "f32", "shape": [4, 4, 169]}],
        "parameters": [],
        "nodes": [
            {"op": "reduce_mean", "inputs": ["y"], "outputs": ["pooled"], "attrs": {"axes": [2]}},
            node("softmax", "x"), node("log_softmax", "x"), node("softmax", "pooled"),
        ],
        "outputs": ["softmax.x", "log_softmax.x", "softmax.pooled"],
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    let model = xlac_driver::compile_model(&path, &xlac_driver::Options::default(), &BTreeMap::new()).unwrap();
    let given = BTreeMap::from([
        ("x".to_string(), HostTensor::from_array(&ndarray::Array2::from_shape_vec((4, 4), x).unwrap())),
        ("y".to_string(), HostTensor::from_array(&ndarray::Array3::from_shape_vec((4, 4, 169), pooled).unwrap())),
    ]);
    let want = xlac_driver::eval_model(&model, &given, 0).unwrap();
    let got = session.run(&model, &given, 0).unwrap();
    let api = plugin.api_version();
    for ((name, want), (_, got)) in want.iter().zip(&got).take(2) {
        let (want, got) = (want.to_array::<f32>().unwrap(), got.to_array::<f32>().unwrap());
        for (i, (w, g)) in want.iter().zip(got.iter()).enumerate() {
            let right = if w.is_finite() { (w - g).abs() <= 1e-6 } else { w == g };
            assert!(right, "{name}[{i}]: XLA {g}, the interpreter {w} (plugin API {api:?})");
        }
    }
    let pooled = got[2].1.to_array::<f32>().unwrap();
    for (i, row) in pooled.rows().into_iter().enumerate() {
        let finite = row.iter().all(|p| p.is_finite() && *p >= 0.0);
        assert!(finite && (row.sum() - 1.0).abs() <= 1e-6, "softmax.pooled row {i}: {row} (plugin API {api:?})");
    }
}

/// The calibration's attention probe is xlac's own lowering of attention:
/// its program's body, line for line, is the body the compiler gives a
/// model of one `scaled_dot_product_attention` at the probe's shapes (its
/// query scaled by the `scale-query` pass before it), at batch 1 and 8.
#[test]
fn the_calibrations_attention_probe_is_the_compilers_lowering() {
    use std::collections::BTreeMap;
    let dir = tempfile::tempdir().unwrap();
    for batch in [1, 8] {
        let input = |n: &str| serde_json::json!({"name": n, "dtype": "f32", "shape": [batch, 12, 128, 64]});
        let doc = serde_json::json!({
            "format_version": 1, "name": "m",
            "inputs": [input("q"), input("k"), input("v")], "parameters": [],
            "nodes": [{"op": "scaled_dot_product_attention", "inputs": ["q", "k", "v"], "outputs": ["a"], "attrs": {"causal": false}}],
            "outputs": ["a"],
        });
        let path = dir.path().join("model.json");
        std::fs::write(&path, doc.to_string()).unwrap();
        let model = xlac_driver::compile_model(&path, &xlac_driver::Options::default(), &BTreeMap::new()).unwrap();
        // The lines after a function's opening line up to its `return`.
        let body = |text: &str, opening: &str| -> Vec<String> {
            let start =
                text.lines().position(|l| l.contains(opening)).unwrap_or_else(|| panic!("no {opening} in {text}"));
            let lines = text.lines().skip(start + 1).map(str::trim);
            let mut body: Vec<String> = lines.take_while(|l| !l.starts_with("return")).map(String::from).collect();
            body.retain(|l| !l.is_empty());
            body
        };
        let compiled = body(&model.lowered.text, "func.func private @xlac.scaled_dot_product_attention");
        let probe = body(&xlac_runtime::calibration::attention_probe_program(batch), "func.func public @main");
        assert_eq!(probe, compiled, "batch {batch}: the probe drifted from the lowering:\n{}", model.lowered.text);
    }
}

/// `y = x·w` with `w` a parameter, and `w + 1`, by `x` of 128×384 and `w`
/// of 384×384 (a product XNNPACK takes on the 0.81 build); `w` donated to
/// `w + 1` when `donated`.
fn product_and_next_weights(donated: bool) -> Program {
    let alias = if donated { " {tf.aliasing_output = 1 : i32}" } else { "" };
    let mlir = format!(
        "module @m {{
  func.func public @main(%x: tensor<128x384xf32>, %w: tensor<384x384xf32>{alias}) -> (tensor<128x384xf32>, tensor<384x384xf32>) {{
    %y = \"stablehlo.dot_general\"(%x, %w) {{dot_dimension_numbers = #stablehlo.dot<lhs_contracting_dimensions = [1], rhs_contracting_dimensions = [0]>}} : (tensor<128x384xf32>, tensor<384x384xf32>) -> tensor<128x384xf32>
    %one = stablehlo.constant dense<1.0> : tensor<384x384xf32>
    %next = stablehlo.add %w, %one : tensor<384x384xf32>
    return %y, %next : tensor<128x384xf32>, tensor<384x384xf32>
  }}
}}"
    );
    let f = DType::F32;
    let mut program = Program::new(
        mlir,
        vec![spec("x", f, &[128, 384]), spec("w", f, &[384, 384])],
        vec![spec("y", f, &[128, 384]), spec("w", f, &[384, 384])],
    );
    if donated {
        program.donations = vec![(1, 1)];
    }
    program
}

/// Each run multiplies by the weights it is given: new values uploaded into
/// memory an earlier run's weights held, or updated in place by the program
/// (the 0.81 build's XNNPACK kept the first run's; `xlac_runtime::workarounds`
/// turns XNNPACK off there). Multiples of 1/128 summed 384 at a time: every
/// product is exact in f32, in any order.
#[test]
fn a_product_reads_the_weights_it_is_given_run_after_run() {
    use xlac_runtime::Arg;
    let Some(plugin) = cpu_plugin() else { return };
    let client = Client::new(&plugin, &ClientOptions::default()).unwrap();
    let x = ndarray::Array2::from_shape_fn((128, 384), |(i, k)| ((i * 384 + k) % 13) as f32 / 8.0 - 0.75);
    let w0 = ndarray::Array2::from_shape_fn((384, 384), |(k, j)| ((k * 384 + j) % 11) as f32 / 16.0 - 0.3125);
    let check = |what: &str, run: usize, y: &HostTensor, w: &ndarray::Array2<f32>| {
        let got = y.to_array::<f32>().unwrap().into_dimensionality::<ndarray::Ix2>().unwrap();
        let want = x.dot(w);
        let wrong = got.iter().zip(&want).filter(|(g, w)| g != w).count();
        assert_eq!(wrong, 0, "{what}, run {run}: {wrong} products differ (plugin API {:?})", plugin.api_version());
    };
    let xt = HostTensor::from_array(&x);
    let in_place = client.compile(&product_and_next_weights(true), &CompileOptions::default()).unwrap();
    let xb = in_place.upload_argument(0, xt.as_ref()).unwrap();
    let mut wb = in_place.upload_argument(1, HostTensor::from_array(&w0).as_ref()).unwrap();
    for run in 0..3 {
        let mut out = in_place.execute_donating(vec![Arg::Lend(&xb), Arg::Give(wb)]).unwrap();
        wb = out.remove(1);
        check("weights updated in place", run, &out[0].to_host().unwrap(), &w0.mapv(|v| v + run as f32));
    }
    let fresh = client.compile(&product_and_next_weights(false), &CompileOptions::default()).unwrap();
    for run in 0..6 {
        let w = w0.mapv(|v| v + run as f32);
        let y = fresh.run(&[xt.as_ref(), HostTensor::from_array(&w).as_ref()]).unwrap().remove(0);
        check("weights uploaded afresh", run, &y, &w);
    }
}
