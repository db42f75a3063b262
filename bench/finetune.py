"""Bench of the training engine (issue 4, section 5). Run: `python bench/finetune.py --out DIR`.

The SmolLM2 multi-task config (`configs/smollm2_multitask_idlora.yaml`) for 60 steps with
ID-LoRA (k=4, r=8) and with LoRA (r=8) on the same layers (q_proj, o_proj), one after the
other in this process. Reports the step-time ratio (ID-LoRA / LoRA, mean seconds per
optimiser step without the first warm-up steps and without evaluation), the trainable
parameter ratio (expected about 0.5 for square layers: (m*r + k*r) / (2*m*r)), tokens/s,
peak memory and the final eval metrics of both. On a GPU (`--device cuda --precision bf16`)
the same script reports bf16 tokens/s. Writes DIR/results.json, DIR/results.md and the two
run folders DIR/runs/{idlora,lora}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from idlora_core.config import apply_overrides, load_config  # noqa: E402
from idlora_core.training.compare import compare_runs, to_markdown  # noqa: E402
from idlora_core.training.run_files import read_metrics  # noqa: E402
from idlora_core.training.setup import resolve_device  # noqa: E402
from idlora_core.training.trainer import run_training  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "smollm2_multitask_idlora.yaml"
WARMUP_STEPS = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for results.json, results.md and the runs")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="per-device batch (default: the config's on a GPU, 4 on the CPU)")
    parser.add_argument("--seq-len", type=int, default=None,
                        help="max tokens per example (default: the config's on a GPU, 64 on the CPU)")
    parser.add_argument("--num-eval", type=int, default=None,
                        help="eval examples per task (default: the config's on a GPU, 16 on the CPU)")
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--paired", type=int, default=5,
                        help="also time N forward+backward passes of both models alternately on one "
                             "batch (robust to other load on the machine); 0 = skip")
    return parser.parse_args(argv)


def bench_config(args: argparse.Namespace, method: str):
    """Return the run config of one method: the multi-task config with the bench's overrides."""
    cfg = load_config(args.config)
    overrides = [f"train.steps={args.steps}", f"train.device={args.device}",
                 f"train.precision={args.precision}", f"adapter.method={method}",
                 f"output_dir={Path(args.out) / 'runs' / method}", "train.eval_interval=0",
                 "train.save_interval=0"]
    device, _ = resolve_device(cfg.train.model_copy(update={"device": args.device}))
    cpu = device == "cpu"
    batch = args.batch_size or (4 if cpu else None)
    seq_len = args.seq_len or (64 if cpu else None)
    num_eval = args.num_eval or (16 if cpu else None)
    if batch:
        overrides.append(f"train.batch_size={batch}")
    if seq_len:
        overrides.append(f"train.seq_len={seq_len}")
    for i in range(len(cfg.tasks)):
        if num_eval:
            overrides.append(f"tasks.{i}.num_eval={num_eval}")
    for i in range(len(cfg.adapter.targets)):
        overrides += [f"adapter.targets.{i}.r=8", f"adapter.targets.{i}.k=4"]
    return apply_overrides(cfg, overrides)


def step_seconds(run_dir: Path) -> float:
    """Return the mean seconds per optimiser step after the warm-up steps."""
    rows = [r for r in read_metrics(run_dir) if r.get("step_seconds") is not None]
    timed = [r["step_seconds"] for r in rows if r["step"] > WARMUP_STEPS] or [r["step_seconds"] for r in rows]
    return sum(timed) / len(timed)


def paired_step_ratio(args: argparse.Namespace, repeats: int) -> dict[str, float]:
    """Return median seconds of forward+backward for both methods, timed alternately on one batch."""
    import statistics
    import time

    import torch

    from idlora_core.tasks import load_tasks
    from idlora_core.training.data import PadCollator, build_train_dataset
    from idlora_core.training.setup import build_model

    models, batch = {}, None
    for method in ("idlora", "lora"):
        cfg = bench_config(args, method)
        tasks = load_tasks(cfg.tasks, seed=cfg.train.seed)
        adapted, tokenizer, _ = build_model(cfg, tasks)
        model = adapted.module
        device, _ = resolve_device(cfg.train)
        models[method] = model.to(device).train()
        if batch is None:
            items = build_train_dataset(tokenizer, tasks, [t.weight for t in cfg.tasks], cfg.train.seq_len,
                                        cfg.train.seed).items[: cfg.train.batch_size]
            batch = {k: v.to(device) for k, v in PadCollator(tokenizer.pad_token_id)(items).items()}
    times: dict[str, list[float]] = {m: [] for m in models}
    for _ in range(repeats + 1):  # the first round warms up
        for method, model in models.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(**batch).loss.backward()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[method].append(time.perf_counter() - start)
            model.zero_grad(set_to_none=True)
    median = {m: statistics.median(t[1:]) for m, t in times.items()}
    return {"idlora_s": median["idlora"], "lora_s": median["lora"], "ratio": median["idlora"] / median["lora"]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"command": "python bench/finetune.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                     "machine": platform.platform(), "methods": {}}
    for method in ("idlora", "lora"):
        cfg = bench_config(args, method)
        print(f"== {method}: {cfg.train.steps} steps, batch {cfg.train.batch_size}, seq_len {cfg.train.seq_len}",
              flush=True)
        result = run_training(cfg, progress=True, overwrite=True)  # a re-run replaces the last one
        if result.state != "finished":
            print(f"{method} run {result.state}: {result.message}", file=sys.stderr)
            return 1
        run_dir = Path(cfg.output_dir)
        summary = json.loads((run_dir / "run.json").read_text())
        results["methods"][method] = {
            "trainable_params": result.final_metrics["trainable_params"],
            "step_seconds": step_seconds(run_dir),
            "tokens_per_s": result.final_metrics["tokens_per_s"],
            "peak_memory_mb": result.final_metrics["peak_memory_mb"],
            "final_train_loss": result.final_metrics["final_train_loss"],
            "eval": {k: v for k, v in result.final_metrics.items() if k.startswith("eval_")},
            "device": summary["device"],
        }
    ido, lora = results["methods"]["idlora"], results["methods"]["lora"]
    results["step_time_ratio"] = ido["step_seconds"] / lora["step_seconds"]
    results["trainable_ratio"] = ido["trainable_params"] / lora["trainable_params"]
    if args.paired:
        results["paired"] = paired_step_ratio(args, args.paired)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    table = [
        "| metric | ID-LoRA (k=4, r=8) | LoRA (r=8) |", "| --- | --- | --- |",
        f"| trainable params | {ido['trainable_params']:,} | {lora['trainable_params']:,} |",
        f"| s / step | {ido['step_seconds']:.3f} | {lora['step_seconds']:.3f} |",
        f"| tokens / s | {ido['tokens_per_s']:.0f} | {lora['tokens_per_s']:.0f} |",
        f"| peak memory (MiB) | {ido['peak_memory_mb']:.0f} | {lora['peak_memory_mb']:.0f} |",
        f"| final train loss | {ido['final_train_loss']:.4f} | {lora['final_train_loss']:.4f} |",
    ] + [f"| {k} | {ido['eval'][k]:.4f} | {lora['eval'].get(k, float('nan')):.4f} |" for k in sorted(ido["eval"])]
    device = ido["device"]
    text = (f"# bench/finetune.py\n\n`{results['command']}` on {device['name']} ({device['type']}, "
            f"{device['precision']}), {args.steps} steps\n\n" + "\n".join(table) + "\n\n"
            f"step-time ratio ID-LoRA / LoRA: **{results['step_time_ratio']:.2f}**; "
            f"trainable ratio: **{results['trainable_ratio']:.3f}** (expected about 0.5)\n\n"
            + (f"paired timing (forward+backward on one batch, alternating, median of {args.paired}): "
               f"ID-LoRA {results['paired']['idlora_s']:.3f} s, LoRA {results['paired']['lora_s']:.3f} s, "
               f"ratio **{results['paired']['ratio']:.2f}**\n\n" if args.paired else "")
            +
            "## compare\n\n" + to_markdown(compare_runs([out / "runs" / "idlora", out / "runs" / "lora"])))
    (out / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
