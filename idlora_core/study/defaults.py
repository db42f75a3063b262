"""Default learning rate per method, chosen by study preset (a) on real data (MiniLM,
Rotten Tomatoes, 80 steps of batch 16 with 8 warm-up steps, ID-LoRA r = 8 and LoRA r = 4 / 8,
k = 4, 5 seeds; `configs/studies/minilm_rotten_tomatoes.yaml`): for each method the learning
rate of its grid with the best mean VALIDATION accuracy over seeds (docs/STUDIES.md). DoRA and
HydraLoRA were not in that study: they start at LoRA's rate (DoRA is LoRA plus a magnitude
vector; HydraLoRA's B-heads are LoRA's B); AdaLoRA's 3e-2 is the best of 3e-3 / 1e-2 / 3e-2 /
1e-1 in a reduced run of preset (c) (`configs/studies/minilm_plan_vs_uniform.yaml`, 2 seeds,
validation; its update B diag(E) A starts from E = 0 between small A and B, std 0.02, so at a
given rate it grows more slowly than LoRA's); full fine-tuning starts at 1e-4, the usual BERT rate
(1e-3 diverges on some seeds). A single run's YAML keeps one `train.learning_rate`; these are
only what the Fine-tune and Studies pages start from.
"""

from __future__ import annotations

DEFAULT_LEARNING_RATES: dict[str, float] = {
    "idlora": 1e-2,
    "lora": 3e-3,
    "dora": 3e-3,
    "adalora": 3e-2,  # preset (c)'s reduced run (2 seeds): 3e-3 / 1e-1 one class, 1e-2 0.59
    "hydralora": 3e-3,
    "full": 1e-4,
    "head-only": 1.0,
    "base": 1e-2,  # trains nothing; kept so every method has an entry
}


def default_learning_rate(method: str) -> float:
    """Return the default learning rate of `method` (1e-3 for a method not in the table)."""
    return DEFAULT_LEARNING_RATES.get(method, 1e-3)
