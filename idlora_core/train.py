"""`python -m idlora_core.train CONFIG.yaml`: the training command line (`training/cli.py`)."""

import sys

from idlora_core.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
