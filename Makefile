# manim-render-farm: every target documents itself (`make` or `make help`).
.DEFAULT_GOAL := help
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
FARM := $(VENV)/bin/farm
# Debian's Python: the render sandbox runs as an unprivileged uid that must be able to read it.
SYSTEM_PYTHON ?= $(shell command -v /usr/bin/python3 || command -v python3)

.PHONY: help system venv services demo down test test-fast multihost lint bench bench-load corpus clean

help: ## show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

system: ## install the Debian packages (ffmpeg, cairo, pango, TeX, bubblewrap, prometheus, chromium)
	@bash ops/dev/install-system.sh

# The client is its own distribution (client/); the server's [render] extra brings manim.
# Every install is locked by constraints.txt, as in the Dockerfile and CI.
# Scene plugins (docs/plugins.md): pinned, without their declared dependencies, which contradict
# manim 0.22 although the plugins work with it. PLUGINS=another-list.txt to change the set.
PLUGINS ?= ops/plugins.txt
$(VENV)/.installed: setup.cfg pyproject.toml client/setup.cfg constraints.txt VERSION $(PLUGINS)
	@test -x $(PY) || $(SYSTEM_PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -c constraints.txt -e ./client -e '.[dev,render]'
	@$(PY) -m pip install -q --no-deps -c constraints.txt -r $(PLUGINS)
	@touch $@

venv: $(VENV)/.installed ## create the virtualenv with the project, its client and dev tools

services: system venv ## start PostgreSQL, Redis and the local S3 (SeaweedFS) if they are down
	@bash ops/dev/services.sh

demo: services ## bring up the whole farm locally and render examples/hello.py
	@bash ops/dev/stack.sh up
	@bash ops/dev/stack.sh demo

down: ## stop what `make demo` started (and nothing else)
	@bash ops/dev/stack.sh down

# Two pytest-xdist processes, each with its own slot (database, Redis, bucket, ports); a module
# (or the multi-host bed) stays in one process (tests/conftest.py's groups).
PYTEST_PARALLEL ?= -n 2 --dist loadgroup
test: services ## run the test suite against real services and renders
	@$(VENV)/bin/pytest $(PYTEST_PARALLEL)

test-fast: services ## the tests that render nothing (no worker, no sandbox, not slow)
	@$(VENV)/bin/pytest $(PYTEST_PARALLEL) -m "not slow and not render"

multihost: services ## the multi-host fault tests: namespaces as hosts, links cut, services restarted (root)
	@$(VENV)/bin/pytest tests/multihost

lint: venv ## ruff and mypy
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .
	@$(VENV)/bin/mypy farm api workers client/farm_client

corpus: services ## every corpus scene vs plain manim, also split at every animation
	@FARM_CORPUS=all $(VENV)/bin/pytest -n auto -p no:cacheprovider tests/test_fidelity.py

bench: services ## farm vs plain manim on the benchmark scene, as ratios; then bench-load
	@$(PY) ops/bench/run.py
	@$(MAKE) --no-print-directory bench-load

bench-load: venv ## 1000 submits by 20 users, then GET p99 at 200 req/s, on the multi-host bed (root)
	@$(PY) ops/bench/load.py

clean: ## remove the venv and local state
	rm -rf $(VENV) .run test-artifacts
