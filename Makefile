# Two commands a new user needs: `make demo` and `make test`. Both create .venv and install everything first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast demo bench clean

setup: $(STAMP)

# torch first, pinned: on CPU machines `pip install torch==2.13.0` takes the CPU wheel (an unpinned torch would pull
# a multi-GB CUDA build). GPU users: see README "GPU users".
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/python scripts/check_env.py
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

demo: setup
	$(BIN)/python -m sibnn.train --dataset digits --binarizer sibnn --rho 0.3 --epochs 30

clean:
	rm -rf $(VENV) .pytest_cache
