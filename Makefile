# nearcast: the two commands of the README, and the steps they are made of.
#   make run    start a node and push the sample lecture into it; open the printed URL
#   make fleet  start the fleet of samples/fleet.yml (or TOPOLOGY=FILE) here; Ctrl-C stops it
#   make test   run the whole test suite with real clients (FFmpeg, Chromium, Redis)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: all install run fleet test lint typecheck bench clean system-deps redis web

all: install

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,test]'
	@touch $@

node_modules/.package-lock.json: package.json package-lock.json
	@command -v npm >/dev/null || { echo "nearcast: npm is needed for hls.js (Debian: apt-get install npm)"; exit 1; }
	npm ci --no-audit --no-fund --loglevel=error

web: node_modules/.package-lock.json

install: $(STAMP) web

# Debian packages the suite drives as independent clients; installed when
# running as root on Debian, otherwise named so a person can install them.
system-deps:
	@sh tools/system-deps.sh

redis:
	@sh tools/ensure-redis.sh

run: install
	$(PY) -m nearcast.demo

fleet: install redis
	$(PY) -m nearcast fleet up --foreground $(if $(TOPOLOGY),--topology $(TOPOLOGY))

test: install system-deps redis
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: install
	$(VENV)/bin/mypy

bench: install system-deps
	$(PY) -m bench.transcode

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis
