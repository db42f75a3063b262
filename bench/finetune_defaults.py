"""Do the Fine-tune page's defaults teach? Run them as the page would, one after another.

Builds every run of the page's default settings (`app.settings_io.finetune_configs` on the
default session state, the default layer selection of Model & layers, all-MiniLM-L6-v2,
sentiment), then runs them in sequence through `python -m idlora_core.train` — the global
run limit on a 2-core machine is one run at a time — and prints, per run, the wall time and
the final eval accuracy, then the total wall time. Targets (issue 10): every default method
reaches eval accuracy >= 0.80 and all default runs finish within 120 s.

    python bench/finetune_defaults.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from analysis.layers import filter_layers, layer_table  # noqa: E402
from app.common import DEFAULTS as PAGE_DEFAULTS  # noqa: E402
from app.settings_io import finetune_configs, init_defaults  # noqa: E402
from idlora_core.config import save_config  # noqa: E402
from idlora_core.training.run_files import read_run_json  # noqa: E402
from idlora_core.weights import open_weights  # noqa: E402


def default_runs() -> list[tuple[str, object]]:
    """Return (label, RunConfig) of every run the Fine-tune page starts with its defaults."""
    state: dict = {}
    init_defaults(state)
    reader = open_weights("minilm")
    layers = list(filter_layers(layer_table(reader), kinds=PAGE_DEFAULTS["layer_kinds"],
                                blocks=PAGE_DEFAULTS["block_range"])["name"])
    return finetune_configs(state, "minilm", "encoder", layers)


def main() -> int:
    """Run the default runs in sequence; returns 0 when both targets are met, else 1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write every figure to this JSON file")
    args = parser.parse_args()
    rows, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, cfg) in enumerate(default_runs()):
            out = Path(tmp) / f"run{i}"
            cfg = cfg.model_copy(update={"output_dir": str(out)})
            path = save_config(cfg, Path(tmp) / f"run{i}.yaml")
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "idlora_core.train", str(path), "--no-progress"],
                           cwd=REPO, check=True, stdout=subprocess.DEVNULL)
            final = read_run_json(out).get("final_metrics", {})
            rows.append({"run": label, "learning_rate": cfg.train.learning_rate,
                         "steps": cfg.train.steps, "batch_size": cfg.train.batch_size,
                         "seconds": round(time.perf_counter() - t0, 1),
                         "eval_accuracy": final.get("eval_sentiment_accuracy")})
            print(f"{label:24s} lr {cfg.train.learning_rate:g}: accuracy "
                  f"{rows[-1]['eval_accuracy']:.3f} in {rows[-1]['seconds']:.1f} s", flush=True)
    total = time.perf_counter() - start
    ok = all((r["eval_accuracy"] or 0) >= 0.80 for r in rows) and total <= 120
    print(f"all default runs in sequence: {total:.1f} s; targets (every accuracy >= 0.80, "
          f"<= 120 s): {'met' if ok else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": rows, "total_seconds": round(total, 1),
                                               "met": ok}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
