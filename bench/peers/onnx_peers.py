"""xlac against ONNX Runtime on the same `.onnx` files, in one run, on one machine.

Models:
- resnet50: ONNX's light ResNet-50 (onnx/backend/test/data/light: the real
  architecture, its weights filled by ConstantOfShape), at batch 1 and, with
  its input and flatten made batch-8, at batch 8;
- bert-base: a random-weight BERT-base exported by torch.onnx.export
  (TorchScript exporter, opset 17, batch and sequence symbolic), sequence 128.

For each, `xlac bench MODEL.onnx --json` (f32; the model imported directly)
and ONNX Runtime (CPUExecutionProvider, ORT_ENABLE_ALL, as many threads as
cores) on the same file and inputs: median latencies of `--runs` runs, the
ratio, the largest output difference, the CPU model and flags and xlac's
plugin.

Optional dependencies (not needed by xlac or its tests):

    pip install onnx onnxruntime numpy torch transformers
    cargo build --release
    python bench/peers/onnx_peers.py [--runs 20] [--models resnet50,bert-base] [--batches 1,8]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import XLAC, cpu  # noqa: E402

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def resnet(batch, work):
    import onnx

    src = Path(onnx.__file__).parent / "backend/test/data/light/light_resnet50.onnx"
    out = work / f"resnet50-b{batch}.onnx"
    if not out.exists():
        m = onnx.load(src)
        inits = {i.name for i in m.graph.initializer}
        for v in [v for v in m.graph.input if v.name not in inits] + list(m.graph.output):
            v.type.tensor_type.shape.dim[0].dim_value = batch
        # The flatten before the classifier reshapes to [1, 2048]: copy the batch instead.
        reshape_shapes = {n.input[1] for n in m.graph.node if n.op_type == "Reshape"}
        for init in m.graph.initializer:
            if init.name in reshape_shapes:
                v = onnx.numpy_helper.to_array(init).copy()
                v[0] = 0
                init.CopyFrom(onnx.numpy_helper.from_array(v, init.name))
        onnx.save(m, out)
    name = "gpu_0/data_0"
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    return out, {name: x}


def bert(batch, work):
    import torch
    import transformers as tf

    path = work / "bert-base.onnx"
    if not path.exists():
        torch.manual_seed(0)
        config = tf.BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                               attn_implementation="eager")
        model = tf.BertModel(config, add_pooling_layer=False).eval()

        class Encoder(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.bert = model

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                                 token_type_ids=token_type_ids).last_hidden_state

        names = ["input_ids", "attention_mask", "token_type_ids"]
        ex = tuple(torch.zeros((1, 8), dtype=torch.int64) for _ in names)
        torch.onnx.export(Encoder().eval(), ex, str(path), input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes={k: {0: "batch", 1: "seq"} for k in names}, opset_version=17, dynamo=False)
    rng = np.random.default_rng(batch)
    feeds = {
        "input_ids": rng.integers(0, 30522, size=(batch, 128), dtype=np.int64),
        "attention_mask": np.ones((batch, 128), dtype=np.int64),
        "token_type_ids": np.zeros((batch, 128), dtype=np.int64),
    }
    return path, feeds


def npy_args(feeds, work, tag):
    d = work / f"inputs-{tag}"
    d.mkdir(exist_ok=True)
    args = []
    for k, v in feeds.items():
        f = d / (k.replace("/", "_") + ".npy")
        np.save(f, v)
        args.append(f"--input={k}={f}")
    return args


def xlac(model, args, runs, work, tag):
    bench = subprocess.run([str(XLAC), "bench", str(model), *args, "--runs", str(runs), "--json"],
                           check=True, capture_output=True, text=True, env=ENV)
    out = work / f"out-{tag}"
    subprocess.run([str(XLAC), "run", str(model), *args, "--out-dir", str(out)], check=True, capture_output=True, env=ENV)
    return json.loads(bench.stdout), out


def ort(model, feeds, runs):
    import onnxruntime as rt

    opts = rt.SessionOptions()
    opts.graph_optimization_level = rt.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = rt.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    out = sess.run(names, feeds)
    for _ in range(3):
        sess.run(names, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(names, feeds)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3, dict(zip(names, out)), rt.__version__


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--models", default="resnet50,bert-base")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "xlac-onnx-peers"))
    a = ap.parse_args()
    if not XLAC.exists():
        sys.exit(f"{XLAC} not found: run `cargo build --release` first")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu()}")
    print("| model | batch | xlac f32 ms | ONNX Runtime ms | xlac / ORT | largest difference |")
    print("|---|---|---|---|---|---|")
    plugin = ort_version = None
    for name in a.models.split(","):
        for batch in map(int, a.batches.split(",")):
            model, feeds = (resnet if name == "resnet50" else bert)(batch, work)
            tag = f"{name}-b{batch}"
            args = npy_args(feeds, work, tag)
            x, out_dir = xlac(model, args, a.runs, work, tag)
            plugin = x.get("plugin", plugin)
            ort_ms, ort_out, ort_version = ort(model, feeds, a.runs)
            diff = 0.0
            for k, v in ort_out.items():
                f = out_dir / f"{k.replace('/', '_')}.npy"
                if f.exists():
                    diff = max(diff, float(np.abs(np.load(f) - v).max()))
            xm = x["median_ms"]
            print(f"| {name} | {batch} | {xm:.2f} | {ort_ms:.2f} | {xm / ort_ms:.2f}x | {diff:.1e} |", flush=True)
    print(f"\nxlac plugin: {plugin}; ONNX Runtime {ort_version}; medians of {a.runs} runs")


if __name__ == "__main__":
    main()
