"""The model loader's errors for careless paths (issue 8 #15): one line, naming the problem."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from idlora_core.models import ModelNotFoundError, load_model, resolve_source


def test_a_file_is_not_a_model_directory(tmp_path):
    with pytest.raises(ModelNotFoundError, match="/etc/passwd is a file, not a model directory"):
        resolve_source("/etc/passwd")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_source(str(tmp_path / "missing"))


@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_truncated_safetensors_is_one_line(tmp_path, tiny_bert_dir, keep):
    folder = Path(shutil.copytree(tiny_bert_dir, tmp_path / "model"))
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelNotFoundError) as info:
        load_model(str(folder))
    message = str(info.value)
    assert "damaged or truncated" in message and "\n" not in message and len(message) < 600
