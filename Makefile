# Two entry points: `make run` serves the embedded default, `make test` runs lint + the suite.
# Both bootstrap the virtualenv idempotently from requirements/dev.lock (exact versions with
# hashes: a fresh clone installs what CI tested), re-installing only when the lock changes.
# `make lock` refreshes the lock from pyproject.toml's ranges.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=
# xdist workers for `make pytest` (3 measured fastest on 2 cores: the tests mostly wait on
# sockets, subprocesses, PostgreSQL and Redis); PYTEST_WORKERS=0 runs the suite serially.
PYTEST_WORKERS ?= 3

.PHONY: run test lint format pytest bench clean venv fuzz soak lock vendor

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)

LOCK := requirements/dev.lock
# --no-deps on the project itself: every dependency comes from the lock; the editable install
# runs without build isolation, so setuptools and wheel come from the lock too.
$(STAMP): pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

# Re-resolve the newest versions pyproject.toml's ranges allow (uv, installed into the venv for
# this alone), then `make test` before committing the new lock.
lock: | $(BIN)/python
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml requirements/build.in --extra dev --universal \
		--python-version 3.11 --generate-hashes --quiet -o $(LOCK) $(LOCK_ARGS)

venv: $(STAMP)

# The web dashboard's third-party JavaScript, refreshed from the npm registry at the versions
# pinned in scripts/vendor-web.sh (needs npm; nothing else ever does). Commit the result.
vendor:
	bash scripts/vendor-web.sh

# On the default ./dashboard.db (no DASHBOARD_DATABASE_URL), serve in demo mode while the
# database holds no task (sample data and simulated agents, so that every screen has
# something to show). Decided by serve after it has checked the port, so a failed start
# never leaves a seeded file behind that turns the next run's demo off.
run: $(STAMP)
	@demo=; if [ -z "$$DASHBOARD_DATABASE_URL" ]; then demo=--demo-if-empty; fi; \
	$(BIN)/dashboard-api serve --host $(HOST) --port $(PORT) $$demo $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

# loadgroup: tests that share a module fixture (a PostgreSQL cluster of their own, the
# schema fuzz's apps) carry an xdist_group mark and stay on one worker.
pytest: $(STAMP)
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

test: lint pytest

# hardening: a longer, randomized schemathesis round over every operation and role, on
# SQLite and on PostgreSQL + Redis.
FUZZ_EXAMPLES ?= 60
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_RANDOM=1 $(BIN)/pytest -q -s tests/hardening/test_schema_fuzz.py tests/hardening/test_ws_fuzz.py --timeout 3600

# hardening: 10 minutes of mixed load on PostgreSQL + Redis (a database and key prefix of its
# own), then the audits (not in CI); `make soak ARGS="--minutes 2"`, `ARGS="--backend sqlite"`.
soak: $(STAMP)
	$(BIN)/python -m bench.soak $(ARGS)

# `make bench` lists the benchmarks; `make bench ARGS="tasks_api --requests 20"` runs one
# (bench/README.md says what each measures and holds the current figures).
bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
