"""`idlora-lab`: start the Streamlit app on this machine (localhost unless told otherwise).

Runs `streamlit run app/main.py` from the repository root, so the committed
`.streamlit/config.toml` applies; extra arguments pass through to Streamlit
(e.g. `idlora-lab --server.port 8600`).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def streamlit_command(argv: Sequence[str]) -> list[str]:
    """Return the argument list that starts the app (bound to 127.0.0.1 unless argv sets an address)."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO_ROOT / "app" / "main.py")]
    if not any(arg.startswith("--server.address") for arg in argv):
        cmd.append("--server.address=127.0.0.1")
    return cmd + list(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Start the app in the foreground; returns Streamlit's exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    return subprocess.call(streamlit_command(args), cwd=REPO_ROOT)  # noqa: S603 - no shell


if __name__ == "__main__":
    sys.exit(main())
