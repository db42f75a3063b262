"""`python -m analysis.sweep ...`: the sweep command line, which lives in `analysis/sweep_cli.py`."""

import sys

from analysis.sweep_cli import main

sys.exit(main())
