"""`idlora-lab`, the installed entry point that starts the app."""

import sys

from app.launch import REPO_ROOT, streamlit_command


def test_binds_localhost_unless_an_address_is_given():
    cmd = streamlit_command([])
    assert cmd[:4] == [sys.executable, "-m", "streamlit", "run"]
    assert cmd[4] == str(REPO_ROOT / "app" / "main.py")
    assert "--server.address=127.0.0.1" in cmd
    served = streamlit_command(["--server.address=0.0.0.0", "--server.port", "8600"])
    assert "--server.address=127.0.0.1" not in served
    assert served[-3:] == ["--server.address=0.0.0.0", "--server.port", "8600"]


def test_every_declared_script_resolves_to_a_callable():
    import importlib
    import tomllib

    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"idlora-lab", "idlora-train", "idlora-compare", "idlora-sweep", "idlora-scan",
            "idlora-study"} <= set(scripts)
    for target in scripts.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func))
