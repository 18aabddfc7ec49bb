# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: run test quick lint typecheck unit bench clean redis-server nginx multi-host

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Runtime install (stamp refreshed when pyproject.toml changes).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

run: $(VENV)/.installed
	$(BIN)/trioproxy serve $(ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check trioproxy tests bench examples
	$(BIN)/ruff format --check trioproxy tests bench examples

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy --strict trioproxy

# The shared-state tests run against a real redis-server (Debian's package).
redis-server:
	@command -v redis-server >/dev/null || { \
		echo "installing redis-server (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }
	@command -v redis-server >/dev/null || { echo "redis-server could not be installed"; exit 1; }

# The proxy-in-front tests run a real nginx (Debian's nginx-light).
nginx:
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || { \
		echo "installing nginx-light (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null; }
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || { echo "nginx could not be installed"; exit 1; }

unit: $(VENV)/.installed-dev redis-server nginx
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck unit

# The inner loop: lint, types and the fast tests (no subprocesses, campaigns or benches).
quick: lint typecheck redis-server nginx
	$(BIN)/python -m pytest -q -m 'not slow' $(PYTEST_ARGS)

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(VENV)/.installed $(VENV)/.installed-dev $@

# All scenarios against direct, trioproxy and nginx (if installed: apt-get install nginx-light).
bench: $(VENV)/.installed-bench
	$(BIN)/python -m bench $(ARGS)

# Two gateways sharing one Redis (examples/multi-host).
multi-host: $(VENV)/.installed redis-server
	bash examples/multi-host/run.sh

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
