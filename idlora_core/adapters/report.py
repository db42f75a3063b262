"""`AdapterReport`: what an adapted model trains, layer by layer, the same for all six methods.

Counts come from the real modules (`requires_grad` parameters and `idlora_` buffers); the
`formula` column is `budget.trainable_params` for the same layer, so the two can be compared.
This file only describes; `inject.py` builds reports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class LayerRow:
    """One adapted linear layer of shape (m, n) = (out_features, in_features)."""

    name: str
    block: int | None
    m: int
    n: int
    method: str
    r: int | None  # rank (None for full fine-tuning)
    k: int | None  # ID-LoRA clusters (None otherwise)
    heads: int | None  # HydraLoRA heads N (None otherwise)
    p: int  # ID-LoRA rank-boosting splits (1 otherwise)
    bias: bool  # the base layer has a bias
    trainable: int  # elements with requires_grad, counted from the modules
    frozen_adapter_elements: int  # frozen floating-point adapter elements (0: no copied A_c rows)
    formula: int  # docs/ADAPTERS.md formula for the same layer
    adapter_bytes: int  # bytes of trainable tensors + adapter buffers (ID-LoRA: skeleton indices)

    @property
    def shape(self) -> tuple[int, int]:
        """(m, n) of the base weight."""
        return (self.m, self.n)


@dataclass
class AdapterReport:
    """Per-layer rows, the trainable head (counted apart) and model totals for one adapted model."""

    method: str
    rows: list[LayerRow]
    head_trainable: int = 0  # trainable elements of extra head modules (e.g. a classifier)
    head_modules: list[str] = field(default_factory=list)
    base_params: int = 0  # parameter elements of the model before adaptation
    total_params: int = 0  # parameter elements of the adapted model (adapters included)
    resolved_skeletons: dict[str, list[list[int]]] = field(default_factory=dict)

    @property
    def totals(self) -> dict[str, Any]:
        """Sums over the layers plus the head: trainable, formula, frozen_adapter_elements,
        adapter_bytes, head_trainable, trainable_total (layers + head), base_params,
        total_params and trainable_percent (trainable_total / base_params, in %)."""
        trainable = sum(r.trainable for r in self.rows)
        total = trainable + self.head_trainable
        return {
            "layers": len(self.rows),
            "trainable": trainable,
            "formula": sum(r.formula for r in self.rows),
            "frozen_adapter_elements": sum(r.frozen_adapter_elements for r in self.rows),
            "adapter_bytes": sum(r.adapter_bytes for r in self.rows),
            "head_trainable": self.head_trainable,
            "trainable_total": total,
            "base_params": self.base_params,
            "total_params": self.total_params,
            "trainable_percent": 100.0 * total / self.base_params if self.base_params else 0.0,
        }

    def to_rows(self) -> list[dict[str, Any]]:
        """Return one plain dict per adapted layer (ready for `pandas.DataFrame`)."""
        return [asdict(r) for r in self.rows]

    def to_dict(self) -> dict[str, Any]:
        """Return the whole report as JSON-ready plain data."""
        return {
            "method": self.method,
            "rows": self.to_rows(),
            "totals": self.totals,
            "head_modules": list(self.head_modules),
            "resolved_skeletons": {k: [list(c) for c in v] for k, v in self.resolved_skeletons.items()},
        }
