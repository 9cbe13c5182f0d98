# Erasure Studio: `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU build of PyTorch (a bare `torch` requirement pulls a multi-GB CUDA build).
# GPU users: install your own torch into .venv first; this pin is skipped when torch is present.
TORCH  ?= torch==2.13.0

.PHONY: demo test venv clean clean-outputs browser-deps

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[app,test]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/studio demo

test: venv
	$(PY) -m pytest -q

browser-deps:
	@command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium) || echo "chromium not installed: browser tests will be skipped"

# the environment and caches only; what the studio made (erased models, training runs) goes with clean-outputs
clean:
	rm -rf $(VENV) .pytest_cache

clean-outputs:
	rm -rf outputs runs
