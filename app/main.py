"""ID-LoRA Lab entry point (placeholder page until the Streamlit lab lands): lists the default model's linear layers."""

import pandas as pd
import streamlit as st

from idlora_core.catalog import DEFAULT_MODEL, list_linear_layers, load_model


@st.cache_resource(show_spinner="Loading all-MiniLM-L6-v2 ...")
def _model():
    return load_model(DEFAULT_MODEL)


st.title("ID-LoRA Lab")
loaded = _model()
rows = [vars(layer) | {"params": layer.params} for layer in list_linear_layers(loaded.model)]
st.dataframe(pd.DataFrame(rows), key="layer_table")
