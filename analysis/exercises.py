"""The lab exercises (`analysis/exercises.yaml`): presets for the app, text for docs/LAB.md,
and the measurement of every number the handout quotes.

One source, three readers: the Lab exercises page applies `Exercise.settings` and shows
`steps` / `observe`; `render_section` writes the handout's sections (between the
`<!-- exercises:begin -->` / `<!-- exercises:end -->` markers of docs/LAB.md); `measure`
recomputes each quoted number from a sweep so a test can check that the text is still true.
No Streamlit here.

    python -m analysis.exercises --measure         # recompute every quoted number (minilm)
    python -m analysis.exercises --write docs/LAB.md   # regenerate the handout's sections
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from idlora_core.config import ConfigDeprecationWarning

SOURCE = Path(__file__).with_name("exercises.yaml")
HANDOUT = Path(__file__).resolve().parents[1] / "docs" / "LAB.md"
BEGIN, END = "<!-- exercises:begin", "<!-- exercises:end -->"
MARK_NOTE = ("<!-- exercises:begin (generated from analysis/exercises.yaml by "
             "`python -m analysis.exercises --write docs/LAB.md`; edit the YAML, not this) -->")
SELECTED = "selected"  # lab_layers value: the layers chosen on Model & layers


@dataclass
class Exercise:
    """One handout exercise: its text, the session settings of its preset, its quoted numbers."""

    id: int
    title: str
    minutes: int
    page: str
    intro: str
    steps: str
    observe: str
    questions: str
    settings: dict[str, Any]
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    handout: bool = True  # False: an app preset only, its text is written in docs/LAB.md

    def values(self) -> dict[str, str]:
        """Return {placeholder: the quoted value as printed in the text}."""
        return {name: format_value(c["value"], c.get("digits")) for name, c in self.checks.items()}

    def text(self, part: str) -> str:
        """Return `steps`, `observe`, `intro` or `questions` with the quoted numbers filled in."""
        return getattr(self, part).format(**self.values()).strip()


def load_exercises(path: str | Path = SOURCE, *, strict: bool = True) -> list[Exercise]:
    """Return the exercises of the YAML file (yaml.safe_load), in handout order.

    strict=False accepts checks without a quoted `value` (to measure a new exercise)."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    out = []
    retired: set[str] = set()
    for raw in data["exercises"]:
        ex = Exercise(**_renamed(raw, retired))
        missing = [n for n, c in ex.checks.items() if "value" not in c]
        if missing and strict:
            raise ValueError(f"exercise {ex.id}: checks without a quoted value: {missing}")
        if not missing:
            for part in ("intro", "steps", "observe", "questions"):
                ex.text(part)  # a placeholder without a check raises KeyError here
        out.append(ex)
    if retired:
        warnings.warn(f"{path}: retired key(s) {', '.join(sorted(retired))} read under their new "
                      "names (docs/VOCABULARY.md); rename them to silence this note",
                      ConfigDeprecationWarning, stacklevel=2)
    return out


# Keys an exercise file spelled before the one vocabulary (docs/VOCABULARY.md): settings
# `lab_strategies`, checks `strategy`.
RETIRED_SETTINGS = {"lab_strategies": "lab_selections"}
RETIRED_CHECK_KEYS = {"strategy": "selection"}


def _renamed(raw: dict[str, Any], retired: set[str]) -> dict[str, Any]:
    # one exercise with its retired keys renamed; their old names are added to `retired`
    def rename(mapping: dict, names: dict[str, str]) -> dict:
        retired.update(key for key in mapping if key in names)
        return {names.get(key, key): value for key, value in mapping.items()}

    out = dict(raw)
    if isinstance(raw.get("settings"), dict):
        out["settings"] = rename(raw["settings"], RETIRED_SETTINGS)
    if isinstance(raw.get("checks"), dict):
        out["checks"] = {name: rename(c, RETIRED_CHECK_KEYS) if isinstance(c, dict) else c
                         for name, c in raw["checks"].items()}
    return out


def format_value(value: Any, digits: int | None = None) -> str:
    """Return a quoted value as the handout prints it (floats to `digits`, minus sign −)."""
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, float) or digits is not None:
        text = f"{float(value):.{digits if digits is not None else 3}f}"
        return text.replace("-", "−")
    return str(value)


def sweep_params(settings: dict[str, Any]) -> dict[str, Any]:
    """Return the Decomposition lab's sweep parameters (ks, ranks, selections, seed,
    normalize_rows) of a preset's settings, as the lab passes them to the sweep."""
    return dict(ks=sorted(settings["lab_ks"]), ranks=sorted(settings["lab_ranks"]),
                selections=list(settings["lab_selections"]), seed=int(settings["lab_seed"]),
                normalize_rows=bool(settings["lab_normalize_rows"]))


def preset_layers(settings: dict[str, Any], table: pd.DataFrame) -> list[str]:
    """Return the layers a preset sweeps; `table` is `analysis.layers.layer_table(model)`."""
    from analysis.layers import filter_layers

    chosen = settings["lab_layers"]
    if chosen == SELECTED:
        return list(filter_layers(table, kinds=settings.get("layer_kinds") or None,
                                  blocks=settings.get("block_range"))["name"])
    return list(chosen)


def _at(table: pd.DataFrame, check: dict) -> pd.DataFrame:
    part = table[(table["k"] == check["k"]) & (table["r"] == check["r"])
                 & (table["selection"] == check["selection"])]
    return part[part["feasible"].astype(bool)]


def _row(table: pd.DataFrame, check: dict) -> pd.Series:
    part = _at(table, check)
    part = part[part["layer"] == check["layer"]]
    if len(part) != 1:
        raise ValueError(f"no single sweep row for {check}")
    return part.iloc[0]


def measure(check: dict[str, Any], table: pd.DataFrame,
            sizes: Callable[[str, int, int, bool], list[int]] | None = None) -> Any:
    """Return the value of one check (see the kinds in exercises.yaml), rounded to its digits.

    table: the exercise's sweep (one row per layer, k, r, selection); sizes(layer, k, r,
    normalize) returns the Cluster explorer's cluster sizes (needed by kind "sizes" only).
    """
    kind = check["kind"]
    if kind == "layers":
        value: Any = int(table["layer"].nunique())
    elif kind == "cell":
        value = float(_row(table, check)[check["column"]])
    elif kind == "gain":
        row = _row(table, check)
        value = float(row["svd_same_r"] - row["rel_fro_error"])
    elif kind == "ratio":
        row = _row(table, check)
        value = float(row[check["column"]] / row[check["over"]])
    elif kind == "wins":
        part = _at(table, check)
        value = int((part["rel_fro_error"] < part[check["column"]]).sum())
    elif kind == "losses":
        part = _at(table, check)
        value = ", ".join(part[part["rel_fro_error"] > part["svd_same_r"]]["layer"])
    elif kind == "best":
        part = _at(table, check)
        value = str(part.loc[(part["svd_same_r"] - part["rel_fro_error"]).idxmax(), "layer"])
    elif kind == "mean":
        value = float(_at(table, check)[check["column"]].mean())
    elif kind == "sizes":
        if sizes is None:
            raise ValueError("a 'sizes' check needs the sizes function")
        value = [int(s) for s in sizes(check["layer"], check["k"], check["r"], check["normalize"])]
    else:
        raise ValueError(f"unknown check kind {kind!r}")
    digits = check.get("digits")
    return round(value, digits) if digits is not None and isinstance(value, float) else value


def spectral_layers(ex: Exercise) -> list[str]:
    """Return the layers whose measured spectral error (`rel_spec_error`) the exercise quotes."""
    return sorted({c["layer"] for c in ex.checks.values() if c.get("column") == "rel_spec_error"})


def _weight(source, layer: str):
    # The app's weights: read alone from the checkpoint (a WeightReader), or from a loaded model.
    from idlora_core.layers import get_weight
    from idlora_core.weights import WeightReader

    return source.weight(layer) if isinstance(source, WeightReader) else get_weight(source, layer)


def exercise_table(ex: Exercise, loaded_model, *, cache=True) -> pd.DataFrame:
    """Return the sweep the exercise's preset runs on the Decomposition lab (cached like the app's),
    with the measured spectral error filled in for the layers in `spectral_layers(ex)`.

    loaded_model: the checkpoint's WeightReader (as the app reads it) or a loaded model."""
    from analysis.layers import layer_table
    from analysis.sweep import SweepSpec, sweep_layer

    params = sweep_params(ex.settings)
    frames = []
    for layer in preset_layers(ex.settings, layer_table(loaded_model)):
        spec = SweepSpec(**params, spectral=layer in spectral_layers(ex))
        frames.append(sweep_layer(_weight(loaded_model, layer), spec, layer=layer, cache=cache).table)
    return pd.concat(frames, ignore_index=True)


def explorer_sizes(loaded_model) -> Callable[[str, int, int, bool], list[int]]:
    """Return sizes(layer, k, r, normalize): the Cluster explorer's cluster sizes, largest first
    (seed 0, as the preset sets)."""
    from analysis.explorer import cluster_view

    def sizes(layer: str, k: int, r: int, normalize: bool) -> list[int]:
        view = cluster_view(_weight(loaded_model, layer), k, r, ("id",),
                            normalize_rows=normalize, seed=0)
        return sorted((int(s) for s in view.sizes["rows"]), reverse=True)

    return sizes


def measure_all(exercises: list[Exercise], loaded_model, *, cache=True) -> dict[tuple[int, str], Any]:
    """Return {(exercise id, check name): measured value} for every quoted number."""
    tables: dict[int, pd.DataFrame] = {}
    sizes = explorer_sizes(loaded_model)
    by_id = {ex.id: ex for ex in exercises}
    out = {}
    for ex in exercises:
        for name, check in ex.checks.items():
            source = by_id[check.get("sweep", ex.id)]
            if source.id not in tables:
                tables[source.id] = exercise_table(source, loaded_model, cache=cache)
            out[(ex.id, name)] = measure(check, tables[source.id], sizes)
    return out


def same(measured: Any, quoted: Any) -> bool:
    """Return True when a measured value equals the quoted one (floats to 1e-9 after rounding)."""
    if isinstance(quoted, float) or isinstance(measured, float):
        return bool(np.isclose(float(measured), float(quoted), rtol=0, atol=1e-9))
    return measured == quoted


def render_section(exercises: list[Exercise]) -> str:
    """Return the handout's Markdown for the exercises (what sits between the markers)."""
    parts = []
    for ex in [e for e in exercises if e.handout]:
        parts.append(
            f"## Exercise {ex.id} — {ex.title} ({ex.minutes} min)\n\n"
            f"{ex.text('intro')}\n\n**Steps** (the app's *Lab exercises* page sets all of this "
            f"with one click: *Start exercise {ex.id}*)\n\n{ex.text('steps')}\n\n"
            f"**What you should observe**\n\n{ex.text('observe')}\n\n"
            f"**Questions.** {ex.text('questions')}\n"
        )
    return "\n".join(parts)


def replace_section(handout: str, exercises: list[Exercise]) -> str:
    """Return `handout` with the text between the markers replaced by the generated sections."""
    start, end = handout.find(BEGIN), handout.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the handout has no {BEGIN} ... {END} markers")
    return handout[:start] + MARK_NOTE + "\n\n" + render_section(exercises) + "\n" + handout[end:]


def main(argv: list[str] | None = None) -> int:
    """CLI: --measure prints measured vs quoted values; --write PATH regenerates the handout."""
    parser = argparse.ArgumentParser(prog="python -m analysis.exercises", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measure", action="store_true", help="recompute every quoted number")
    parser.add_argument("--write", metavar="LAB.md", help="regenerate the exercise sections")
    args = parser.parse_args(argv)
    exercises = load_exercises(strict=not args.measure)
    if args.write:
        path = Path(args.write)
        path.write_text(replace_section(path.read_text(encoding="utf-8"), exercises),
                        encoding="utf-8")
        print(f"wrote the sections of {sum(e.handout for e in exercises)} exercises into {path}")
    if args.measure:
        from idlora_core.weights import open_weights

        bad = 0
        for (ex_id, name), value in measure_all(exercises, open_weights("minilm")).items():
            quoted = next(e for e in exercises if e.id == ex_id).checks[name].get("value")
            ok = quoted is not None and same(value, quoted)
            bad += not ok
            print(f"exercise {ex_id} {name:15s} measured {value!r:45s} quoted {quoted!r}"
                  + ("" if ok else "   <-- differs"))
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
