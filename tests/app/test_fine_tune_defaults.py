"""The Fine-tune page's defaults teach: every default run leaves chance (issue 10).

Builds the runs exactly as the page does with its default settings and trains them on the
real MiniLM; each must reach eval accuracy >= 0.80 on sentiment (chance is 0.5).
`bench/finetune_defaults.py` times the same runs.
"""

from __future__ import annotations

from analysis.layers import filter_layers, layer_table
from app.common import DEFAULTS as PAGE_DEFAULTS
from app.settings_io import finetune_configs, init_defaults
from idlora_core.training.trainer import run_training
from idlora_core.weights import open_weights


def test_every_default_run_reaches_080_on_sentiment(tmp_path):
    state: dict = {}
    init_defaults(state)
    layers = list(filter_layers(layer_table(open_weights("minilm")),
                                kinds=PAGE_DEFAULTS["layer_kinds"],
                                blocks=PAGE_DEFAULTS["block_range"])["name"])
    runs = finetune_configs(state, "minilm", "encoder", layers)
    assert [label for label, _ in runs] == ["ID-LoRA r=8 k=4", "LoRA r=8"]
    for i, (label, cfg) in enumerate(runs):
        result = run_training(cfg.model_copy(update={"output_dir": str(tmp_path / str(i))}),
                              progress=False)
        accuracy = result.final_metrics["eval_sentiment_accuracy"]
        assert result.state == "finished" and accuracy >= 0.80, (label, accuracy)
