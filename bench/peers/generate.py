"""`xlac generate` against transformers' `generate`, in one run, on one machine.

For a GPT-2-small-shaped (124M) and a Llama-shaped (~400M: 28 layers, width
1024, 8 key/value heads) causal LM with random weights, it measures, for
xlac (`xlac generate --json --ignore-eos`, each run in a fresh process, its
programs already in the compilation cache) and for transformers' `generate`
(eager PyTorch, `min_new_tokens` = `max_new_tokens`, as many threads as the
machine has cores):

- time to first token for a 128-token prompt, batch 1;
- decode tokens per second at batch 1 and batch 8 (128-token prompts);
- the latency of one decode step at positions 128, 512 and 1000 (batch 1):
  flat but for the attention's cost;

in f32, in bf16 (xlac `--precision mixed-bf16`: bf16 products, f32
accumulation; transformers: the model in torch.bfloat16), in int8 and in
int4 (xlac: the checkpoint through `xlac quantize`, int8 per output channel
or int4 in groups of 64; transformers: f32, its CPU `generate` having no
weight-only integer path without extra libraries). It prints medians of `--repeats` runs, the ratios, the CPU
model and flags, and xlac's plugin.

Optional dependencies (not needed by xlac or its tests):

    pip install torch transformers safetensors numpy
    cargo build --release
    python bench/peers/generate.py [--models gpt2-small,llama-400m] [--new 32] [--repeats 3]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import XLAC, cpu, plugin_name  # noqa: E402

MODELS = {
    "gpt2-small": ("GPT2LMHeadModel", dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257)),
    "llama-400m": ("LlamaForCausalLM", dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16,
                                            num_key_value_heads=8, intermediate_size=2816, vocab_size=32000,
                                            max_position_embeddings=2048)),
}
PROMPT, POSITIONS = 128, (128, 512, 1000)


def make_checkpoint(work, name):
    import torch
    import transformers as tf

    out = work / name
    if not (out / "config.json").exists():
        torch.manual_seed(0)
        arch, shape = MODELS[name]
        config = (tf.GPT2Config if arch.startswith("GPT2") else tf.LlamaConfig)(**shape)
        getattr(tf, arch)(config).save_pretrained(out, safe_serialization=True)
    return out


def positions(name):
    """The most positions (prompt and new tokens) the model shape takes."""
    shape = MODELS[name][1]
    return shape.get("n_positions") or shape["max_position_embeddings"]


def prompts(batch, length):
    return [[(7 * b + 13 * i) % 1000 + 3 for i in range(length)] for b in range(batch)]


def quantized(ckpt, form):
    out = ckpt.parent / f"{ckpt.name}-{form}"
    bits = ["--bits", "4", "--group", "64"] if form == "int4" else []
    if not (out / "config.json").exists():
        subprocess.run([str(XLAC), "quantize", str(ckpt), "-o", str(out), *bits], check=True, capture_output=True)
    return out


def xlac(ckpt, batch, length, new, precision):
    if precision in ("int8", "int4"):
        ckpt, precision = quantized(ckpt, precision), "f32"
    # Warm, as transformers is timed after a warm-up generation: a fresh process's first run
    # of each program also pays XLA's one-time costs (page faults, packing, code generation).
    args = [str(XLAC), "generate", str(ckpt), "--max-new-tokens", str(new), "--json", "--ignore-eos",
            "--warm-up", "--precision", precision]
    for p in prompts(batch, length):
        args += ["--prompt-ids", ",".join(map(str, p))]
    out = subprocess.run(args, check=True, capture_output=True, text=True)
    doc = json.loads(out.stdout)
    step_ms = 1e3 / doc["decode_tokens_per_s"] * batch
    return dict(ttft_ms=doc["time_to_first_token_ms"], tokens_per_s=doc["decode_tokens_per_s"], step_ms=step_ms,
                plugin=doc["plugin"])


def torch_peer(ckpt, batch, length, new, precision):
    import torch
    import transformers as tf

    torch.set_num_threads(os.cpu_count())
    dtype = torch.bfloat16 if precision == "mixed-bf16" else torch.float32
    model = tf.AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype).eval()
    ids = torch.tensor(prompts(batch, length))
    mask = torch.ones_like(ids)

    def timed(n):
        start = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                       pad_token_id=0)
        return time.perf_counter() - start

    with torch.no_grad():
        timed(2)  # warm-up
        ttft = timed(1)
        total = timed(new)
    step = (total - ttft) / (new - 1)
    return dict(ttft_ms=ttft * 1e3, tokens_per_s=batch / step, step_ms=step * 1e3)


def median_of(f, repeats):
    runs = [f() for _ in range(repeats)]
    return {k: statistics.median(r[k] for r in runs) if isinstance(v, (int, float)) else v
            for k, v in runs[0].items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="gpt2-small,llama-400m")
    ap.add_argument("--precisions", default="f32,mixed-bf16,int8,int4")
    ap.add_argument("--new", type=int, default=32, help="new tokens per timed generation")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "xlac-generate-peers"))
    ap.add_argument("--peer", help=argparse.SUPPRESS)
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if a.peer:
        name, batch, length, precision = a.peer.split(":")
        row = torch_peer(make_checkpoint(work, name), int(batch), int(length), a.new, precision)
        print(json.dumps(row))
        return
    if not XLAC.exists():
        sys.exit(f"{XLAC} not found: run `cargo build --release` first")
    rows, peers = [], {}
    for name in a.models.split(","):
        ckpt = make_checkpoint(work, name)
        for precision in a.precisions.split(","):
            cases = [("ttft, decode b1", 1, PROMPT), ("decode b8", 8, PROMPT)]
            cases += [(f"step at {p}", 1, p) for p in POSITIONS if p != PROMPT]
            for label, batch, length in cases:
                # A prompt near the model's context leaves room for fewer new tokens (GPT-2: 1024 positions).
                new = min(a.new, positions(name) - length)
                xlac(ckpt, batch, length, 2, precision)  # compiles, or finds in the cache
                x = median_of(lambda: xlac(ckpt, batch, length, new, precision), a.repeats)
                peer = f"{name}:{batch}:{length}:{'mixed-bf16' if precision == 'mixed-bf16' else 'f32'}"

                def torch_run():
                    out = subprocess.run([sys.executable, __file__, "--peer", peer, "--new", str(new),
                                          "--work", str(work)], check=True, capture_output=True, text=True)
                    return json.loads(out.stdout.strip().splitlines()[-1])

                # transformers runs int8 and int4 rows in f32: measured once, shown against each.
                key = (name, batch, length, precision if precision == "mixed-bf16" else "f32")
                if key not in peers:
                    peers[key] = median_of(torch_run, a.repeats)
                t = peers[key]
                rows.append((name, precision, label, batch, length, x, t))
                print(name, precision, label, "xlac", x, "transformers", t, flush=True)
    used = {}
    for name, precision, _, _, _, x, _ in rows:
        used.setdefault(f"{name} {precision}", set()).add(plugin_name(x["plugin"]))
    plugin = ", ".join(f"{k} on {' and '.join(sorted(v))}" for k, v in used.items())
    print(f"\nCPU: {cpu()}; xlac's plugin: {plugin}; medians of {a.repeats} runs of {a.new} new tokens "
          "(fewer where the prompt leaves less room)")
    print("| model | precision | case | xlac ttft ms | transformers ttft ms | xlac tok/s | transformers tok/s "
          "| xlac step ms | transformers step ms | decode speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, precision, label, batch, length, x, t in rows:
        print(f"| {name} | {precision} | {label} (prompt {length}) | {x['ttft_ms']:.0f} | {t['ttft_ms']:.0f} "
              f"| {x['tokens_per_s']:.1f} | {t['tokens_per_s']:.1f} | {x['step_ms']:.1f} | {t['step_ms']:.1f} "
              f"| {x['tokens_per_s'] / t['tokens_per_s']:.2f}x |")


if __name__ == "__main__":
    main()
