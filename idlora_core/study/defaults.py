"""Default learning rate per method, measured by study preset (a) (MiniLM, sentiment, 30 steps,
batch 16, r in {4, 8, 16}, k = 4, 3 seeds; `configs/studies/minilm_sentiment.yaml`): for each
method the learning rate of its grid with the best mean eval accuracy over seeds and ranks.
See docs/STUDIES.md for the table it comes from. A single run's YAML keeps one
`train.learning_rate`; these are only what the Fine-tune and Studies pages start from.
"""

from __future__ import annotations

DEFAULT_LEARNING_RATES: dict[str, float] = {
    "idlora": 1e-2,
    "lora": 1e-2,
    "dora": 1e-2,
    "hydralora": 1e-2,
    "full": 1e-3,
    "head-only": 1e-2,
    "base": 1e-2,  # trains nothing; kept so every method has an entry
}


def default_learning_rate(method: str) -> float:
    """Return the default learning rate of `method` (1e-3 for a method not in the table)."""
    return DEFAULT_LEARNING_RATES.get(method, 1e-3)
