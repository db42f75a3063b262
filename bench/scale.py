"""Scale benchmark: Llama-3-8B-shaped bf16 checkpoints analysed without loading the model.

Builds two checkpoints with the shapes of Llama-3-8B (hidden 4096, MLP 14336, 32 query / 8
key-value heads, vocabulary 128256, untied head) but only 2 and 4 of its 32 blocks, in bf16,
sharded with `model.safetensors.index.json` (about 3.0 and 3.8 GB) in a temporary folder,
then measures, each in a fresh process (peak resident memory: VmHWM of that process):
  1. listing the layers of the 4-block checkpoint (`open_weights(...).layers()`):
     target < 3 s and < 1 GB;
  2. sweeping one `model.layers.1.mlp.down_proj` (4096 x 14336; ks 1,4; ranks 16,64;
     selection id) of each checkpoint: target peak < 1.5 GB, and the same within 15 % for 2
     and 4 blocks (memory set by the layer, not the model);
  3. one layer of every other 8B shape (q/o 4096x4096, k/v 1024x4096, gate/up 14336x4096),
     for the projected time of a whole 8B scan (32 blocks) and, scaled by m*n, a 70B scan.

    python bench/scale.py [--keep DIR]

Times are wall and process-CPU seconds on this machine (label them with its load).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HIDDEN, FFN, HEADS, KV_HEADS, VOCAB = 4096, 14336, 32, 8, 128256
KV = HIDDEN // HEADS * KV_HEADS  # 1024
SHARD_BYTES = 2 << 30  # 2 GiB shards, as transformers writes them (several per checkpoint)
SPEC = {"ks": [1, 4], "ranks": [16, 64], "selections": ["id"]}
SHAPES_8B = {"q_proj": (HIDDEN, HIDDEN), "k_proj": (KV, HIDDEN), "v_proj": (KV, HIDDEN),
             "o_proj": (HIDDEN, HIDDEN), "gate_proj": (FFN, HIDDEN), "up_proj": (FFN, HIDDEN),
             "down_proj": (HIDDEN, FFN)}
# Llama-3-70B: hidden 8192, MLP 28672, 64 / 8 heads, 80 blocks
SHAPES_70B = {"q_proj": (8192, 8192), "k_proj": (1024, 8192), "v_proj": (1024, 8192),
              "o_proj": (8192, 8192), "gate_proj": (28672, 8192), "up_proj": (28672, 8192),
              "down_proj": (8192, 28672)}


def write_bf16(handle, shape: tuple[int, ...], rng: np.random.Generator, realistic: bool) -> None:
    """Write the bf16 bytes of a tensor: a low-rank-plus-noise weight, or a tiled filler."""
    if realistic:  # a spectrum with structure: rank-64 signal plus noise, scaled like a weight
        m, n = shape
        w = rng.standard_normal((m, n), dtype=np.float32)
        w += rng.standard_normal((m, 64), dtype=np.float32) @ rng.standard_normal((64, n), dtype=np.float32) / 8
        w *= 0.02
        handle.write((w.view(np.uint32) >> 16).astype("<u2").tobytes())
        return
    count = int(np.prod(shape))
    tile = ((rng.standard_normal(1 << 22, dtype=np.float32) * 0.02).view(np.uint32) >> 16).astype("<u2")
    for start in range(0, count, tile.size):
        handle.write(tile[: min(tile.size, count - start)].tobytes())


def tensors(blocks: int) -> list[tuple[str, tuple[int, ...]]]:
    """Return (name, shape) of every tensor of an 8B-shaped model with `blocks` blocks."""
    out = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for b in range(blocks):
        p = f"model.layers.{b}."
        out += [(f"{p}input_layernorm.weight", (HIDDEN,)), (f"{p}post_attention_layernorm.weight", (HIDDEN,))]
        out += [(f"{p}{'self_attn' if k.endswith(('q_proj', 'k_proj', 'v_proj', 'o_proj')) else 'mlp'}.{k}.weight", s)
                for k, s in SHAPES_8B.items()]
    return out + [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]


def write_checkpoint(folder: Path, blocks: int) -> Path:
    """Write the sharded bf16 checkpoint (config.json, shards, index; no tokenizer)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in tensors(blocks):
        nbytes = 2 * int(np.prod(shape))
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {}, 0
        for name, shape in shard:
            nbytes = 2 * int(np.prod(shape))
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[name] = fname
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(folder / fname, "wb") as handle:
            handle.write(len(raw).to_bytes(8, "little") + raw)
            for name, shape in shard:
                write_bf16(handle, shape, rng, realistic=len(shape) == 2 and "layers" in name)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": FFN, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "num_hidden_layers": blocks, "vocab_size": VOCAB, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "max_position_embeddings": 8192}))
    return folder


CHILD = r"""
import json, resource, sys, time
t0, c0 = time.perf_counter(), time.process_time()
job = json.loads(sys.argv[1])
from idlora_core.weights import open_weights
reader = open_weights(job["model"])
out = {"layers": len(reader.layers())}
if job.get("app"):  # the Model & layers page on this checkpoint (Streamlit's AppTest, headless)
    from streamlit.testing.v1 import AppTest
    t1 = time.perf_counter()
    at = AppTest.from_file("app/views/model_layers.py", default_timeout=120)
    at.session_state["model_choice"] = "local"
    at.session_state["model_path"] = job["model"]
    at.run()
    assert not at.exception and not at.error, (at.exception, at.error)
    out["app_s"] = time.perf_counter() - t1
    out["app_note"] = [i.value[:40] for i in at.info]
if job.get("layer"):
    from analysis.sweep import SweepSpec, sweep_layer
    W = reader.weight(job["layer"])
    t1, c1 = time.perf_counter(), time.process_time()
    table = sweep_layer(W, SweepSpec(**job["spec"])).table
    out["sweep_s"] = time.perf_counter() - t1
    out["sweep_cpu_s"] = time.process_time() - c1
    out["rel_fro_error"] = table["rel_fro_error"].round(4).tolist()
out["wall_s"] = time.perf_counter() - t0
out["cpu_s"] = time.process_time() - c0
# VmHWM: this process's peak resident set (getrusage's maxrss survives exec from the parent)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
out["peak_mb"] = int(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def child(job: dict) -> dict:
    """Run one measurement in a fresh Python process; return its JSON report."""
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(job)], capture_output=True,
                          text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                                    "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
                          check=False)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", help="build the checkpoints in this folder and keep them")
    parser.add_argument("--no-shapes", action="store_true", help="skip the per-shape timing (3.)")
    args = parser.parse_args()
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="idlora-scale-"))
    try:
        ckpts = {}
        for blocks in (2, 4):
            folder = base / f"llama3-8b-shaped-{blocks}-blocks"
            if not (folder / "config.json").is_file():
                write_checkpoint(folder, blocks)
            size = sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 1e9
            ckpts[blocks] = folder
            print(f"checkpoint {blocks} blocks: {size:.2f} GB bf16, "
                  f"{len(list(folder.glob('*.safetensors')))} shards")
        listing = child({"model": str(ckpts[4])})
        print(f"1. list layers (4 blocks): {listing['layers']} layers, {listing['wall_s']:.2f} s wall, "
              f"peak {listing['peak_mb']:.0f} MB  (targets < 3 s, < 1024 MB)")
        page = child({"model": str(ckpts[4]), "app": True})
        print(f"1b. Model & layers page on the 4-block checkpoint: {page['app_s']:.1f} s "
              f"(imports excluded), peak {page['peak_mb']:.0f} MB; says: {page['app_note']}")
        layer = "model.layers.1.mlp.down_proj"
        sweeps = {b: child({"model": str(ckpts[b]), "layer": layer, "spec": SPEC}) for b in (2, 4)}
        for b, r in sweeps.items():
            print(f"2. sweep {layer} ({b} blocks): sweep {r['sweep_s']:.1f} s wall, "
                  f"{r['sweep_cpu_s']:.1f} s CPU; peak {r['peak_mb']:.0f} MB (target < 1536 MB); errors {r['rel_fro_error']}")
        ratio = sweeps[4]["peak_mb"] / sweeps[2]["peak_mb"]
        print(f"   peak 4 blocks / 2 blocks = {ratio:.3f} (target within 15 %)")
        if not args.no_shapes:
            per_kind = {}
            for kind, (m, n) in SHAPES_8B.items():
                part = "self_attn" if kind[0] in "qkvo" else "mlp"
                r = sweeps[2] if kind == "down_proj" else child(
                    {"model": str(ckpts[2]), "layer": f"model.layers.0.{part}.{kind}", "spec": SPEC})
                per_kind[kind] = r["sweep_cpu_s"]  # CPU seconds: robust to a loaded machine
                print(f"3. {kind:9s} {m:>5} x {n:<5}: {r['sweep_cpu_s']:.1f} s CPU "
                      f"({r['sweep_s']:.1f} s wall), peak {r['peak_mb']:.0f} MB")
            block_s = sum(per_kind.values())
            seconds_per_entry = {k: per_kind[k] / (m * n) for k, (m, n) in SHAPES_8B.items()}
            block70 = sum(seconds_per_entry[k] * m * n for k, (m, n) in SHAPES_70B.items())
            print(f"   projected CPU time, 1 BLAS thread: 8B scan (32 blocks, 224 layers) "
                  f"{32 * block_s / 3600:.2f} h; 70B (80 blocks, 560 layers, scaled by m*n) "
                  f"{80 * block70 / 3600:.1f} h; divide by the workers")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
