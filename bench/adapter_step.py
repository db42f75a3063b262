"""Benchmark one training step (forward + backward + AdamW step) of four adapters on SmolLM2-135M.

ID-LoRA (k=4, r=8, centroid), PEFT LoRA (r=8), PEFT DoRA (r=8) and HydraLoRA (N=4, r=8) on
q/k/v/o/gate/up/down of every block, batch 4 x 128 tokens, the methods interleaved round by
round in one process so that machine noise hits them alike. Prints one table:
  step_ms       median wall time of a training step (ms)
  step_cpu_ms   median CPU time this process spent in a step (ms; all its threads): on a
                shared CPU machine the steadier figure, since other processes' load does not
                count in it. The CPU targets use it; on CUDA the wall time is used
  infer_ms      median wall time of a no-grad forward (ms); the base model is the reference
  infer_cpu_ms  the same in process CPU time
  trainable     trainable elements of the adapters
  frozen_buf    frozen adapter elements (ID-LoRA's A_c buffers)
  adapter_MB    trainable weights + their gradients + AdamW state + frozen buffers (MiB,
                measured from the real tensors)
  act_MB        activations saved for backward by one step (MiB, unique storages, no weights)
  peak_MB       peak device memory a step allocates above what was resident before it (MiB,
                CUDA only: activations, gradients, temporaries)
  prep_s        seconds to adapt the model (ID-LoRA: k-means + selection on every layer, unless
                the skeletons are in the on-disk cache; --no-skeleton-cache forces clustering)
and the two target ratios: ID-LoRA step time / LoRA's (target <= 1.25) and ID-LoRA adapter
memory / HydraLoRA's (target < 1).

    .venv/bin/python bench/adapter_step.py [--device cpu|cuda] [--rounds 5] [--batch 4] [--seq 128]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from idlora_core.adapters.inject import apply_adapters
from idlora_core.config import AdapterConfig, TargetConfig
from idlora_core.models import load_model

PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
METHODS = {
    "idlora": dict(r=8, k=4, selection="centroid"),
    "lora": dict(r=8),
    "dora": dict(r=8),
    "hydralora": dict(r=8, k=4),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _mb(n_bytes: int) -> float:
    return n_bytes / 2**20


def adapter_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of trainable tensors, their gradients, the optimiser state and idlora_ buffers."""
    total = 0
    for p in model.parameters():
        if p.requires_grad:
            total += p.numel() * p.element_size()
            if p.grad is not None:
                total += p.grad.numel() * p.grad.element_size()
    for state in optimizer.state.values():
        total += sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t) and t.ndim)
    for name, b in model.named_buffers():
        if name.rsplit(".", 1)[-1].startswith("idlora_"):
            total += b.numel() * b.element_size()
    return total


def saved_activation_bytes(model: nn.Module, batch: dict) -> int:
    """Bytes of the tensors autograd saves for backward in one forward (unique storages,
    parameters and buffers excluded)."""
    weights = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch).loss
    del loss
    return sum(seen.values())


def build(base: nn.Module, method: str, r: int, k: int, cache: bool = True) -> tuple[nn.Module, float, object]:
    """Return (adapted copy of base, preprocessing seconds, report)."""
    params = dict(METHODS[method])
    params["r"] = r
    if "k" in params:
        params["k"] = k
    cfg = AdapterConfig(method=method, targets=[TargetConfig(pattern=p, **params) for p in PROJ])
    start = time.perf_counter()
    model, report = apply_adapters(copy.deepcopy(base), cfg, cache=cache)
    return model, time.perf_counter() - start, report


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and print the table; return the per-method numbers."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rounds", type=int, default=5, help="timed steps per method (after 1 warm-up)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--k", type=int, default=4, help="ID-LoRA clusters and HydraLoRA heads N")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
                    help="model dtype; auto = bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--no-skeleton-cache", action="store_true",
                    help="cluster every layer afresh (prep_s then measures ID-LoRA preprocessing)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0 = torch default); 1 is steadier on a busy machine")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(
        args.dtype, torch.bfloat16 if device.type == "cuda" else torch.float32
    )

    loaded = load_model("smollm2-135m", head="causal-lm", dtype=dtype)
    base = loaded.model
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, base.config.vocab_size, (args.batch, args.seq), generator=gen).to(device)
    batch = {"input_ids": ids, "labels": ids}

    models, optims, prep, reports = {}, {}, {}, {}
    for method in args.methods:
        model, seconds, report = build(base, method, args.r, args.k, cache=not args.no_skeleton_cache)
        models[method] = model.to(device).train()
        optims[method] = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        prep[method], reports[method] = seconds, report
    base = base.to(device).eval()

    def step(method: str) -> tuple[float, float]:
        model, opt = models[method], optims[method]
        _sync(device)
        start, cpu = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        opt.step()
        _sync(device)
        return time.perf_counter() - start, time.process_time() - cpu

    def infer(model: nn.Module) -> tuple[float, float]:
        _sync(device)
        start, cpu = time.perf_counter(), time.process_time()
        with torch.no_grad():
            model(input_ids=ids)
        _sync(device)
        return time.perf_counter() - start, time.process_time() - cpu

    step_times = {m: [] for m in args.methods}
    infer_times = {m: [] for m in ["base", *args.methods]}
    peaks = {m: 0 for m in args.methods}
    for m in args.methods:  # warm-up: allocates the optimiser state
        step(m)
    for _ in range(args.rounds):
        infer_times["base"].append(infer(base))
        for m in args.methods:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                resident = torch.cuda.memory_allocated(device)  # all four models + optimiser state
            step_times[m].append(step(m))
            if device.type == "cuda":
                peaks[m] = max(peaks[m], torch.cuda.max_memory_allocated(device) - resident)
            models[m].eval()
            infer_times[m].append(infer(models[m]))
            models[m].train()

    def med(times: list[tuple[float, float]], which: int) -> float:
        return 1e3 * statistics.median(t[which] for t in times)

    results = {}
    for m in args.methods:
        totals = reports[m].totals
        results[m] = {
            "step_ms": med(step_times[m], 0),
            "step_cpu_ms": med(step_times[m], 1),
            "infer_ms": med(infer_times[m], 0),
            "infer_cpu_ms": med(infer_times[m], 1),
            "trainable": totals["trainable"],
            "frozen_buf": totals["frozen_adapter_elements"],
            "adapter_MB": _mb(adapter_bytes(models[m], optims[m])),
            "act_MB": _mb(saved_activation_bytes(models[m], batch)),
            "peak_MB": _mb(peaks[m]) if device.type == "cuda" else float("nan"),
            "prep_s": prep[m],
        }
    timing = "_cpu_ms" if device.type == "cpu" else "_ms"
    base_ms = med(infer_times["base"], 1 if device.type == "cpu" else 0)
    print(f"SmolLM2-135M, {len(reports[args.methods[0]].rows)} adapted layers, batch {args.batch} x "
          f"{args.seq} tokens, device {device}, {dtype}, {args.rounds} interleaved rounds, "
          f"torch threads {torch.get_num_threads()}")
    cols = ["step_ms", "step_cpu_ms", "infer_ms", "infer_cpu_ms", "trainable", "frozen_buf",
            "adapter_MB", "act_MB", "peak_MB", "prep_s"]
    print(f"{'method':<10}" + "".join(f"{c:>13}" for c in cols))
    print(f"{'base':<10}{'':>26}{med(infer_times['base'], 0):>13.1f}{med(infer_times['base'], 1):>13.1f}")
    for m, row in results.items():
        cells = "".join(f"{row[c]:>13,}" if isinstance(row[c], int) else f"{row[c]:>13.1f}" for c in cols)
        print(f"{m:<10}" + cells)
    if "idlora" in results and "lora" in results:
        ratio = results["idlora"]["step" + timing] / results["lora"]["step" + timing]
        print(f"ID-LoRA step time / LoRA (step{timing}): {ratio:.3f}  (target <= 1.25) "
              f"{'OK' if ratio <= 1.25 else 'MISSED'}")
        over = results["idlora"]["infer" + timing] / base_ms - 1
        print(f"inference overhead vs base model (infer{timing}): ID-LoRA {100 * over:+.1f} %, "
              f"LoRA unmerged {100 * (results['lora']['infer' + timing] / base_ms - 1):+.1f} %")
    if "idlora" in results and "hydralora" in results:
        ratio = results["idlora"]["adapter_MB"] / results["hydralora"]["adapter_MB"]
        print(f"ID-LoRA adapter memory / HydraLoRA: {ratio:.3f}  ({100 * (1 - ratio):.0f} % less; "
              f"target < 1) {'OK' if ratio < 1 else 'MISSED'}")
    return results


if __name__ == "__main__":
    main()
