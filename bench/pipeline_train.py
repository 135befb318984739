"""Pipeline-parallel training's bubble and per-device memory, GPipe against 1F1B.

A BERT-base-shaped BertForSequenceClassification (hidden 768, 12 heads,
intermediate 3072, --layers layers; random weights written by this script
with NumPy, so nothing but NumPy is needed) trains with AdamW on random
token ids (sequence --seq, micro-batches of --micro examples) through
`xlac train --pipeline S --microbatches M --pipeline-schedule gpipe|1f1b`
for each (S, M) asked, each stage on a CPU device of its own. xlac prints,
per stage, its idle share (the median over the steps after the first) and
its bytes on its device: held (weights, AdamW's state, gradient
accumulators), stashed (the micro-batches' inputs kept between forward and
backward, what the schedule decides) and XLA's temporaries; this script
collects them beside GPipe's theory (S-1)/(M+S-1), with the CPU model and
flags and the plugin.

    cargo build --release
    python bench/pipeline_train.py [--layers 12] [--seq 128] [--steps 4] [--runs 2x4,2x8,4x8]
"""

import argparse
import json
import os
import platform
import re
import struct
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bert(dirname, layers, vocab=1024, hidden=768, heads=12, inter=3072, max_pos=512, labels=2):
    """A random BertForSequenceClassification checkpoint: config.json and model.safetensors."""
    rng = np.random.default_rng(0)
    tensors = {}

    def w(name, *shape):
        tensors[name] = (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def ln(prefix):
        tensors[prefix + ".weight"] = np.ones(hidden, np.float32)
        tensors[prefix + ".bias"] = np.zeros(hidden, np.float32)

    w("bert.embeddings.word_embeddings.weight", vocab, hidden)
    w("bert.embeddings.position_embeddings.weight", max_pos, hidden)
    w("bert.embeddings.token_type_embeddings.weight", 2, hidden)
    ln("bert.embeddings.LayerNorm")
    for i in range(layers):
        p = f"bert.encoder.layer.{i}."
        for n in ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"]:
            w(p + n + ".weight", hidden, hidden)
            w(p + n + ".bias", hidden)
        ln(p + "attention.output.LayerNorm")
        w(p + "intermediate.dense.weight", inter, hidden)
        w(p + "intermediate.dense.bias", inter)
        w(p + "output.dense.weight", hidden, inter)
        w(p + "output.dense.bias", hidden)
        ln(p + "output.LayerNorm")
    w("bert.pooler.dense.weight", hidden, hidden)
    w("bert.pooler.dense.bias", hidden)
    w("classifier.weight", labels, hidden)
    w("classifier.bias", labels)
    header, offset, blobs = {}, 0, []
    for name, t in tensors.items():
        b = t.tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    os.makedirs(dirname, exist_ok=True)
    with open(os.path.join(dirname, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for b in blobs:
            f.write(b)
    config = {
        "architectures": ["BertForSequenceClassification"],
        "model_type": "bert",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": inter,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": max_pos,
        "type_vocab_size": 2,
        "vocab_size": vocab,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "id2label": {str(i): f"LABEL_{i}" for i in range(labels)},
        "label2id": {f"LABEL_{i}": i for i in range(labels)},
    }
    with open(os.path.join(dirname, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    return sum(t.size for t in tensors.values())


def data(dirname, examples, seq, vocab=1024, labels=2):
    rng = np.random.default_rng(1)
    os.makedirs(dirname, exist_ok=True)
    np.save(os.path.join(dirname, "input_ids.npy"), rng.integers(1, vocab, (examples, seq), dtype=np.int64))
    np.save(os.path.join(dirname, "attention_mask.npy"), np.ones((examples, seq), np.int64))
    np.save(os.path.join(dirname, "token_type_ids.npy"), np.zeros((examples, seq), np.int64))
    np.save(os.path.join(dirname, "labels.npy"), rng.integers(0, labels, examples, dtype=np.int64))


def cpu():
    model, flags = platform.processor(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    shown = [f for f in ["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"] if f in flags]
    return f"{model}, {os.cpu_count()} cores, {' '.join(shown)}"


ROW = re.compile(r"^\s+(\d+)\s+([\d.]+)%\s+([\d.]+ \S?B)\s+([\d.]+ \S?B)\s+([\d.]+ \S?B)\s+([\d.]+ \S?B)$")


def run(xlac, checkpoint, datadir, stages, micro, schedule, args):
    cmd = [
        xlac, "train", checkpoint, "--data", datadir, "--task", "sequence-classification",
        "--optimizer", "adamw", "--lr", "1e-4", "--batch", str(args.micro), "--steps", str(args.steps),
        "--pipeline", str(stages), "--microbatches", str(micro), "--pipeline-schedule", schedule,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    rows = [ROW.match(line).groups() for line in out.stderr.splitlines() if ROW.match(line)]
    bubble = re.search(r"measured mean idle ([\d.]+)%.*= ([\d.]+)%", out.stderr)
    plugin = re.search(r"plugin[^\n]*", out.stderr)
    return rows, float(bubble.group(1)), float(bubble.group(2)), plugin.group(0) if plugin else ""


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--micro", type=int, default=1, help="examples per micro-batch")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--runs", default="2x4,2x8,4x8", help="SxM pairs")
    p.add_argument("--xlac", default=os.path.join(ROOT, "target/release/xlac"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, datadir = os.path.join(tmp, "bert"), os.path.join(tmp, "data")
        params = bert(checkpoint, args.layers)
        runs = [tuple(int(x) for x in r.split("x")) for r in args.runs.split(",")]
        data(datadir, max(m for _, m in runs) * args.micro * 2, args.seq)
        print(f"BERT-base-shaped classifier, {args.layers} layers, {params / 1e6:.1f}M parameters, "
              f"seq {args.seq}, micro-batches of {args.micro}, {args.steps} steps; CPU: {cpu()}")
        print("| stages | micro-batches | schedule | measured idle (mean) | (S-1)/(M+S-1) | "
              "per stage: held / stashed / temporaries |")
        print("| --- | --- | --- | --- | --- | --- |")
        for stages, micro in runs:
            for schedule in ["gpipe", "1f1b"]:
                rows, idle, theory, _ = run(args.xlac, checkpoint, datadir, stages, micro, schedule, args)
                per = "; ".join(f"{r[2]} / {r[3]} / {r[4]}" for r in rows)
                print(f"| {stages} | {micro} | {schedule} | {idle:.1f}% | {theory:.1f}% | {per} |", flush=True)


if __name__ == "__main__":
    main()
