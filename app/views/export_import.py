"""Export / import page: the current choices as a `RunConfig` YAML, and back.

Export: model, selected layers, method, per-layer k (ID-LoRA's clusters) or heads N
(HydraLoRA) / r / selection / RB, training settings and
resolved skeleton rows, previewed, downloadable and as the exact CLI commands. Import: an
uploaded or pasted YAML (size-capped, parsed in memory with `yaml.safe_load`) restores every
page's settings; an invalid file shows its schema errors. No maths here.
"""

from __future__ import annotations

import hashlib

import pandas as pd
import streamlit as st

from app import settings_io as sio
from app import url_state
from app.common import (
    SELECTIONS,
    apply_settings,
    get_model,
    init_state,
    layer_choice,
    model_name,
    selected_layers,
    set_model_name,
)
from idlora_core.adapters.budget import trainable_params
from idlora_core.adapters.skeletons import layer_skeletons
from idlora_core.config import (
    METHODS,
    ConfigError,
    RunConfig,
    dumps_config,
    loads_config,
    uses_clusters,
    uses_heads,
)
from idlora_core.jobs.runs import RunPathError, safe_run_dir

MAX_UPLOAD_BYTES = 256 * 1024
# Widget values survive page switches (Streamlit >= 1.67).
KEEP = {"persist_state": "session"}
CONFIG_FILE = "idlora_config.yaml"
COUNT_LABELS = {"k": "k (clusters, ID-LoRA)", "heads": "heads N (HydraLoRA)"}  # layer-choice key -> label


@st.cache_data(show_spinner="Clustering rows and picking skeletons ...", max_entries=32)
def _skeletons(_model, model_key: str, targets_json: str, seed: int) -> dict:
    """Cached skeleton resolution; `model_key` and `targets_json` are the cache key."""
    targets = RunConfig.model_validate_json(targets_json).adapter.targets
    return layer_skeletons(_model, targets, seed)  # reads only the targets' weights


def _choices_editor(layers: list[str]) -> None:
    state = st.session_state
    st.markdown("**Adapter choices** — defaults for every layer, then per-layer overrides.")
    c1, c2, c3, c4, c5 = st.columns(5)
    c1.selectbox("Method", list(METHODS), format_func=sio.METHOD_LABELS.get, key="ex_method",
                 **KEEP)
    count = _count_key(state["ex_method"])  # the method's count: clusters k or heads N
    c2.number_input(COUNT_LABELS[count], **sio.bounds(f"adapter_{count}"), key=f"adapter_{count}", **KEEP)
    c3.number_input("r (rank)", **sio.bounds("adapter_r"), key="adapter_r", **KEEP)
    c4.selectbox("Selection", list(SELECTIONS), key="adapter_selection", **KEEP)
    c5.number_input("RB splits p", **sio.bounds("adapter_rb_splits"), key="adapter_rb_splits", **KEEP,
                 help="Rank boosting, our reading of the paper's RB: p must divide r.")
    n1, n2, _ = st.columns([1, 1, 3])
    n1.checkbox("Normalise rows", key="ex_normalize_rows", **KEEP,
                help="Cluster L2-normalised rows (cosine geometry). This page's own setting; "
                "the Decomposition lab and Cluster explorer buttons hand theirs over.")
    n2.number_input("Seed", **sio.bounds("ex_seed"), step=1, key="ex_seed", **KEEP,
                    help="k-means and random-skeleton seed written to the YAML.")
    if st.toggle("Per-layer override", key="ex_override"):  # drawn on demand: a faster page
        o1, o2, o3, o4, o5 = st.columns(5)
        layer = o1.selectbox("Layer", layers, key="ov_layer")
        current = layer_choice(layer) if layer else {}
        n = o2.number_input({"k": "k", "heads": "heads N"}[count], **sio.bounds(f"adapter_{count}"),
                            value=int(current.get(count, 4)), key=f"ov_{count}_{layer}")
        r = o3.number_input("r", **sio.bounds("adapter_r"), value=int(current.get("r", 8)),
                            key=f"ov_r_{layer}")
        selection = o4.selectbox("selection", list(SELECTIONS), key=f"ov_selection_{layer}",
                                 index=list(SELECTIONS).index(current.get("selection", "id")))
        rb = o5.selectbox("p", [1, 2, 4, 8], key=f"ov_rb_splits_{layer}",
                          index=[1, 2, 4, 8].index(int(current.get("rb_splits", 1))))
        b1, b2 = st.columns(2)
        if b1.button("Set for this layer", key="set_layer_choice") and layer:
            choices = dict(state.get("layer_choices") or {})
            choices[layer] = {"k": int(current["k"]), "heads": int(current["heads"]), "r": int(r),
                              "selection": selection, "rb_splits": int(rb)} | {count: int(n)}
            apply_settings({"layer_choices": choices})
        if b2.button("Clear all overrides", key="clear_layer_choices"):
            apply_settings({"layer_choices": {}})


def _count_key(method: str) -> str:
    """Return the layer-choice key of `method`'s count: "heads" (HydraLoRA's N), else "k"."""
    return "heads" if uses_heads(method) else "k"


def _layer_table(loaded, layers: list[str], choices: dict) -> pd.DataFrame:
    method = st.session_state["ex_method"]
    count = _count_key(method)
    rows = []
    for name in layers:
        m, n = loaded.weights.check_layer(name).shape
        c = choices[name]
        try:
            params = trainable_params(method, m, n, c["r"], p=c["rb_splits"],
                                      k=c["k"] if uses_clusters(method) else None,
                                      heads=c["heads"] if uses_heads(method) else None)
        except ValueError:
            params = None
        rows.append({"layer": name, "shape": f"{m} x {n}", count: c[count], "r": c["r"],
                     "selection": c["selection"], "RB p": c["rb_splits"], "trainable": params,
                     "LoRA at same r": trainable_params("lora", m, n, c["r"])})
    return pd.DataFrame(rows)


def _output_dir() -> str | None:
    """Return the output folder for the YAML (`runs/NAME`), or None after an st.error."""
    state = st.session_state
    st.text_input("Run name (folder inside the runs folder)", key="ex_run_name", **KEEP)
    try:
        safe_run_dir(sio.runs_root(), state["ex_run_name"])
    except RunPathError as exc:
        st.error(f"{exc}. Choose a plain folder name such as `my-run`.")
        return None
    return f"runs/{str(state['ex_run_name']).strip()}"


def _export(loaded, layers: list[str]) -> None:
    state = st.session_state
    choices = {name: layer_choice(name) for name in layers}
    table = _layer_table(loaded, layers, choices)
    st.dataframe(table, key="export_layers", hide_index=True, width="stretch")
    if table["trainable"].notna().all():
        total, lora = int(table["trainable"].sum()), int(table["LoRA at same r"].sum())
        st.caption(f"Trainable parameters of the adapters: **{total:,}** — "
                   f"{100 * total / lora:.0f} % of LoRA's {lora:,} at the same ranks (heads "
                   "trained alongside are counted separately by the training report).")
    out = _output_dir()
    if out is None:
        return
    try:
        cfg = sio.export_config(state, model_name(), loaded.kind, layers, choices, output_dir=out)
        if cfg.adapter.method == "idlora":
            skeletons = _skeletons(loaded.weights, model_name(), cfg.model_dump_json(),
                                   cfg.adapter.seed)
            cfg = sio.export_config(state, model_name(), loaded.kind, layers, choices,
                                    skeletons=skeletons, output_dir=out)
    except Exception as exc:  # noqa: BLE001 - invalid choices are shown, not raised
        st.error(f"These choices do not make a valid configuration: {exc}\n\nAdjust k, r or "
                 "RB above (ID-LoRA needs k*r <= rows of the layer and p dividing r).")
        return
    text = dumps_config(cfg)
    st.markdown("**YAML** (the schema `python -m idlora_core.train` reads"
                + (", with resolved skeleton rows" if cfg.adapter.skeletons else "") + ")")
    with st.container(key="export_yaml"):  # CSS classes st-key-export_* for browser tests
        st.code(text, language="yaml", height=320)
    st.download_button("Download YAML", text, file_name=CONFIG_FILE, mime="application/x-yaml",
                       key="download_yaml", type="primary")
    with st.container(key="export_commands"):
        st.markdown("**Run it** — one process (CPU, or the GPU when there is one):")
        st.code(f"python -m idlora_core.train {CONFIG_FILE}", language="bash")
        st.markdown("Several GPUs, data parallel (with no GPU the same command runs N CPU "
                    "processes over gloo):")
        st.code(f"accelerate launch --multi_gpu --num_processes 8 -m idlora_core.train {CONFIG_FILE}",
                language="bash")


def _import_text(text: str, source: str, extra: dict | None = None) -> None:
    """Validate YAML `text`; show its errors, or restore its settings on every page."""
    try:
        cfg = loads_config(text)
    except ConfigError as exc:
        st.error(f"{source} is not a valid configuration:\n\n"
                 + "\n".join(f"- `{e}`" for e in exc.errors[: ConfigError.MAX_SHOWN])
                 + (f"\n- ... and {len(exc.errors) - ConfigError.MAX_SHOWN:,} more"
                    if len(exc.errors) > ConfigError.MAX_SHOWN else "")
                 + "\n\nFix these fields (see the exported YAML above for the schema).")
        return
    values = sio.settings_from_config(cfg, set_model_name(cfg.model.name))
    problems = sio.check_ranges(values)
    if problems:
        st.error(f"{source} holds values this app cannot show:\n\n"
                 + "\n".join(f"- `{p}`" for p in problems) + "\n\nNothing was restored.")
        return
    message = f"Restored the settings of {source}."
    if cfg.model.trust_remote_code:
        message += (" It asks for `trust_remote_code: true`; that was NOT turned on. Tick "
                    "*Trust remote code* in the sidebar only if you trust the model folder.")
    # an open exercise panel would describe settings the import just replaced: close it
    apply_settings(values | (extra or {}) | {"ex_import_message": message, "lab_exercise": None})


def _import() -> None:
    state = st.session_state
    st.markdown("Upload a YAML written by this page or by hand: every page's settings follow it.")
    upload = st.file_uploader("YAML config", type=["yaml", "yml"], key="upload_yaml",
                              max_upload_size=1)
    if upload is not None:
        data = upload.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        if len(data) > MAX_UPLOAD_BYTES:
            st.error(f"{upload.name} is {len(data):,} bytes; configs are limited to "
                     f"{MAX_UPLOAD_BYTES // 1024} KiB. Upload the YAML config, not data.")
        elif digest != state.get("ex_imported_digest"):  # each file is applied once
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                st.error(f"{upload.name} is not UTF-8 text. Upload a YAML file.")
            else:
                _import_text(text, upload.name, {"ex_imported_digest": digest})
    st.text_area("... or paste YAML here", key="ex_paste", **KEEP, height=120)
    if st.button("Import pasted YAML", key="import_pasted"):
        text = state.get("ex_paste") or ""
        if len(text.encode("utf-8")) > MAX_UPLOAD_BYTES:
            st.error(f"The pasted text is over {MAX_UPLOAD_BYTES // 1024} KiB.")
        else:
            _import_text(text, "the pasted YAML")


def main() -> None:
    """Draw the Export / import page."""
    init_state()
    sio.init_defaults(st.session_state)
    st.header("Export / import")
    url_state.mirror("export")
    message = st.session_state.pop("ex_import_message", None)
    if message:
        st.success(message)
    loaded = get_model()
    if loaded is None:
        return
    layers = selected_layers(loaded)
    export_tab, import_tab = st.tabs(["Export", "Import"])
    with export_tab:
        if not layers:
            st.error("No layers selected: pick layer types and blocks on the Model & layers page.")
        else:
            _choices_editor(layers)
            _export(loaded, layers)
    with import_tab:
        _import()


main()
