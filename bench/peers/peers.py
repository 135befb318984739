"""xlac against its peers on the same model, inputs and machine, in one session.

For each model shape (BERT-base and MiniLM-L6, random weights) at batch 1 and
8, sequence 128, it runs the BERT encoder (last_hidden_state):

- xlac: `xlac bench CHECKPOINT --json`, f32 and --precision mixed-bf16, on
  every CPU plugin installed (`xlac devices --all`);
- JAX: the same encoder written with jax.numpy over the same weights, jax.jit
  (XLA's CPU backend, as xlac), timed with block_until_ready;
- ONNX Runtime: transformers' BertModel exported with torch.onnx.export,
  CPUExecutionProvider with all graph optimisations;
- PyTorch: transformers' BertModel in eager mode, f32 and bf16 autocast;

and prints median latencies, the ratios, mixed-bf16's cosine distance from
f32, and the fresh-process time to first result (`xlac run`, cold and warm
cache; JAX in a fresh interpreter; the warm and JAX times are medians of
FRESH_RUNS processes: one process's time varies by tens of milliseconds).

The machine's limit: it measures, in the same run, the f32 and bf16 rate of
one 2048x2048x2048 matrix product (the best of NumPy, JAX and PyTorch), and
prints each engine as a fraction of the floor: the encoder's matrix-product
work (the GEMMs and attention's two batched products) at that rate, over
the engine's time (f32 engines against the f32 rate, bf16 ones against the
bf16 rate).

Optional dependencies (not needed by xlac or its tests):

    pip install torch transformers safetensors numpy jax onnxruntime onnx onnxscript
    cargo build --release
    python bench/peers/peers.py [--runs 10] [--models minilm-l6,bert-base] [--batches 1,8]
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

ROOT = Path(__file__).resolve().parents[2]
XLAC = ROOT / "target" / "release" / "xlac"
SEQ = 128
SHAPES = {
    "minilm-l6": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


def cpu():
    """The CPU model, core count and its AVX/AMX/FMA flags, for a benchmark's report."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    wanted = [f for f in flags if f.startswith(("avx", "amx", "fma"))]
    return f"{model}, {os.cpu_count()} cores, {' '.join(sorted(wanted))}"


def median_ms(f, runs, warmup=3):
    """`f`'s median time in ms over `runs` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        f()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def make_checkpoint(name, work):
    """A random-weight BertModel of the named shape, saved as safetensors."""
    import torch
    import transformers as tf

    out = work / name
    if (out / "config.json").exists():
        return out
    torch.manual_seed(0)
    config = tf.BertConfig(vocab_size=30522, max_position_embeddings=512, attn_implementation="eager", **SHAPES[name])
    tf.BertModel(config, add_pooling_layer=False).eval().save_pretrained(out, safe_serialization=True)
    return out


def inputs(batch, work):
    rng = np.random.default_rng(batch)
    ids = rng.integers(0, 30522, size=(batch, SEQ), dtype=np.int64)
    feeds = {
        "input_ids": ids,
        "attention_mask": np.ones((batch, SEQ), dtype=np.int64),
        "token_type_ids": np.zeros((batch, SEQ), dtype=np.int64),
    }
    d = work / f"inputs-b{batch}"
    d.mkdir(exist_ok=True)
    for k, v in feeds.items():
        np.save(d / f"{k}.npy", v)
    return feeds, [f"--input={k}={d / (k + '.npy')}" for k in feeds]


def plugins():
    """Every CPU plugin installed, as `xlac devices --all` lists them: the
    default first (the one xlac chooses with the calibration remembered in
    its default cache directory)."""
    out = subprocess.run([str(XLAC), "devices", "--all"], check=True, capture_output=True, text=True).stdout
    return [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("plugin: ")]


def batched_default():
    """The plugin xlac uses by default for f32 programs with batched products
    (a batch-8 forward or training step): the one `xlac devices --all` marks
    so, else the default."""
    out = subprocess.run([str(XLAC), "devices", "--all"], check=True, capture_output=True, text=True).stdout
    blocks = [b.split("\n") for b in out.split("\nplugin: ")[1:]]
    marked = [b[0] for b in blocks if any("used by default for f32 programs with batched products" in l for l in b)]
    return (marked or [b[0] for b in blocks])[0]


def plugin_name(path):
    """A plugin's package directory: `xla_cpu_pjrt`, `lammps_jax_pjrt_cpu`."""
    return Path(path).parent.name


def gemm_rates(installed, work, n=2048, runs=5):
    """The machine's matrix-product rate in FLOP/s, f32 and bf16: the best
    of the peers installed, and of xlac on each plugin in `installed`, on
    one n x n x n product, medians of `runs` (xlac's bf16 product casts its
    f32 operands inside the program, as `--precision mixed-bf16` does)."""
    rates = {"f32": [], "bf16": []}
    flops = 2.0 * n ** 3
    gemm = work / "gemm.json"
    gemm.write_text(json.dumps({
        "format_version": 1, "name": "gemm", "parameters": [], "outputs": ["c"],
        "inputs": [{"name": "a", "dtype": "f32", "shape": [n, n]}, {"name": "b", "dtype": "f32", "shape": [n, n]}],
        "nodes": [{"op": "matmul", "inputs": ["a", "b"], "outputs": ["c"]}]}))
    for plugin in installed:
        for precision, name in (("f32", "f32"), ("mixed-bf16", "bf16")):
            r = xlac_bench(gemm, 1, [], precision, runs, plugin)
            rates[name].append((f"xlac {plugin_name(plugin)}", flops / (r["median_ms"] / 1e3)))

    def best(f):
        return flops / (median_ms(f, runs, warmup=1) / 1e3)

    a, b = np.random.default_rng(0).standard_normal((2, n, n), dtype=np.float32)
    rates["f32"].append(("NumPy", best(lambda: a @ b)))
    try:
        import jax
        import jax.numpy as jnp

        for dtype, name in ((jnp.float32, "f32"), (jnp.bfloat16, "bf16")):
            x, y = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
            mm = jax.jit(lambda x, y: x @ y)
            rates[name].append(("JAX", best(lambda: mm(x, y).block_until_ready())))
    except ImportError:
        pass
    try:
        import torch

        torch.set_num_threads(os.cpu_count())
        for dtype, name in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
            x, y = torch.from_numpy(a).to(dtype), torch.from_numpy(b).to(dtype)
            rates[name].append(("PyTorch", best(lambda: x @ y)))
    except ImportError:
        pass
    return {k: max(v, key=lambda r: r[1]) for k, v in rates.items() if v}


def matmul_flops(name, batch):
    """The encoder's matrix-product FLOPs: per token and layer the four
    attention projections, the two feed-forward products, and attention's
    scores and weighted sum over the sequence."""
    h, i, layers = (SHAPES[name][k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers"))
    per_token = 2 * 4 * h * h + 2 * 2 * h * i + 2 * 2 * SEQ * h
    return float(per_token * layers * batch * SEQ)


def torch_bench(ckpt, feeds, runs, bf16):
    """transformers' BertModel in eager mode (bf16: under CPU autocast): median ms and output."""
    import torch
    import transformers as tf

    torch.set_num_threads(os.cpu_count())
    bert = tf.BertModel.from_pretrained(ckpt, attn_implementation="eager").eval()
    args = {k: torch.from_numpy(v) for k, v in feeds.items()}

    def run():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return bert(**args).last_hidden_state

    out = run()
    return median_ms(run, runs), out.float().numpy()


def xlac_bench(ckpt, batch, args, precision, runs, plugin):
    cmd = [str(XLAC), "bench", str(ckpt), *args, "--runs", str(runs), "--json", "--precision", precision,
           "--plugin", plugin]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return json.loads(out.stdout)


def chosen_plugin(ckpt, args, cache_dir):
    """The plugin xlac chooses itself for this model and batch, with the
    calibration remembered in `cache_dir` (it ranks by the program's products)."""
    cmd = [str(XLAC), "bench", str(ckpt), *args, "--runs", "1", "--warmup", "0", "--json"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "XLAC_CACHE_DIR": str(cache_dir)}
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)["plugin"]


def xlac_output(ckpt, args, precision, out_dir):
    cmd = [str(XLAC), "run", str(ckpt), *args, "--precision", precision, "--out-dir", str(out_dir)]
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return np.load(out_dir / "last_hidden_state.npy")


FRESH_RUNS = 5


def fresh_process(ckpt, args, cache_dir):
    start = time.perf_counter()
    subprocess.run([str(XLAC), "run", str(ckpt), *args], check=True, capture_output=True,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "XLAC_CACHE_DIR": str(cache_dir)})
    return time.perf_counter() - start


JAX_MODEL = r'''
import jax, jax.numpy as jnp, numpy as np
from safetensors.numpy import load_file

def load(ckpt):
    import json
    cfg = json.load(open(f"{ckpt}/config.json"))
    return cfg, {k: jnp.asarray(v) for k, v in load_file(f"{ckpt}/model.safetensors").items()}

def encoder(cfg, w, ids, mask, types):
    H, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    hd, eps = H // nh, cfg["layer_norm_eps"]
    def ln(x, p):
        m = x.mean(-1, keepdims=True); v = ((x - m) ** 2).mean(-1, keepdims=True)
        return (x - m) / jnp.sqrt(v + eps) * w[p + ".weight"] + w[p + ".bias"]
    def dense(x, p):
        return x @ w[p + ".weight"].T + w[p + ".bias"]
    b, s = ids.shape
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:s] \
        + w["embeddings.token_type_embeddings.weight"][types]
    x = ln(x, "embeddings.LayerNorm")
    bias = ((1.0 - mask.astype(jnp.float32)) * jnp.finfo(jnp.float32).min)[:, None, None, :]
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        heads = lambda t: t.reshape(b, s, nh, hd).transpose(0, 2, 1, 3)
        q, k, v = (heads(dense(x, p + "attention.self." + n)) for n in ("query", "key", "value"))
        a = jax.nn.softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd) + bias, axis=-1) @ v
        a = a.transpose(0, 2, 1, 3).reshape(b, s, H)
        x = ln(dense(a, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        h = jax.nn.gelu(dense(x, p + "intermediate.dense"), approximate=False)
        x = ln(dense(h, p + "output.dense") + x, p + "output.LayerNorm")
    return x
'''


def jax_bench(ckpt, feeds, runs):
    import jax
    import jax.numpy as jnp

    ns = {}
    exec(JAX_MODEL, ns)
    cfg, w = ns["load"](ckpt)
    # Weights are arguments, as in Flax's apply(params, x) and as xlac passes them:
    # closed-over arrays would be compile-time constants XLA may re-layout.
    f = jax.jit(lambda w, ids, mask, types: ns["encoder"](cfg, w, ids, mask, types))
    args = [w] + [jnp.asarray(feeds[k]) for k in ("input_ids", "attention_mask", "token_type_ids")]
    out = f(*args).block_until_ready()
    return median_ms(lambda: f(*args).block_until_ready(), runs), np.asarray(out)


def jax_fresh_process(ckpt, batch):
    code = JAX_MODEL + f'''
import time
cfg, w = load("{ckpt}")
ids = jnp.zeros(({batch}, {SEQ}), jnp.int64 if jax.config.jax_enable_x64 else jnp.int32)
out = jax.jit(lambda w, i, m, t: encoder(cfg, w, i, m, t))(w, ids, jnp.ones_like(ids), jnp.zeros_like(ids)).block_until_ready()
'''
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - start


def ort_bench(ckpt, feeds, runs, work):
    import onnxruntime as ort
    import torch
    import transformers as tf

    path = work / f"{ckpt.name}.onnx"
    if not path.exists():
        bert = tf.BertModel.from_pretrained(ckpt, attn_implementation="eager").eval()

        class Encoder(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.bert = bert

            def forward(self, input_ids, attention_mask, token_type_ids):
                out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
                return out.last_hidden_state

        names = ["input_ids", "attention_mask", "token_type_ids"]
        example = tuple(torch.from_numpy(feeds[k]) for k in names)
        dyn = {k: {0: "batch", 1: "seq"} for k in names}
        torch.onnx.export(Encoder().eval(), example, str(path), input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes=dyn, opset_version=17, dynamo=False)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    out = sess.run(["last_hidden_state"], feeds)[0]
    return median_ms(lambda: sess.run(["last_hidden_state"], feeds), runs), out


def cosine_distance(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return 1.0 - float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--models", default="minilm-l6,bert-base")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "xlac-peers"))
    a = ap.parse_args()
    if not XLAC.exists():
        sys.exit(f"{XLAC} not found: run `cargo build --release` first")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    installed = plugins()
    rates = gemm_rates(installed, work)
    print(json.dumps({"cpu": cpu(), "plugins": installed,
                      "gemm_gflops": {k: {"by": by, "gflops": r / 1e9} for k, (by, r) in rates.items()}}), flush=True)
    rows = []
    for name in a.models.split(","):
        ckpt = make_checkpoint(name, work)
        for batch in map(int, a.batches.split(",")):
            feeds, args = inputs(batch, work)
            flops = matmul_flops(name, batch)
            floor = {k: flops / r * 1e3 for k, (_, r) in rates.items()}
            # (engine, precision, median ms): precision says which floor it is held to.
            engines = []
            first = None
            for plugin in installed:
                f32 = xlac_bench(ckpt, batch, args, "f32", a.runs, plugin)
                bf16 = xlac_bench(ckpt, batch, args, "mixed-bf16", a.runs, plugin)
                first = first or f32
                engines += [(f"xlac {plugin_name(plugin)}", "f32", f32["median_ms"]),
                            (f"xlac {plugin_name(plugin)}", "bf16", bf16["median_ms"])]
            jax_ms, jax_out = jax_bench(ckpt, feeds, a.runs)
            ort_ms, ort_out = ort_bench(ckpt, feeds, a.runs, work)
            torch_ms, torch_out = torch_bench(ckpt, feeds, a.runs, bf16=False)
            torch_bf16_ms, _ = torch_bench(ckpt, feeds, a.runs, bf16=True)
            engines += [("JAX", "f32", jax_ms), ("ONNX Runtime", "f32", ort_ms),
                        ("PyTorch", "f32", torch_ms), ("PyTorch autocast", "bf16", torch_bf16_ms)]
            out = work / f"out-{name}-{batch}"
            x32 = xlac_output(ckpt, args, "f32", out / "f32")
            x16 = xlac_output(ckpt, args, "mixed-bf16", out / "bf16")
            row = dict(
                model=name, batch=batch, matmul_gflop=flops / 1e9,
                floor_ms={k: v for k, v in floor.items()},
                engines=[dict(engine=e, precision=p, ms=ms, of_floor=floor[p] / ms if p in floor else None)
                         for e, p, ms in engines],
                max_diff_vs_ort=float(np.abs(x32 - ort_out).max()), max_diff_vs_jax=float(np.abs(x32 - jax_out).max()),
                max_diff_vs_torch=float(np.abs(x32 - torch_out).max()),
                bf16_cosine_distance=cosine_distance(x16, x32),
                compile_cold_ms=first["compile_cold_ms"], compile_cached_ms=first["compile_cached_ms"],
            )
            with tempfile.TemporaryDirectory() as cache:
                row["fresh_cold_s"] = fresh_process(ckpt, args, cache)
                row["fresh_warm_s"] = float(np.median([fresh_process(ckpt, args, cache) for _ in range(FRESH_RUNS)]))
                # The cold run calibrated the plugins into this cache: the one both runs used
                # (for the model's workload, which `bench` chooses by as `run` does).
                row["fresh_plugin"] = chosen_plugin(ckpt, args, cache)
            row["jax_fresh_s"] = float(np.median([jax_fresh_process(ckpt, batch) for _ in range(FRESH_RUNS)]))
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\nCPU: {cpu()}; medians over {a.runs} runs, sequence {SEQ}")
    for k, (by, r) in rates.items():
        print(f"GEMM limit {k}: {r / 1e9:.0f} GFLOP/s (2048^3, {by})")
    print("\nms, and in brackets the floor (the encoder's matrix products at the GEMM limit) over the time:")
    names = [f"{e['engine']} {e['precision']}" for e in rows[0]["engines"]]
    print("| model | batch | floor f32 / bf16 ms | " + " | ".join(names)
          + f" | fresh `xlac run` cold / warm s (warm: median of {FRESH_RUNS}) | JAX fresh s (median of {FRESH_RUNS}) |")
    print("|" + " --- |" * (len(names) + 5))
    for r in rows:
        floors = " / ".join(f"{r['floor_ms'][k]:.1f}" for k in ("f32", "bf16") if k in r["floor_ms"])
        cells = [f"{e['ms']:.1f} ({e['of_floor']:.2f})" if e["of_floor"] else f"{e['ms']:.1f}" for e in r["engines"]]
        print(f"| {r['model']} | {r['batch']} | {floors} | " + " | ".join(cells)
              + f" | {r['fresh_cold_s']:.2f} / {r['fresh_warm_s']:.2f} | {r['jax_fresh_s']:.2f} |")
    for r in rows:
        print(f"fresh `xlac run` of {r['model']} at batch {r['batch']}: on {plugin_name(r['fresh_plugin'])}, "
              "the plugin its own calibration chose (cold run, empty cache)")
    diffs = max(max(r["max_diff_vs_ort"], r["max_diff_vs_jax"], r["max_diff_vs_torch"]) for r in rows)
    print(f"\nxlac f32 against ORT, JAX and PyTorch: at most {diffs:.1e} apart; mixed-bf16's cosine distance "
          f"from f32 at most {max(r['bf16_cosine_distance'] for r in rows):.1e}")


if __name__ == "__main__":
    main()
