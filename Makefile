# Two commands a new user needs: `make demo` and `make test`. Both create .venv and install everything first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup system-deps test test-fast demo clean lock secrets

setup: $(STAMP) system-deps

# Debian packages the tests use: PostgreSQL 15's server (a private cluster per test session) and docker-compose
# 1.29 (offline validation of docker-compose.yml), Chromium and its chromedriver (the MLflow UI browser test:
# selenium drives /usr/bin/chromedriver, nothing is downloaded) and dataset-fashion-mnist (the embedded
# fashion_mnist dataset's idx files in /usr/share/datasets/fashion-mnist). Installed only when missing, and only as root.
system-deps:
	@missing=""; \
	test -x /usr/lib/postgresql/15/bin/initdb || missing="$$missing postgresql-15"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	test -x /usr/bin/chromedriver || missing="$$missing chromium chromium-driver"; \
	test -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz || missing="$$missing dataset-fashion-mnist"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else echo "missing Debian packages:$$missing (sudo apt-get install$$missing)"; exit 1; fi; \
	fi

# torch first, pinned: on CPU machines `pip install torch==2.13.0` takes the CPU wheel (an unpinned torch would pull
# a multi-GB CUDA build). GPU users: see README "GPU users". Then every package exactly as requirements.lock pins it
# (its torch==2.13.0 is the one just installed), then the project itself without resolving anything again.
$(STAMP): pyproject.toml requirements.lock
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/python scripts/check_env.py
	touch $(STAMP)

# requirements.lock: pyproject.toml's dependencies and its `test` extra, every package pinned (pip-compile, pinned
# below), for `make` and the images (docker/*.Dockerfile). Rerun after changing pyproject.toml; existing pins are kept
# unless pyproject needs others (`make lock LOCK_ARGS=--upgrade` moves everything to the newest allowed). torch must
# resolve to the CPU wheel (this machine: /opt/wheels via pip's config; elsewhere
# LOCK_ARGS='--pip-args "--extra-index-url https://download.pytorch.org/whl/cpu"'); its +cpu label is dropped so
# the same line matches the CUDA build the GPU images install first. tests/deploy/test_lock.py checks the result.
PIP_TOOLS := pip-tools==7.6.2
LOCK_ARGS ?=
lock:
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q '$(PIP_TOOLS)'
	$(BIN)/pip-compile --quiet --extra test --strip-extras --no-emit-index-url --no-emit-find-links \
	  --no-emit-trusted-host $(LOCK_ARGS) -o requirements.lock pyproject.toml
	sed -i 's/^torch==\(.*\)+cpu$$/torch==\1/' requirements.lock
	@if grep -q '^triton==' requirements.lock; then \
	  echo "requirements.lock resolved a CUDA torch (it brings triton and CUDA wheels): make the CPU wheel reachable," \
	       "see LOCK_ARGS in the Makefile"; exit 1; fi

# Random secret files for docker-compose.yml (./secrets, git-ignored; existing files are kept).
secrets:
	sh docker/make-secrets.sh secrets

test: setup
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

# No Ray, MLflow, PostgreSQL, API server or browser: tests that use those are marked `integration` (tests/conftest.py)
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not integration"

# The embedded default: a local Ray head, an MLflow server and the API as child processes, the mnist5k preset
# (real MNIST digits; Si-BNN at rho 0, 0.3, 1 vs sign vs FP, five seeds) submitted through the API, the results and
# the paper's claims (holds / does not hold / not resolved, with 95 % intervals over seeds) printed at the end.
demo: setup
	$(BIN)/sibnn demo

clean:
	rm -rf $(VENV) .pytest_cache
