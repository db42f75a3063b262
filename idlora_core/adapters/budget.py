"""Parameter budgets of every adapter method for one `(m, n)` linear layer (docs/ADAPTERS.md table).

Pure arithmetic, no torch: the sweep, the app and the tests call it to predict what
`idlora_core.adapters.model.apply_adapters` will count from the real modules.
"""

from __future__ import annotations

BUDGET_METHODS: tuple[str, ...] = ("full", "lora", "dora", "adalora", "hydralora", "idlora")
DEFAULT_K = 4  # ID-LoRA clusters, as TargetConfig.k
DEFAULT_HEADS = 4  # HydraLoRA heads N, as TargetConfig.heads


def _check(m: int, n: int, r: int, k: int, p: int, heads: int = 1) -> None:
    for name, value in (("m", m), ("n", n), ("r", r), ("k", k), ("p", p), ("heads", heads)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _counts(method: str, k: int | None, heads: int | None) -> tuple[int, int]:
    # (k, heads) with their defaults; each only for its method (HydraLoRA's heads are not k)
    if method == "hydralora" and k is not None:
        raise ValueError(f"hydralora has heads, not clusters k: pass heads={k} instead of k={k}")
    if method == "idlora" and heads is not None:
        raise ValueError(f"idlora has clusters k, not heads: pass k={heads} instead of heads={heads}")
    return (DEFAULT_K if k is None else k), (DEFAULT_HEADS if heads is None else heads)


def trainable_params(
    method: str, m: int, n: int, r: int = 8, *, k: int | None = None, p: int = 1,
    heads: int | None = None, bias: bool = False,
) -> int:
    """Return the number of trainable parameters (elements) of `method` on one `(m, n)` layer.

    `m` = out_features, `n` = in_features, `r` = rank, `k` = ID-LoRA clusters (default 4),
    `heads` = HydraLoRA heads N (default 4; hydralora refuses `k`, idlora refuses `heads`),
    `p` = ID-LoRA rank-boosting splits (needs `m % p == 0` and `r % p == 0`; ignored by
    the other methods, as `apply_adapters` ignores `rb_splits` for them),
    `bias` = the layer has a bias (only full fine-tuning trains it). Formulas:
    full `m*n (+m)`, lora `r*(m+n)`, dora `r*(m+n)+m`, adalora `r*(m+n+1)`,
    hydralora `r*n + N*r*m + N*n`, idlora `m*r/p^2 + k*r`.

    AdaLoRA's `r` is the rank each layer starts with (PEFT's `init_r`): A (r x n), the singular
    values E (r x 1) and B (m x r) all train from the first step to the last; pruning to
    `target_r` zeroes entries of E, it does not free them (PEFT drops them only on save).
    """
    k, heads = _counts(method, k, heads)
    _check(m, n, r, k, p, heads)
    if method == "full":
        return m * n + (m if bias else 0)
    if method == "lora":
        return r * (m + n)
    if method == "dora":
        return r * (m + n) + m
    if method == "adalora":
        return r * (m + n + 1)
    if method == "hydralora":
        return r * n + heads * r * m + heads * n
    if method == "idlora":
        if m % p or r % p:
            raise ValueError(
                f"rank boosting needs p to divide m and r: m={m}, r={r}, p={p}"
            )
        return (m // p) * (r // p) + k * r
    raise ValueError(f"unknown method {method!r}; expected one of {', '.join(BUDGET_METHODS)}")


def frozen_adapter_elements(method: str, m: int, n: int, r: int = 8, *, k: int | None = None,
                            heads: int | None = None) -> int:
    """Return the frozen floating-point elements an adapter adds to one `(m, n)` layer: 1 for
    AdaLoRA (PEFT's `ranknum`, the frozen rank the update is divided by), 0 for every other
    method. ID-LoRA reads `A_c x` from the base output and keeps no copy of the rows (it
    was `k*r*n` before issue 13); its `(k, r)` int64 skeleton indices are `index_bytes`."""
    k, heads = _counts(method, k, heads)
    _check(m, n, r, k, 1, heads)
    if method not in BUDGET_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(BUDGET_METHODS)}")
    return 1 if method == "adalora" else 0


def index_bytes(method: str, r: int = 8, *, k: int | None = None) -> int:
    """Return the bytes of ID-LoRA's skeleton buffer (k*r int64 row indices), 0 otherwise."""
    return 8 * (DEFAULT_K if k is None else k) * r if method == "idlora" else 0


def adapter_memory_bytes(
    method: str,
    m: int,
    n: int,
    r: int = 8,
    *,
    k: int | None = None,
    p: int = 1,
    heads: int | None = None,
    bias: bool = False,
    bytes_per_element: int = 4,
    optimizer_states: int = 2,
) -> int:
    """Return the bytes an adapter adds to one layer during training: trainable weights, their
    gradients and `optimizer_states` optimiser tensors each (AdamW: 2), plus frozen buffers
    (ID-LoRA: its int64 skeleton indices). k: ID-LoRA clusters, heads: HydraLoRA heads."""
    trainable = trainable_params(method, m, n, r, k=k, p=p, heads=heads, bias=bias)
    frozen = frozen_adapter_elements(method, m, n, r, k=k, heads=heads)
    return bytes_per_element * (trainable * (2 + optimizer_states) + frozen) + index_bytes(method, r, k=k)
