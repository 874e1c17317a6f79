# The two commands a new machine needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
SRC := service simulators
# Hide this machine's notices about absent local package mirrors; keep every real error.
PIP_FILTER := { grep -v -e 'is ignored: it is neither' -e BuildBackendWarning || true; }
export PATH := $(PATH):/usr/sbin:/sbin

.PHONY: install system-deps lint docs test unit integration demo bench-detection clean

install: $(VENV)/.installed system-deps

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	set -o pipefail; \
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,bench,docs]' 2>&1 | $(PIP_FILTER)
	touch $@

# Mosquitto for the broker, its clients (mosquitto_sub, mosquitto_pub) to watch and feed it,
# Prometheus for promtool and the demo's scrape, Chromium for the status page's browser test.
system-deps:
	@if ! command -v mosquitto >/dev/null || ! command -v mosquitto_sub >/dev/null || \
		! command -v promtool >/dev/null || ! command -v chromium >/dev/null; then \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
			mosquitto mosquitto-clients prometheus chromium >/dev/null; \
	fi

lint: install
	$(VENV)/bin/ruff check $(SRC) tests benchmarks
	$(VENV)/bin/ruff format --check $(SRC)
	$(VENV)/bin/mypy $(SRC)

unit: install
	$(VENV)/bin/pytest -q tests/unit service

integration: install
	$(VENV)/bin/pytest -q tests/integration

# The manual (mkdocs.yml, docs/) into site/: strict, so a broken link or anchor fails; offline.
# Not --quiet: it hides the warnings that strict counts, so the build would pass anyway.
# NO_MKDOCS_2_WARNING silences mkdocs-material's banner about its end of life.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# Two workers (CI has 2 cores): most tests wait on the processes they started, so the suite
# takes 380 - 420 s against 802 s in one process (`make test PYTEST_WORKERS=0`).
PYTEST_WORKERS ?= 2

test: lint docs
	$(VENV)/bin/pytest -q --numprocesses $(PYTEST_WORKERS) --dist worksteal

demo: install
	$(PY) -m simulators.demo

# Detection quality on SKAB valve1 and TEP, every family and peers (SKAB_DIR=<folder with
# valve1/>, TEP_DIR=<folder of the TEP files>), about 8 minutes.
bench-detection: install
	$(PY) -m benchmarks.detection

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
