# Herald — the two commands a fresh machine needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test setup chromium proto check-proto lint typecheck unit lock clean benchmark bench-ingest bench-trigger bench-tracking

## run: set everything up and start the whole platform (embedded PostgreSQL and NATS)
run: $(STAMP)
	$(BIN)/herald run

## test: set everything up and run every check and the whole test suite
test: $(STAMP) chromium check-proto lint typecheck
	$(BIN)/pytest

setup: $(STAMP) chromium

## chromium: Debian's Chromium, which the dashboard's browser tests drive (installed when missing)
CHROMIUM := /usr/bin/chromium
APT_GET := env DEBIAN_FRONTEND=noninteractive apt-get
chromium:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; \
	  elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
	  else echo "The browser tests need Debian's chromium at $(CHROMIUM), and installing it needs root or sudo: run 'apt-get install chromium' as root, then make again." >&2; exit 1; fi; \
	  echo "Installing Debian's chromium for the dashboard's browser tests"; \
	  $$SUDO $(APT_GET) install -y --no-install-recommends chromium \
	    || { $$SUDO $(APT_GET) update && $$SUDO $(APT_GET) install -y --no-install-recommends chromium; } \
	    || { echo "Could not install Debian's chromium (apt-get failed, see above): install the chromium package, then make again." >&2; exit 1; }; \
	  test -x $(CHROMIUM) || { echo "chromium was installed but $(CHROMIUM) is missing" >&2; exit 1; }; \
	}

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Herald needs Python 3.11 or newer: make PYTHON=python3.11 …")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

## proto: regenerate the Python package `herald` from proto/ (commit the result)
proto: $(STAMP)
	$(BIN)/python scripts/generate_protos.py
	$(BIN)/buf lint

check-proto: $(STAMP)
	$(BIN)/python scripts/generate_protos.py --check
	$(BIN)/buf lint

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit

## lock: re-resolve every dependency to its newest release and pin it in requirements.lock
lock:
	rm -rf build/lock-venv
	$(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/python -m pip install --quiet --disable-pip-version-check '.[dev]'
	build/lock-venv/bin/python -m pip freeze --exclude herald > requirements.lock
	rm -rf build/lock-venv

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache

## benchmark: start the platform, push events through it, print throughput, latency and memory
benchmark: $(STAMP)
	$(BIN)/python -m scripts.benchmark

## bench-ingest: intake alone: events/s and latency for REST, batch and gRPC sends, with references
bench-ingest: $(STAMP)
	$(BIN)/python -m scripts.bench_ingest

## bench-trigger: one direct workflow trigger for 10,000 contacts: answer time, deliveries, completion
bench-trigger: $(STAMP)
	$(BIN)/python -m scripts.bench_trigger

## bench-tracking: the tracker's fact path alone: emailed events' facts applied fetch by fetch
bench-tracking: $(STAMP)
	$(BIN)/python -m scripts.bench_tracking
