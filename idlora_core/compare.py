"""`python -m idlora_core.compare RUN_DIR...`: the run comparison command (`training/compare.py`)."""

import sys

from idlora_core.training.compare import main

if __name__ == "__main__":
    sys.exit(main())
