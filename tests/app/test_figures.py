"""The lab's figures: fine-tune charts (chance line, a colour per method, no empty axes, a
y-range from 0), log ticks without minor labels, bar charts on linear axes."""

from __future__ import annotations

import math

import pandas as pd

from app import figures


def _frames() -> dict[str, pd.DataFrame]:
    steps = list(range(1, 6))
    return {
        "ID-LoRA r=8 k=4": pd.DataFrame({"step": steps, "loss": [0.72, 0.70, 0.69, 0.685, 0.68]}),
        "ID-LoRA r=16 k=4": pd.DataFrame({"step": steps, "loss": [0.72, 0.70, 0.69, 0.684, 0.68]}),
        "LoRA r=8": pd.DataFrame({"step": steps, "loss": [0.72, 0.69, 0.67, 0.66, 0.646]}),
        "DoRA r=8": pd.DataFrame({"step": [], "loss": []}),  # started, nothing logged yet
    }


METHODS = {"ID-LoRA r=8 k=4": "idlora", "ID-LoRA r=16 k=4": "idlora", "LoRA r=8": "lora",
           "DoRA r=8": "dora"}


def test_loss_figure_colours_by_method_and_draws_the_chance_level():
    fig = figures.loss_figure(_frames(), METHODS, math.log(2))
    traces = {t.name: t for t in fig.data}
    assert set(traces) == {"ID-LoRA r=8 k=4", "ID-LoRA r=16 k=4", "LoRA r=8"}  # DoRA: no data yet
    assert traces["ID-LoRA r=8 k=4"].line.color == traces["ID-LoRA r=16 k=4"].line.color
    assert traces["ID-LoRA r=8 k=4"].line.dash != traces["ID-LoRA r=16 k=4"].line.dash
    assert traces["LoRA r=8"].line.color != traces["ID-LoRA r=8 k=4"].line.color
    (line,) = fig.layout.shapes
    assert math.isclose(line.y0, math.log(2)) and "ln 2" in fig.layout.annotations[0].text
    assert figures.loss_figure({"DoRA r=8": _frames()["DoRA r=8"]}, METHODS) is None


def test_tradeoff_axis_starts_at_zero_so_small_differences_look_small():
    done = pd.DataFrame({"method": ["idlora", "lora"], "label": ["a", "b"],
                         "trainable_params": [38018, 74498], "validation": [0.678, 0.675],
                         "step": [60, 60]})
    fig = figures.tradeoff_figure(done, math.log(2))  # a validation loss
    low, high = fig.layout.yaxis.range
    assert low == 0 and high >= math.log(2)
    assert (0.678 - 0.675) / (high - low) < 0.01  # a 0.003 difference is under 1 % of the axis
    assert len({t.marker.color for t in fig.data}) == 2
    assert fig.layout.yaxis.title.text.startswith("validation loss (nats)")


def test_tradeoff_plots_the_validation_metric_with_head_only_and_chance_references():
    done = pd.DataFrame({"method": ["idlora", "lora", "head-only", "base"],
                         "label": ["ID-LoRA r=8 k=4", "LoRA r=8", "Head only", "Base"],
                         "trainable_params": [38018, 74498, 770, 0],
                         "validation": [0.81, 0.83, 0.72, 0.5], "step": [60, 60, 60, 0]})
    fig = figures.tradeoff_figure(done, 0.5, "accuracy (rotten tomatoes)")
    assert fig.layout.yaxis.title.text == "validation accuracy (rotten tomatoes)"
    assert list(fig.layout.yaxis.range) == [0, 1.05]  # a score: the whole 0-1 range
    traces = {t.name: t for t in fig.data}
    assert list(traces["lora"].y) == [0.83] and traces["head-only"].marker.symbol == "star"
    assert list(traces["base"].x) == [1]  # trains nothing: drawn at 1 on the log axis
    lines = {round(shape.y0, 3): shape.line.dash for shape in fig.layout.shapes}
    assert lines == {0.72: "dash", 0.5: "dot"}  # head-only and chance, each a line across
    notes = [a.text for a in fig.layout.annotations]
    assert notes == ["head only (linear probe) 0.720", "chance level 0.5"]
    old = figures.tradeoff_figure(done.rename(columns={"validation": "loss"}), None)  # lab report input
    assert old.layout.yaxis.title.text.startswith("training loss")


def test_log_ticks_are_1_2_3_5_and_bars_are_linear():
    assert figures.log_ticks([0.36, 0.95]) == [0.3, 0.5, 1.0]
    assert figures.log_ticks([0.6, 51.4]) == [0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 50.0]
    summary = pd.DataFrame({"layer": ["encoder.layer.0.intermediate.dense",
                                      "encoder.layer.3.attention.output.dense"],
                            "gain_vs_svd": [-0.004, 0.24], "rel_fro_error": [0.825, 0.624],
                            "svd_same_r": [0.821, 0.866], "k": [8, 8], "selection": ["id", "id"]})
    fig = figures.gain_figure(summary, 16)
    assert fig.layout.yaxis.type in (None, "linear")
    (bars,) = fig.data
    assert list(bars.x) == ["3 · attn_out", "0 · ffn_in"]  # largest gain first, short labels
    assert bars.marker.color[1] != bars.marker.color[0]  # the loss is coloured differently
    assert bars.text[1] == "-0.004"  # and labelled with its sign



def test_heatmap_has_no_colour_bar_unless_asked_and_the_scale_figure_matches_it():
    # The lab draws one heatmap per selection side by side: a bar inside one made it narrower
    # than its neighbours, so the row's one bar is a figure of its own (colour_scale).
    grid = pd.DataFrame([[0.9, 0.8], [0.7, 0.6]], index=[1, 2], columns=[4, 8])
    row = figures.heatmap(grid, 0.6, 0.9)
    alone = figures.heatmap(grid, 0.6, 0.9, colorbar=True)  # the report's PNG
    assert not row.layout.coloraxis.showscale and alone.layout.coloraxis.showscale
    scale = figures.colour_scale(0.6, 0.9)
    marker = scale.data[0].marker
    assert (marker.cmin, marker.cmax, marker.showscale) == (0.6, 0.9, True)
    assert [c for _, c in marker.colorscale] == [c for _, c in row.layout.coloraxis.colorscale]
    assert scale.layout.height == row.layout.height



def test_loss_figure_ticks_whole_steps_on_short_runs():
    short = {"LoRA r=8": pd.DataFrame({"step": [1, 2, 3], "loss": [0.70, 0.69, 0.71]})}
    fig = figures.loss_figure(short, {"LoRA r=8": "lora"}, math.log(2))
    assert fig.layout.xaxis.dtick == 1  # no "1.5" step
    long = {"LoRA r=8": pd.DataFrame({"step": list(range(1, 501)), "loss": [0.7] * 500})}
    fig = figures.loss_figure(long, {"LoRA r=8": "lora"}, math.log(2))
    assert fig.layout.xaxis.dtick is None  # plotly's own ticks for long runs


def _lch(hex_colour: str) -> tuple[float, float, float]:
    """CIELAB lightness, chroma and hue angle (degrees) of an sRGB hex colour (D65)."""
    rgb = [int(hex_colour.lstrip("#")[i:i + 2], 16) / 255 for i in (0, 2, 4)]
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    x = (0.4124 * lin[0] + 0.3576 * lin[1] + 0.1805 * lin[2]) / 0.95047
    y = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    z = (0.0193 * lin[0] + 0.1192 * lin[1] + 0.9505 * lin[2]) / 1.08883
    f = [t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116 for t in (x, y, z)]
    a, b = 500 * (f[0] - f[1]), 200 * (f[1] - f[2])
    return 116 * f[1] - 16, math.hypot(a, b), math.degrees(math.atan2(b, a)) % 360


def test_cluster_colours_are_told_apart_up_to_ten_clusters():
    # QA found two violets among the first eight cluster colours (k = 8 on the explorer)
    colours = figures.QUALITATIVE
    assert len(set(colours)) == len(colours) >= 26  # k up to 26 without repeats
    vivid = [(c, *_lch(c)) for c in colours[:10] if _lch(c)[1] > 35]
    assert len(vivid) >= 7
    for i, (c1, _, _, h1) in enumerate(vivid):
        for c2, _, _, h2 in vivid[i + 1:]:
            assert min(abs(h1 - h2), 360 - abs(h1 - h2)) >= 20, (c1, c2)  # distinct hues
