"""A served app under hostile input (issue 8 #1, #2, #3, #10): imports never run code,
the runs folder is a server setting, out-of-range imports are refused, localhost by default."""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app import settings_io as sio
from idlora_core.config import RunConfig, dumps_config
from idlora_core.jobs.runs import RunPathError, safe_run_dir

ROOT = Path(__file__).resolve().parents[2]
EXPORT_PAGE = str(ROOT / "app" / "views" / "export_import.py")
FINETUNE_PAGE = str(ROOT / "app" / "views" / "fine_tune.py")


def _remote_code_model(folder: Path, marker: Path) -> Path:
    """A model folder whose shipped Python writes `marker` as soon as it is imported."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evilbert", "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"},
    }))
    (folder / "evil.py").write_text(
        "import os, pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text(str(os.getpid()))\n"
        "from transformers import PretrainedConfig\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evilbert'\n"
    )
    return folder


def test_imported_yaml_never_runs_remote_code(tmp_path, minilm):
    marker = tmp_path / "pwned"
    folder = _remote_code_model(tmp_path / "evil-model", marker)
    at = AppTest.from_file(EXPORT_PAGE, default_timeout=90)
    at.run()
    assert not at.exception
    at.text_area(key="ex_paste").set_value(
        f"model: {{name: '{folder}', trust_remote_code: true}}\n")
    at.button(key="import_pasted").click().run()
    assert not at.exception
    assert not marker.exists(), "the imported YAML made the server execute the model's code"
    assert at.session_state["model_choice"] == "local"  # the import did select the folder ...
    assert at.session_state["trust_remote_code"] is False  # ... but not its code
    assert any("NOT turned on" in s.value for s in at.success)


def test_trust_needs_the_tick_and_an_existing_local_folder(tmp_path, monkeypatch):
    local = {"model_choice": "local", "model_path": str(tmp_path), "trust_remote_code": True}
    monkeypatch.delenv("IDLORA_LAB", raising=False)
    assert sio.trust_remote_code(local) is True  # the one way to enable it
    monkeypatch.setenv("IDLORA_LAB", "1")
    assert sio.trust_remote_code(local) is False  # never on a lab server
    monkeypatch.delenv("IDLORA_LAB")
    assert sio.trust_remote_code(local | {"trust_remote_code": False}) is False
    assert sio.trust_remote_code(local | {"model_path": "owner/name"}) is False  # a hub id
    assert sio.trust_remote_code(local | {"model_choice": "minilm"}) is False
    cfg = RunConfig.model_validate({"model": {"name": "x", "trust_remote_code": True}})
    values = sio.settings_from_config(cfg, {"model_choice": "local", "model_path": "x"})
    assert values["trust_remote_code"] is False and values["ex_import_trust_requested"] is True


def test_runs_root_is_a_server_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("IDLORA_RUNS_DIR", str(tmp_path / "r"))
    assert sio.runs_root() == (tmp_path / "r").resolve()
    monkeypatch.delenv("IDLORA_RUNS_DIR")
    assert sio.runs_root() == (ROOT / "runs").resolve()
    assert "ft_runs_root" not in sio.DEFAULTS
    for bad in ("/etc", "../x", "a/../../b", "", ".", "~"):
        with pytest.raises(RunPathError):
            safe_run_dir(tmp_path, bad if bad != "~" else "/root")
    # an imported output_dir keeps only the run name, never a folder outside the root
    for out, name in (("/etc/cron.d/x", None), ("../../x", None), ("runs/mine", "mine")):
        values = sio.settings_from_config(RunConfig(output_dir=out), {})
        assert values.get("ex_run_name") == name
        assert "ft_runs_root" not in values


def test_pages_have_no_folder_box_and_write_inside_the_root(tmp_path, monkeypatch, minilm):
    monkeypatch.setenv("IDLORA_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(FINETUNE_PAGE, default_timeout=60)
    at.session_state["ft_more"] = True
    at.session_state["ft_runs_root"] = "/"  # a value left from an old session: ignored
    at.run()
    assert not at.exception
    assert not [t for t in at.text_input if t.key == "ft_runs_root"]
    assert any(str(tmp_path) in m.value for m in at.multiselect if m.key == "ft_past") or \
        any(str(tmp_path) in m.label for m in at.multiselect if m.key == "ft_past")
    ex = AppTest.from_file(EXPORT_PAGE, default_timeout=90)
    ex.session_state["ft_runs_root"] = "/tmp"
    ex.run()
    assert not [t for t in ex.text_input if t.key == "ft_runs_root"]
    ex.text_input(key="ex_run_name").set_value("/etc/x").run()
    assert any("no absolute path" in e.value for e in ex.error)


@pytest.mark.parametrize("text, expect", [
    ("train: {steps: 1000000000}", "allowed range 1 to 10,000,000"),
    ("train: {batch_size: 5000}", "allowed range 1 to 4,096"),
    ("train: {steps: true}", "train.steps"),
])
def test_out_of_range_import_is_refused_not_clamped(text, expect, minilm):
    at = AppTest.from_file(EXPORT_PAGE, default_timeout=90)
    at.run()
    at.text_area(key="ex_paste").set_value(text)
    at.button(key="import_pasted").click().run()
    assert any(expect in e.value for e in at.error)
    from app.settings_io import DEFAULTS

    assert at.session_state["ft_steps"] == DEFAULTS["ft_steps"]  # untouched defaults
    assert at.session_state["ft_batch_size"] == DEFAULTS["ft_batch_size"]


def test_widget_ranges_hold_every_valid_config():
    for key, (lo, hi) in sio.WIDGET_LIMITS.items():
        assert hi is None or lo < hi, key
    assert sio.WIDGET_LIMITS["ft_steps"] == (1, 10_000_000)
    values = sio.settings_from_config(RunConfig.model_validate(
        {"train": {"steps": 10_000_000, "batch_size": 4096}}), {})
    assert sio.check_ranges(values) == []
    assert sio.check_ranges({"ft_steps": 0, "adapter_k": 5000}) == [
        "steps = 0: allowed range 1 to 10,000,000", "adapter_k = 5,000: allowed range 1 to 4,096"]
    assert dumps_config(RunConfig())  # the schema still serialises


def test_app_binds_localhost_by_default():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    assert config["client"]["toolbarMode"] == "minimal"
    dry = subprocess.run(["make", "-n", "app"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert "--server.address 127.0.0.1" in dry
    lab = subprocess.run(["make", "-n", "app-lab"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert "--server.address 0.0.0.0" in lab and "IDLORA_LAB=1" in lab


def test_alias_bomb_import_is_refused_on_the_page(minilm):
    lines = ["l0: &l0 [" + ", ".join(["lol"] * 9) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    bomb = "\n".join(lines) + "\nmodel: {name: *l8}\n"  # 9**9 leaves from ~450 bytes
    at = AppTest.from_file(EXPORT_PAGE, default_timeout=90)
    at.run()
    at.text_area(key="ex_paste").set_value(bomb)
    at.button(key="import_pasted").click().run()
    assert not at.exception
    (error,) = [e.value for e in at.error]
    assert "more than 500,000 nodes" in error and len(error) < 1000


def test_lab_server_reads_typed_paths_only_inside_its_folders(tmp_path, monkeypatch):
    runs, models = tmp_path / "runs", tmp_path / "models"
    (models / "bert").mkdir(parents=True)
    runs.mkdir()
    (runs / "atlas.csv").write_text("x\n")
    (runs / "escape").symlink_to("/etc")
    monkeypatch.setenv("IDLORA_RUNS_DIR", str(runs))
    monkeypatch.delenv("IDLORA_MODELS_DIR", raising=False)
    monkeypatch.delenv("IDLORA_LAB", raising=False)
    assert sio.lab_read_path("/etc", "model folder") == Path("/etc").resolve()  # one local user
    monkeypatch.setenv("IDLORA_LAB", "1")
    assert sio.lab_read_path(str(runs / "atlas.csv"), "scan CSV") == runs / "atlas.csv"
    for outside in ("/etc/passwd", str(runs / "escape" / "passwd"), str(runs / ".." / "models")):
        with pytest.raises(ValueError, match="outside the folders this lab server reads") as err:
            sio.lab_read_path(outside, "scan CSV")
        assert outside in str(err.value) and "IDLORA_MODELS_DIR is not set" in str(err.value)
    monkeypatch.setenv("IDLORA_MODELS_DIR", str(models))
    assert sio.lab_read_path(str(models / "bert"), "model folder") == models / "bert"


def test_lab_server_refuses_a_model_folder_outside_its_models_dir(tmp_path, monkeypatch,
                                                                  tiny_bert_dir):
    page = str(ROOT / "app" / "views" / "model_layers.py")
    monkeypatch.setenv("IDLORA_LAB", "1")
    monkeypatch.setenv("IDLORA_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("IDLORA_MODELS_DIR", str(tmp_path / "models"))
    at = AppTest.from_file(page, default_timeout=120)
    at.session_state["model_choice"] = "local"
    at.session_state["model_path"] = tiny_bert_dir
    at.run()
    assert not at.exception and len(at.metric) == 0  # nothing of the folder was read
    assert "outside the folders this lab server reads" in at.error[0].value
    monkeypatch.setenv("IDLORA_MODELS_DIR", str(Path(tiny_bert_dir).parent))
    at.run()
    assert not at.exception and len(at.error) == 0 and len(at.metric) > 0


def test_lab_server_atlas_reads_no_file_outside_the_runs_folder(tmp_path, monkeypatch):
    page = str(ROOT / "app" / "views" / "layer_atlas.py")
    monkeypatch.setenv("IDLORA_LAB", "1")
    monkeypatch.setenv("IDLORA_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(page, default_timeout=60).run()
    at.text_input(key="atlas_path").set_value("/etc/passwd")
    at.button(key="atlas_load").click().run()
    assert not at.exception and "atlas_table" not in at.session_state
    assert "outside the folders this lab server reads" in at.error[0].value
    assert "root:" not in " ".join(e.value for e in at.error)  # not a line of the file shown
