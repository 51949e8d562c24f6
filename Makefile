# `make up` starts the whole system with its embedded defaults; `make test` runs every test.
# Both install what they need first (Debian packages via apt-get, Python deps into .venv).
VENV   := .venv
PYTHON ?= python3

.PHONY: up test install system-deps bench clean

system-deps:
	@bash scripts/install-system-deps.sh

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

# The real Vercel CLI, for the test that checks our Vercel contract server against it.
.tools/node_modules/.bin/vercel:
	npm install --prefix .tools --no-audit --no-fund --loglevel=error vercel@48

# The real dbmate binary (npm's `dbmate` ships the linux-x64 build), for the migration tests that
# check our tracking-table writes against the tool itself.
.tools/node_modules/.bin/dbmate:
	npm install --prefix .tools --no-audit --no-fund --loglevel=error dbmate@2

install: system-deps $(VENV)/.installed

up: install
	$(VENV)/bin/rollback up

test: install .tools/node_modules/.bin/vercel .tools/node_modules/.bin/dbmate
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

bench: install
	$(VENV)/bin/python bench/app_rollback_downtime.py
	$(VENV)/bin/python bench/webhook_storm.py
	$(VENV)/bin/python bench/restore_downtime.py
	$(VENV)/bin/python bench/workers_throughput.py
	$(VENV)/bin/python bench/incident_declared.py

clean:
	rm -rf var .pytest_cache
