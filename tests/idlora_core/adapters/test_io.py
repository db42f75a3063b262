"""save_adapters -> load_adapters on a fresh base model reproduces the outputs exactly (fp32)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from idlora_core.adapters import model as model_module
from idlora_core.adapters import skeletons as skeleton_module
from idlora_core.adapters.io import (
    AdapterLoadError,
    read_adapter_config,
    save_adapters,
    skeleton_rows_hash,
)
from idlora_core.adapters.model import load_adapters
from idlora_core.config import AdapterConfig, RunConfig, TargetConfig, target_for
from tests.conftest import make_tiny_bert, make_tiny_llama, shared_weight_copy

pytestmark = pytest.mark.usefixtures("private_skeleton_cache", "one_thread")


METHODS = ["idlora", "lora", "dora", "hydralora", "full"]


def _perturb(model, seed=0):
    """Move every trainable tensor away from its init so that a lost tensor would show."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _out(model, ids):
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("factory", [lambda: make_tiny_bert(num_labels=2), make_tiny_llama], ids=["bert", "llama"])
def test_roundtrip_reproduces_outputs_exactly(method, factory, tmp_path, monkeypatch):
    patterns = ["query", "value"] if factory().__class__.__name__.startswith("Bert") else ["q_proj", "down_proj"]
    cfg = AdapterConfig(method=method, targets=[target_for(method, pattern=p, r=4, k=2, heads=2) for p in patterns], seed=3)
    model = model_module.apply_adapters(factory(), cfg)
    report = model.report
    _perturb(model)
    ids = torch.randint(5, 1000, (2, 7), generator=torch.Generator().manual_seed(1))
    expected = _out(model, ids)
    save_adapters(model, tmp_path / "adapter")

    def no_clustering(*args, **kwargs):
        raise AssertionError("loading must reuse the saved skeleton indices")

    monkeypatch.setattr(skeleton_module, "compute_skeleton", no_clustering)
    loaded = load_adapters(factory(), tmp_path / "adapter")
    loaded_report = loaded.report
    assert torch.equal(_out(loaded, ids), expected)
    assert loaded_report.to_rows() == report.to_rows()
    assert loaded_report.totals == report.totals
    saved = read_adapter_config(tmp_path / "adapter")
    assert saved.method == method
    if method == "idlora":
        assert saved.skeletons == report.resolved_skeletons and len(saved.skeletons) == 4
    else:
        assert saved.skeletons is None


def test_run_config_is_saved_whole_with_skeletons(tmp_path):
    run = RunConfig(adapter=AdapterConfig(method="idlora", targets=[TargetConfig(pattern="q_proj", r=4, k=2)]),
                    output_dir=str(tmp_path / "run"))
    model = model_module.apply_adapters(make_tiny_llama(), run.adapter)
    report = model.report
    save_adapters(model, tmp_path / "a", run_config=run)
    data = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert data["output_dir"] == str(tmp_path / "run") and data["train"]["steps"] == run.train.steps
    assert data["adapter"]["skeletons"] == report.resolved_skeletons
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["adapter_model.safetensors", "config.yaml"]


def test_real_minilm_roundtrip(minilm, tmp_path):
    cfg = AdapterConfig(method="idlora", targets=[TargetConfig(pattern="value", layers=[0, 3], r=8, k=4, rb_splits=2)])
    ids = minilm.tokenizer("Low-rank adapters, reloaded.", return_tensors="pt")["input_ids"]
    with shared_weight_copy(minilm.model) as copied:
        model = model_module.apply_adapters(copied, cfg)
        _perturb(model)  # adapter tensors only: the shared base weights stay as they are
        with torch.no_grad():
            expected = model(input_ids=ids).last_hidden_state
        save_adapters(model, tmp_path)
    with shared_weight_copy(minilm.model) as fresh:
        loaded = load_adapters(fresh, tmp_path)
        report = loaded.report
        with torch.no_grad():
            assert torch.equal(loaded(input_ids=ids).last_hidden_state, expected)
    assert report.totals["trainable"] == 2 * (384 * 8 // 4 + 4 * 8)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an adapter folder"):
        load_adapters(make_tiny_llama(), tmp_path)
    cfg = AdapterConfig(method="hydralora", targets=[TargetConfig(pattern="q_proj", r=4, heads=2)])
    model = model_module.apply_adapters(make_tiny_llama(), cfg)
    save_adapters(model, tmp_path)
    other = cfg.model_copy(update={"targets": [TargetConfig(pattern="q_proj", r=2, heads=2)]})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"adapter": other.model_dump(mode="json")}))
    with pytest.raises(ValueError, match="saved shape"):
        load_adapters(make_tiny_llama(), tmp_path)


def test_peft_adapter_with_its_own_name(tmp_path):
    cfg = AdapterConfig(method="lora", targets=[TargetConfig(pattern="v_proj", r=4)])
    model = model_module.apply_adapters(make_tiny_llama(), cfg, adapter_name="mine")
    _perturb(model)
    ids = torch.randint(5, 1000, (1, 6), generator=torch.Generator().manual_seed(2))
    expected = _out(model, ids)
    save_adapters(model, tmp_path)
    loaded = load_adapters(make_tiny_llama(), tmp_path)
    report = loaded.report
    assert torch.equal(_out(loaded, ids), expected)
    assert loaded.active_adapter == "mine" and report.totals["trainable"] == 2 * 4 * (16 + 32)


# --- hardening (issue 8 item 13): one-line errors, NaN / inf, skeleton verified on load ---


def _saved_idlora(tmp_path, seed=3):
    cfg = AdapterConfig(method="idlora", targets=[TargetConfig(pattern="q_proj", r=4, k=2)], seed=seed)
    model = model_module.apply_adapters(make_tiny_llama(), cfg)
    report = model.report
    _perturb(model)
    save_adapters(model, tmp_path)
    return cfg, report


@pytest.mark.parametrize("damage", ["missing", "empty", "truncated", "garbage"])
def test_bad_weights_file_is_one_line_naming_it(damage, tmp_path):
    _saved_idlora(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    data = path.read_bytes()
    if damage == "missing":
        path.unlink()
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(b"\x00" * 8 + b"not json" * 10)
    with pytest.raises(AdapterLoadError) as info:
        load_adapters(make_tiny_llama(), tmp_path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert {"missing": "missing", "empty": "empty"}.get(damage, "truncated or corrupt") in message


@pytest.mark.parametrize("method", ["idlora", "lora"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_weights_are_an_error(method, bad, tmp_path):
    from safetensors.torch import load_file, save_file

    cfg = AdapterConfig(method=method, targets=[target_for(method, pattern="q_proj", r=4, k=2, heads=2)])
    model = model_module.apply_adapters(make_tiny_llama(), cfg)
    save_adapters(model, tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    with safe_open_meta(path) as metadata:
        tensors = load_file(str(path))
        name = next(k for k, v in tensors.items() if v.is_floating_point())
        tensors[name][0, 0] = bad
        save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(AdapterLoadError, match=f"{name}.*NaN/inf"):
        load_adapters(make_tiny_llama(), tmp_path)


class safe_open_meta:
    """Context manager giving the metadata of a safetensors file (to write it back unchanged)."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            return f.metadata()

    def __exit__(self, *exc):
        return False


def _edit_skeleton(tmp_path, edit):
    data = yaml.safe_load((tmp_path / "config.yaml").read_text())
    name = sorted(data["adapter"]["skeletons"])[0]
    data["adapter"]["skeletons"][name] = edit(data["adapter"]["skeletons"][name])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    return name


def test_saved_skeleton_is_in_the_weights_file_with_a_row_hash(tmp_path):
    from safetensors import safe_open

    _, report = _saved_idlora(tmp_path)
    with safe_open(str(tmp_path / "adapter_model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        hashes = json.loads(f.metadata()["skeleton_rows_sha256"])
        for name, skeleton in report.resolved_skeletons.items():
            assert f.get_tensor(f"{name}.idlora_skeleton").tolist() == skeleton
    assert set(hashes) == set(report.resolved_skeletons)
    assert not any(k.endswith("idlora_A") for k in keys)  # no copied rows in the file
    w = make_tiny_llama().get_submodule(sorted(hashes)[0]).weight
    skel = torch.tensor(report.resolved_skeletons[sorted(hashes)[0]])
    assert hashes[sorted(hashes)[0]] == skeleton_rows_hash(w, skel)
    assert skeleton_rows_hash(w.to(torch.bfloat16), skel) == skeleton_rows_hash(w, skel)
    assert skeleton_rows_hash(w, skel.flip(-1)) != skeleton_rows_hash(w, skel)


@pytest.mark.parametrize("how", ["duplicated", "swapped", "other-seed"])
def test_edited_skeleton_is_refused(how, tmp_path):
    _saved_idlora(tmp_path)
    if how == "other-seed":
        other = tmp_path / "other"
        _saved_idlora(other, seed=11)
        other_skeletons = yaml.safe_load((other / "config.yaml").read_text())["adapter"]["skeletons"]
        edit = lambda s: other_skeletons[sorted(other_skeletons)[0]]  # noqa: E731
    elif how == "duplicated":
        edit = lambda s: [s[0], [s[0][0]] + s[1][1:]]  # noqa: E731
    else:
        edit = lambda s: [[s[0][1], s[0][0]] + s[0][2:], s[1]]  # noqa: E731
    before = yaml.safe_load((tmp_path / "config.yaml").read_text())["adapter"]["skeletons"]
    name = _edit_skeleton(tmp_path, edit)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["adapter"]["skeletons"][name] != before[name]
    with pytest.raises(AdapterLoadError, match=f"{name}.*differs from the saved one"):
        load_adapters(make_tiny_llama(), tmp_path)


def test_other_base_model_is_refused(tmp_path):
    _saved_idlora(tmp_path)
    with pytest.raises(AdapterLoadError, match="rows W0\\[J\\].*differ"):
        load_adapters(make_tiny_llama(seed=1), tmp_path)
    load_adapters(make_tiny_llama(seed=0), tmp_path)  # the right base loads


def test_bad_config_yaml_is_one_line(tmp_path):
    _saved_idlora(tmp_path)
    (tmp_path / "config.yaml").write_text("adapter: [unclosed")
    with pytest.raises(AdapterLoadError, match="config.yaml: not readable YAML"):
        load_adapters(make_tiny_llama(), tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"adapter": {"method": "nope"}}))
    with pytest.raises(AdapterLoadError, match="config.yaml: invalid adapter config at method"):
        load_adapters(make_tiny_llama(), tmp_path)


def test_alias_bomb_in_an_adapter_config_is_one_line(tmp_path):
    import tracemalloc

    _saved_idlora(tmp_path)
    bomb = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True))
    (tmp_path / "config.yaml").write_text(bomb)
    tracemalloc.start()
    try:
        with pytest.raises(AdapterLoadError, match="config.yaml: not readable YAML") as err:
            load_adapters(make_tiny_llama(), tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(str(err.value)) < 400 and peak < 100 * 2**20
    (tmp_path / "config.yaml").write_text("adapter: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(AdapterLoadError, match="not readable YAML"):
        load_adapters(make_tiny_llama(), tmp_path)
