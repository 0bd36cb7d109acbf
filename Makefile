# Two commands a new user needs: `make demo` and `make test`. Both create .venv and install everything first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup system-deps test test-fast demo clean

setup: $(STAMP) system-deps

# Debian packages the tests use: PostgreSQL 15's server (a private cluster per test session) and docker-compose
# 1.29 (offline validation of docker-compose.yml), Chromium and its chromedriver (the MLflow UI browser test:
# selenium drives /usr/bin/chromedriver, nothing is downloaded). Installed only when missing, and only as root.
system-deps:
	@missing=""; \
	test -x /usr/lib/postgresql/15/bin/initdb || missing="$$missing postgresql-15"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	test -x /usr/bin/chromedriver || missing="$$missing chromium chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else echo "missing Debian packages:$$missing (sudo apt-get install$$missing)"; exit 1; fi; \
	fi

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
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# The embedded default: a local Ray head, an MLflow server and the API as child processes, the mnist5k preset
# (real MNIST digits; Si-BNN at rho 0, 0.3, 1 vs sign vs FP, two seeds) submitted through the API, the results and
# the paper's claims (holds / does not hold) printed at the end.
demo: setup
	$(BIN)/sibnn demo

clean:
	rm -rf $(VENV) .pytest_cache
