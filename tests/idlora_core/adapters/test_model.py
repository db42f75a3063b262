"""AdaptedModel: one wrapper type for all five methods, carrying its config and report; the
public names of idlora_core."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from idlora_core.adapters.io import save_adapters
from idlora_core.adapters.model import AdaptedModel, apply_adapters, load_adapters
from idlora_core.config import AdapterConfig, RunConfig, TargetConfig, target_for
from tests.conftest import make_tiny_llama

pytestmark = pytest.mark.usefixtures("private_skeleton_cache", "one_thread")


@pytest.mark.parametrize("method", ["idlora", "lora", "dora", "hydralora", "full"])
def test_one_wrapper_for_every_method(method, tmp_path):
    base = make_tiny_llama()
    cfg = AdapterConfig(method=method, targets=[target_for(method, pattern="q_proj", r=4, k=2, heads=2)])
    adapted = apply_adapters(base, cfg)
    assert isinstance(adapted, AdaptedModel) and adapted.method == method
    assert adapted.unwrapped is base and adapted.unwrapped.model is base.model  # .model stays the model's
    assert adapted.report.totals["trainable"] == sum(r.formula for r in adapted.report.rows)
    if method == "idlora":
        assert adapted.adapter_config.skeletons == adapted.report.resolved_skeletons
    assert adapted.to("cpu") is adapted and adapted.train() is adapted and adapted.training
    assert adapted.eval() is adapted and not adapted.unwrapped.training
    ids = torch.randint(5, 1000, (1, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = adapted(input_ids=ids).logits
        assert torch.equal(out, adapted.module(input_ids=ids).logits)
    assert adapted.config is base.config  # attribute access is the model's
    save_adapters(adapted, tmp_path)  # needs nothing but the wrapper
    again = load_adapters(make_tiny_llama(), tmp_path)
    assert isinstance(again, AdaptedModel) and again.adapter_config == adapted.adapter_config
    with torch.no_grad():
        assert torch.equal(again.eval()(input_ids=ids).logits, out)
    assert method in repr(again)


def test_run_config_travels_with_the_model(tmp_path):
    run = RunConfig(adapter=AdapterConfig(method="idlora", targets=[TargetConfig(pattern="q_proj", r=4, k=2)]),
                    output_dir=str(tmp_path / "run"))
    adapted = apply_adapters(make_tiny_llama(), run.adapter)
    adapted.run_config = run
    save_adapters(adapted, tmp_path / "a")
    loaded = load_adapters(make_tiny_llama(), tmp_path / "a")
    assert loaded.run_config.output_dir == run.output_dir
    assert loaded.run_config.adapter.skeletons == adapted.report.resolved_skeletons
    with pytest.raises(TypeError, match="AdaptedModel"):
        save_adapters(adapted.module, tmp_path / "b")


def test_public_api_is_lazy_and_complete():
    code = ("import sys, idlora_core; assert 'torch' not in sys.modules; "
            "names = idlora_core.__all__; [getattr(idlora_core, n) for n in names]; "
            "assert {'AdaptedModel', 'apply_adapters', 'save_adapters', 'load_adapters', 'AdapterConfig', "
            "'TargetConfig', 'MinSizeKMeans', 'IDLoRALinear'} <= set(names); print(len(names))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    import idlora_core
    from idlora_core.adapters.io import save_adapters as direct

    assert idlora_core.save_adapters is direct
    with pytest.raises(AttributeError):
        idlora_core.not_a_name  # noqa: B018
