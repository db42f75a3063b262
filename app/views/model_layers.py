"""Model & layers page: what the chosen model is, and which linear layers the lab works on."""

from __future__ import annotations

import streamlit as st

from analysis.layers import block_span, filter_layers, layer_table, model_summary
from app.common import RANGE_OWNER, valid
from app.page import open_page

loaded = open_page("Model & layers", "model")

info = model_summary(loaded.weights)
table = layer_table(loaded.weights)
st.subheader(loaded.name)
blocks_text = f" · {info['blocks']} blocks" if info["blocks"] else ""
st.caption(f"`{info['architecture']}` · {loaded.kind} · model type `{info['model_type']}`{blocks_text} · "
           f"read from `{loaded.source}`")
header = "the GGUF file's header" if info.get("format") == "gguf" else "`config.json` and the weight files' headers"
st.info(f"Layers listed from {header}: **no weights are "
        "loaded**. Each page reads only the weight of the layer it analyses, so an 8B or 70B "
        "checkpoint opens in seconds; only a fine-tune loads the whole model.",
        icon=":material/bolt:")
if "4-bit" in loaded.note:
    st.warning(
        "SmolLM2-135M-Instruct ships as a 4-bit (Q4_1) GGUF file; each weight is dequantised "
        "to float32 when a page reads it. "
        "Its weights passed through 4-bit quantisation: the small singular values sit on a "
        "quantisation noise floor, which flattens the tail of every spectrum."
    )
elif loaded.note:
    st.caption(loaded.note)

cols = st.columns(4)  # short values only: a long one (a class name) is cut off in a column
cols[0].metric("Parameters", f"{info['params'] / 1e6:,.1f} M")
cols[1].metric("In linear layers", f"{info['linear_params'] / 1e6:,.1f} M")
cols[2].metric("Stored as", info["dtype"])
cols[3].metric("Weights", info["device"])

st.markdown("#### Select layers")
kinds = sorted(table["type"].unique())
st.session_state["layer_kinds"] = valid(st.session_state.get("layer_kinds") or [], kinds)
span = block_span(table)
left, right = st.columns(2)
left.multiselect(
    "Layer types", kinds, key="layer_kinds",
    help="q/k/v/o: attention projections; up/gate/down or ffn_in/ffn_out: the MLP. "
    "Empty = every type.",
)
blocks = None
if span is not None:
    current = st.session_state.get("block_range")
    owner = st.session_state.get(RANGE_OWNER)
    if (not current or not (span[0] <= current[0] <= current[1] <= span[1])
            or owner not in (None, loaded.name)):
        st.session_state["block_range"] = span
    st.session_state[RANGE_OWNER] = loaded.name
    if span[0] < span[1]:
        blocks = right.slider("Blocks (first, last)", span[0], span[1], key="block_range",
                              help="Transformer blocks to include, both ends included.")
    else:
        blocks = span
selected = filter_layers(table, kinds=st.session_state["layer_kinds"] or None, blocks=blocks)
st.caption(
    f"**{len(selected)} of {len(table)} linear layers selected**, "
    f"{int(selected['params'].sum()):,} parameters. The Decomposition lab and Cluster explorer "
    "start from these layers; the Export page adapts them."
)
column_config = {
    "name": st.column_config.TextColumn("Layer", width="large"),
    "block": st.column_config.NumberColumn("Block", format="%d"),
    "type": "Type",
    "m": st.column_config.NumberColumn("m (out)", format="%d"),
    "n": st.column_config.NumberColumn("n (in)", format="%d"),
    "shape": "Shape (m x n)",
    "params": st.column_config.NumberColumn("Parameters", format="localized"),
    "bias": "Bias",
}
with st.container(key="layer_table"):  # CSS class st-key-layer_table for browser tests
    st.dataframe(selected, key="selected_layer_table", hide_index=True, column_config=column_config)
with st.expander(f"All {len(table)} linear layers"):
    st.dataframe(table, key="all_layer_table", hide_index=True, column_config=column_config)
