"""xlac's training step against PyTorch eager and JAX, in one session, on one machine.

A MiniLM-L6-shaped BertForSequenceClassification (random weights, 2 labels,
dropout 0 in all three: the step's arithmetic is compared, not random masks) trains with AdamW (lr 1e-4,
weight decay 0.01) on batch 8, sequence 128, in f32:

- xlac: `xlac train CHECKPOINT --task sequence-classification` (one compiled
  step, weights and optimizer state donated), each step's time from its
  `--log` (`examples_per_s`);
- PyTorch eager: transformers' model, `loss.backward()`, `torch.optim.AdamW`,
  as many threads as the machine has cores;
- JAX: the same BERT in jax.numpy (peers.py's encoder) with the pooler and
  classifier, `jax.value_and_grad`, AdamW written in jax.numpy as
  torch.optim.AdamW computes it, one `jax.jit` with the parameters and state
  donated.

Each peer runs in its own process; the script prints the median step time
after 3 warm-up steps, examples per second, the ratios, each process's peak
resident memory against 4x the parameter bytes (weights, gradients and
AdamW's two moments), and the CPU model and flags.

Optional dependencies (not needed by xlac or its tests):

    pip install torch transformers safetensors numpy jax
    cargo build --release
    python bench/peers/train_step.py [--steps 20]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import JAX_MODEL, SEQ, SHAPES, XLAC, batched_default, cpu  # noqa: E402

BATCH, LABELS, LR, WD, WARMUP = 8, 2, 1e-4, 0.01, 3


def make_checkpoint(work):
    """A random-weight MiniLM-L6-shaped classifier with the pooler, dropout 0, saved as safetensors."""
    import torch
    import transformers as tf

    out = work / "minilm-l6-classifier"
    if not (out / "config.json").exists():
        torch.manual_seed(0)
        config = tf.BertConfig(vocab_size=30522, max_position_embeddings=512, num_labels=LABELS,
                               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                               attn_implementation="eager", **SHAPES["minilm-l6"])
        tf.BertForSequenceClassification(config).save_pretrained(out, safe_serialization=True)
    return out


def make_data(work):
    rng = np.random.default_rng(0)
    data = {
        "input_ids": rng.integers(0, 30522, size=(BATCH, SEQ), dtype=np.int64),
        "attention_mask": np.ones((BATCH, SEQ), dtype=np.int64),
        "token_type_ids": np.zeros((BATCH, SEQ), dtype=np.int64),
        "labels": rng.integers(0, LABELS, size=(BATCH,), dtype=np.int64),
    }
    d = work / "data"
    d.mkdir(exist_ok=True)
    for k, v in data.items():
        np.save(d / f"{k}.npy", v)
    return d, data


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_xlac(ckpt, data_dir, steps, work):
    log = work / "xlac.jsonl"
    cmd = [str(XLAC), "train", str(ckpt), "--data", str(data_dir), "--task", "sequence-classification",
           "--optimizer", "adamw", "--lr", str(LR), "--weight-decay", str(WD), "--steps", str(steps),
           "--batch", str(BATCH), "--dropout", "0", "--log", str(log)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    total = time.perf_counter() - start
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    times = [BATCH / line["examples_per_s"] for line in lines[WARMUP:]]
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return dict(step_ms=float(np.median(times)) * 1e3, peak_rss_mb=rss, losses=[line["loss"] for line in lines],
                total_s=total)


def run_torch(ckpt, data, steps):
    import torch
    import transformers as tf

    torch.set_num_threads(os.cpu_count())
    model = tf.BertForSequenceClassification.from_pretrained(ckpt, attn_implementation="eager")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    batch = {k: torch.tensor(v) for k, v in data.items()}
    times, losses = [], []
    for _ in range(steps):
        start = time.perf_counter()
        opt.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
        times.append(time.perf_counter() - start)
    return dict(step_ms=float(np.median(times[WARMUP:])) * 1e3, peak_rss_mb=peak_rss_mb(), losses=losses)


def run_jax(ckpt, data, steps):
    import jax
    import jax.numpy as jnp

    ns = {}
    exec(JAX_MODEL, ns)
    cfg, flat = ns["load"](ckpt)
    # The encoder reads the base model's names; the head keeps its own.
    params = {k.removeprefix("bert."): v for k, v in flat.items()}

    def loss_fn(w, ids, mask, types, labels):
        x = ns["encoder"](cfg, w, ids, mask, types)
        pooled = jnp.tanh(x[:, 0] @ w["pooler.dense.weight"].T + w["pooler.dense.bias"])
        logits = pooled @ w["classifier.weight"].T + w["classifier.bias"]
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.take_along_axis(logp, labels[:, None], axis=-1).mean()

    def step(w, m, v, t, ids, mask, types, labels):
        loss, g = jax.value_and_grad(loss_fn)(w, ids, mask, types, labels)
        t = t + 1
        b1, b2, eps = 0.9, 0.999, 1e-8
        m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, m, g)
        v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, v, g)
        c1, c2 = 1 - b1**t, 1 - b2**t

        def update(w, m, v):
            w = w * (1 - LR * WD)
            return w - (LR / c1) * m / (jnp.sqrt(v) / jnp.sqrt(c2) + eps)

        return jax.tree.map(update, w, m, v), m, v, t, loss

    f = jax.jit(step, donate_argnums=(0, 1, 2))
    zeros = jax.tree.map(jnp.zeros_like, params)
    state = [params, zeros, jax.tree.map(jnp.zeros_like, params), jnp.float32(0)]
    batch = [jnp.asarray(data[k]) for k in ("input_ids", "attention_mask", "token_type_ids", "labels")]
    times, losses = [], []
    for _ in range(steps):
        start = time.perf_counter()
        *state, loss = f(*state, *batch)
        losses.append(float(loss))
        times.append(time.perf_counter() - start)
    return dict(step_ms=float(np.median(times[WARMUP:])) * 1e3, peak_rss_mb=peak_rss_mb(), losses=losses)


def jax_version():
    out = subprocess.run([sys.executable, "-c", "import jax, jaxlib; print(jax.__version__, jaxlib.__version__)"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "not installed"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "xlac-train-peers"))
    ap.add_argument("--peer", choices=["torch", "jax"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = make_checkpoint(work)
    data_dir, data = make_data(work)
    if a.peer:
        print(json.dumps((run_torch if a.peer == "torch" else run_jax)(ckpt, data, a.steps)))
        return
    if not XLAC.exists():
        sys.exit(f"{XLAC} not found: run `cargo build --release` first")
    rows = {"xlac": run_xlac(ckpt, data_dir, a.steps, work)}
    for peer in ("torch", "jax"):
        out = subprocess.run([sys.executable, __file__, "--peer", peer, "--steps", str(a.steps), "--work", str(work)],
                             check=True, capture_output=True, text=True)
        rows[peer] = json.loads(out.stdout.strip().splitlines()[-1])
    from safetensors.numpy import load_file

    param_bytes = sum(v.nbytes for v in load_file(str(ckpt / "model.safetensors")).values())
    for name, r in rows.items():
        print(name, json.dumps({k: v for k, v in r.items() if k != "losses"}), "first losses", r["losses"][:3])
    x = rows["xlac"]["step_ms"]
    plugin = os.environ.get("XLAC_PJRT_PLUGIN") or f"{batched_default()} (the default for batched steps on this machine)"
    print(f"\nxlac's PJRT plugin: {plugin}; JAX {jax_version()}")
    print(f"CPU: {cpu()}; MiniLM-L6 classifier, batch {BATCH}, sequence {SEQ}, f32, AdamW; "
          f"medians of {a.steps - WARMUP} steps after {WARMUP}")
    print("| peer | step ms | examples/s | xlac vs peer | peak RSS MB | peak RSS / (4 x params) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        print(f"| {name} | {r['step_ms']:.1f} | {BATCH / r['step_ms'] * 1e3:.1f} | {x / r['step_ms']:.2f}x "
              f"| {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] * 2**20 / (4 * param_bytes):.2f} |")
    print(f"parameters: {param_bytes / 2**20:.1f} MiB; 4x = {4 * param_bytes / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
