"""Benchmark one training step (forward + backward + AdamW step) of four adapters on SmolLM2-135M.

ID-LoRA (k=4, r=8, centroid), PEFT LoRA (r=8), PEFT DoRA (r=8) and HydraLoRA (N=4, r=8) on
q/k/v/o/gate/up/down of every block, batch 4 x 128 tokens, the methods interleaved round by
round in one process so that machine noise hits them alike. Two more ID-LoRA variants on
request: `idlora-copy`, the layer before issue 13 (a frozen (k, r, n) copy of the skeleton rows
and a second matmul; kept here only as the measured reference), and `idlora-compile`
(`compile_adapters: true`, the adapter update through torch.compile). Prints one table:
  step_ms       median wall time of a training step (ms)
  step_cpu_ms   median CPU time this process spent in a step (ms; all its threads): on a
                shared CPU machine the steadier figure, since other processes' load does not
                count in it. The CPU targets use it; on CUDA the wall time is used
  infer_ms      median wall time of a no-grad forward (ms); the base model is the reference
  infer_cpu_ms  the same in process CPU time
  trainable     trainable elements of the adapters
  frozen_buf    frozen floating-point adapter elements (0; idlora-copy: its A_c rows)
  adapter_MB    trainable weights + their gradients + AdamW state + adapter buffers (frozen
                rows, skeleton indices) (MiB, measured from the real tensors)
  act_MB        activations saved for backward by one step (MiB, unique storages, no weights)
  state_MB      what the adapters add to the model's state dict (MiB: adapter tensors and buffers,
                i.e. what a whole-model save would add to the base checkpoint)
  file_MB       size of the adapter weights file `save_adapters` writes (MiB)
  peak_MB       peak device memory a step allocates above what was resident before it (MiB,
                CUDA only: activations, gradients, temporaries)
  prep_s        seconds to adapt the model (ID-LoRA: k-means + selection on every layer, unless
                the skeletons are in the on-disk cache; --no-skeleton-cache forces clustering)
and the target checks (issue 13): ID-LoRA frozen adapter elements 0; adapter memory <= 0.55x
LoRA's; step time <= 1.0x LoRA's on the CPU (<= 1.05x on a GPU); inference overhead over the
base model <= unmerged LoRA's; adapter memory below HydraLoRA's. `--json OUT` writes every
figure of the table, the ratios and the run's settings.

    .venv/bin/python bench/adapter_step.py [--device cpu|cuda] [--rounds 5] [--batch 4] [--seq 128]
        [--methods idlora lora idlora-copy ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from idlora_core.adapters.idlora import IDLoRALinear
from idlora_core.adapters.model import apply_adapters
from idlora_core.config import AdapterConfig, TargetConfig
from idlora_core.models import load_model

PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
METHODS = {
    "idlora": dict(r=8, k=4, selection="centroid"),
    "lora": dict(r=8),
    "dora": dict(r=8),
    "hydralora": dict(r=8, heads=4),
    "idlora-copy": dict(r=8, k=4, selection="centroid"),
    "idlora-compile": dict(r=8, k=4, selection="centroid"),
}
DEFAULT_METHODS = ["idlora", "lora", "dora", "hydralora", "idlora-copy"]


class CopyIDLoRALinear(nn.Module):
    """The ID-LoRA layer before issue 13, for measurement only: a frozen (k, r, n) copy of the
    skeleton rows `idlora_A`, z_c = A_c x by a second matmul, the router as multiply-sum-softmax-
    multiply-sum."""

    def __init__(self, new: IDLoRALinear):
        super().__init__()
        self.base_layer, self.k, self.r, self.rb_splits = new.base_layer, new.k, new.r, new.rb_splits
        self.scaling = new.scaling
        w = new.base_layer.weight
        self.register_buffer("idlora_A", w.detach()[new.idlora_skeleton].clone())  # (k, r, n)
        self.idlora_T, self.idlora_B = new.idlora_T, new.idlora_B

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, r, n = self.idlora_A.shape
        zc = (x @ self.idlora_A.reshape(k * r, n).T).unflatten(-1, (k, r))
        a = torch.softmax((zc * self.idlora_T).sum(-1), dim=-1) * self.scaling
        z = (a.unsqueeze(-1) * zc).sum(-2)
        p = self.rb_splits
        dy = z @ self.idlora_B.T if p == 1 else (z.unflatten(-1, (p, r // p)) @ self.idlora_B.T).flatten(-2)
        return self.base_layer(x) + dy


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


def build(base: nn.Module, method: str, r: int, k: int, cache: bool = True) -> tuple[nn.Module, float, object, object]:
    """Return (adapted copy of base, preprocessing seconds, report, the AdaptedModel)."""
    params = dict(METHODS[method])
    params["r"] = r
    for key in ("k", "heads"):  # --k: ID-LoRA's clusters and HydraLoRA's heads N
        if key in params:
            params[key] = k
    cfg = AdapterConfig(method=method.split("-")[0], targets=[TargetConfig(pattern=p, **params) for p in PROJ],
                        compile_adapters=method == "idlora-compile")
    start = time.perf_counter()
    adapted = apply_adapters(copy.deepcopy(base), cfg, cache=cache)
    model, report = adapted.module, adapted.report
    if method == "idlora-copy":
        for name, module in list(model.named_modules()):
            if isinstance(module, IDLoRALinear):
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent), child, CopyIDLoRALinear(module))
        report.rows = [replace_frozen(row, model) for row in report.rows]
    return model, time.perf_counter() - start, report, adapted


def replace_frozen(row, model: nn.Module):
    """Return the report row of an idlora-copy layer with its frozen A_c elements counted."""
    frozen = model.get_submodule(row.name).idlora_A.numel()
    return dataclasses.replace(row, frozen_adapter_elements=frozen)


def state_bytes(model: nn.Module, base_keys: set[str]) -> int:
    """Bytes of the state-dict entries of `model` that are not base-model weights."""
    total = 0
    for key, t in model.state_dict().items():
        plain = key.replace("base_model.model.", "").replace(".base_layer", "")
        if plain not in base_keys and not key.endswith(".base_layer.weight"):
            total += t.numel() * t.element_size()
    return total


def file_bytes(adapted) -> int:
    """Bytes of the adapter weights file `save_adapters` writes for an AdaptedModel."""
    import tempfile

    from idlora_core.adapters.io import save_adapters

    with tempfile.TemporaryDirectory() as folder:
        save_adapters(adapted, folder)
        return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and print the table; return the per-method numbers."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rounds", type=int, default=5, help="timed steps per method (after 1 warm-up)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--k", type=int, default=4, help="ID-LoRA clusters and HydraLoRA heads N")
    ap.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    ap.add_argument("--infer-repeats", type=int, default=3,
                    help="no-grad forwards per method and round (interleaved with the base model)")
    ap.add_argument("--json", metavar="OUT", help="write every figure of the table to this JSON file")
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

    models, optims, prep, reports, configs = {}, {}, {}, {}, {}
    base_keys = set(base.state_dict())
    for method in args.methods:
        model, seconds, report, configs[method] = build(base, method, args.r, args.k,
                                                         cache=not args.no_skeleton_cache)
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
        for _ in range(args.infer_repeats - 1):  # extra no-grad passes, interleaved with the base
            infer_times["base"].append(infer(base))
            for m in args.methods:
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
            "state_MB": _mb(state_bytes(models[m], base_keys)),
            "file_MB": _mb(file_bytes(configs[m])),
            "peak_MB": _mb(peaks[m]) if device.type == "cuda" else float("nan"),
            "prep_s": prep[m],
        }
    timing = "_cpu_ms" if device.type == "cpu" else "_ms"
    base_ms = med(infer_times["base"], 1 if device.type == "cpu" else 0)
    print(f"SmolLM2-135M, {len(reports[args.methods[0]].rows)} adapted layers, batch {args.batch} x "
          f"{args.seq} tokens, device {device}, {dtype}, {args.rounds} interleaved rounds, "
          f"torch threads {torch.get_num_threads()}")
    cols = ["step_ms", "step_cpu_ms", "infer_ms", "infer_cpu_ms", "trainable", "frozen_buf",
            "adapter_MB", "act_MB", "state_MB", "file_MB", "peak_MB", "prep_s"]
    print(f"{'method':<15}" + "".join(f"{c:>13}" for c in cols))
    print(f"{'base':<15}{'':>26}{med(infer_times['base'], 0):>13.1f}{med(infer_times['base'], 1):>13.1f}")
    for m, row in results.items():
        cells = "".join(f"{row[c]:>13,}" if isinstance(row[c], int) else f"{row[c]:>13.1f}" for c in cols)
        print(f"{m:<15}" + cells)
    checks = target_checks(results, base_ms, timing, device.type)
    for line in checks["lines"]:
        print(line)
    if args.json:
        payload = {
            "settings": {"model": "smollm2-135m", "layers": len(reports[args.methods[0]].rows),
                         "batch": args.batch, "seq": args.seq, "r": args.r, "k": args.k,
                         "device": str(device), "dtype": str(dtype).replace("torch.", ""),
                         "rounds": args.rounds, "infer_repeats": args.infer_repeats, "threads": torch.get_num_threads(),
                         "timing": "process CPU time" if device.type == "cpu" else "wall time"},
            "base": {"infer_ms": med(infer_times["base"], 0), "infer_cpu_ms": med(infer_times["base"], 1)},
            "methods": results,
            "ratios": checks["ratios"],
            "targets_met": checks["met"],
        }
        Path(args.json).write_text(json.dumps(payload, indent=1, allow_nan=True), encoding="utf-8")
        print(f"wrote {args.json}")
    return results


def target_checks(results: dict, base_ms: float, timing: str, device: str) -> dict:
    """Return {"ratios", "met", "lines"}: the issue-13 targets measured in `results`."""
    ratios, met, lines = {}, {}, []
    step_target = 1.0 if device == "cpu" else 1.05

    def check(name: str, value: float, ok: bool, text: str) -> None:
        ratios[name], met[name] = value, ok
        lines.append(f"{text}  {'OK' if ok else 'MISSED'}")

    idl = results.get("idlora")
    if idl is not None:
        check("idlora_frozen_elements", idl["frozen_buf"], idl["frozen_buf"] == 0,
              f"ID-LoRA frozen adapter elements: {idl['frozen_buf']:,} (target 0)")
    for other in ("idlora-copy", "idlora-compile"):
        if idl is not None and other in results:
            r = results[other]["step" + timing] / idl["step" + timing]
            ratios[f"{other}_step_over_idlora"] = r
            lines.append(f"{other} step / ID-LoRA (step{timing}): {r:.3f}; adapter memory "
                         f"{results[other]['adapter_MB']:.1f} vs {idl['adapter_MB']:.1f} MiB")
    if idl is not None and "lora" in results:
        lora = results["lora"]
        r = idl["adapter_MB"] / lora["adapter_MB"]
        check("idlora_over_lora_memory", r, r <= 0.55, f"ID-LoRA adapter memory / LoRA: {r:.3f} (target <= 0.55)")
        r = idl["step" + timing] / lora["step" + timing]
        check("idlora_over_lora_step", r, r <= step_target,
              f"ID-LoRA step time / LoRA (step{timing}): {r:.3f} (target <= {step_target})")
        over_id = idl["infer" + timing] / base_ms - 1
        over_lora = lora["infer" + timing] / base_ms - 1
        ratios["lora_infer_overhead"] = over_lora
        check("idlora_infer_overhead", over_id, over_id <= over_lora,
              f"inference overhead vs base model (infer{timing}): ID-LoRA {100 * over_id:+.1f} %, "
              f"LoRA unmerged {100 * over_lora:+.1f} % (target: ID-LoRA <= LoRA)")
    if idl is not None and "hydralora" in results:
        r = idl["adapter_MB"] / results["hydralora"]["adapter_MB"]
        check("idlora_over_hydralora_memory", r, r < 1,
              f"ID-LoRA adapter memory / HydraLoRA: {r:.3f} ({100 * (1 - r):.0f} % less; target < 1)")
    return {"ratios": ratios, "met": met, "lines": lines}


if __name__ == "__main__":
    main()
