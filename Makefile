# Two entry points (see README): `make parity` runs the main job, `make test` the test suite.
# Each sets itself up: a bootstrap uv, then .venv synced from uv.lock and compiled to
# bytecode (what the commands import when synced, the rest before the tests): with
# PYTHONDONTWRITEBYTECODE=1 (common in CI and Docker images) nothing else would compile it,
# and every parity process and local worker would recompile what it imports.
# The commands (`parity`, `drift`, `bisect`) need only the package's own dependencies: they
# sync those alone (--no-dev), and --inexact, so that they never remove the development
# group a `make test` installed. The tests, lint and bench sync it exactly, dev group included.
PYTHON ?= python3.11
UV_VERSION := 0.13.9
BOOT := .cache/bootstrap
UV := $(BOOT)/bin/uv
VENV := .venv
RUNTIME := $(VENV)/.runtime
SYNCED := $(VENV)/.synced
COMPILED := $(VENV)/.compiled
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: parity drift bisect test test-fast lint bench lock-check clean

# The bootstrap venv gets no pip of its own (ensurepip takes seconds): $(PYTHON)'s pip
# installs uv into it; a Python without pip (or with one older than 22.3) gets one there.
$(UV):
	$(PYTHON) -m venv --without-pip $(BOOT)
	$(PYTHON) -m pip --python $(BOOT)/bin/python install --quiet --disable-pip-version-check \
		uv==$(UV_VERSION) || { $(BOOT)/bin/python -m ensurepip --default-pip && \
		$(BOOT)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION); }

# What the commands run: the project and its dependencies, compiled.
$(RUNTIME): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --no-dev --inexact --python $(PYTHON) --quiet
	$(VENV)/bin/python scripts/compile_runtime.py
	@touch $@

# Everything, exactly as locked (the commands' part too: it stamps $(RUNTIME) as well).
$(SYNCED): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PYTHON) --quiet
	$(VENV)/bin/python scripts/compile_runtime.py
	@touch $@ $(RUNTIME)

# Everything else in .venv (MLflow, DVC, numba, the test tools: ~14,000 modules, ~50 s on 2
# cores) is compiled before the tests only: the commands do not import it.
$(COMPILED): $(SYNCED)
	$(VENV)/bin/python scripts/compile_runtime.py --all
	@touch $@

## The main job: parity check of the reference model on the default config.
parity: $(RUNTIME)
	$(VENV)/bin/parity check --config parity.toml

## The NumPy-drift example: must fail (exit 1), name numpy and localize it to preprocessing.
drift: $(RUNTIME)
	$(VENV)/bin/parity check --config examples/numpy-drift/parity.toml --localize

## Which package makes the NumPy-drift example diverge (exit 1, names numpy).
bisect: $(RUNTIME)
	$(VENV)/bin/parity bisect --config examples/numpy-drift/parity.toml

## The whole test suite, slow tests (real venvs with torch) included.
test: $(COMPILED)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

## Only the fast tests (no torch venvs).
test-fast: $(COMPILED)
	$(VENV)/bin/pytest -m "not slow" $(PYTEST_ARGS)

## ruff, mypy, the layers of docs/ARCHITECTURE.md (import contracts, no import cycles), and
## docs/COMMANDS.md current with the commands' --help.
lint: $(SYNCED)
	$(VENV)/bin/ruff check envlock parity model tests benchmarks scripts
	$(VENV)/bin/ruff format --check envlock parity model tests benchmarks scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/python scripts/import_cycles.py
	$(VENV)/bin/python scripts/command_reference.py --check

lock-check: $(SYNCED)
	$(VENV)/bin/envlock lock --check --spec locks/pyproject.toml
	$(VENV)/bin/envlock lock --check --spec examples/numpy-drift/locks/pyproject.toml
	$(VENV)/bin/envlock lock --check --spec examples/mlserver/locks/pyproject.toml
	$(VENV)/bin/envlock lock --check --spec examples/mlserver/numpy-drift/pyproject.toml
	$(VENV)/bin/envlock lock --check --spec examples/bentoml/locks/pyproject.toml
	$(VENV)/bin/envlock lock --check --spec examples/bentoml/numpy-drift/pyproject.toml

## Every promised figure, measured in one run, in one table (benchmarks/bench.py; minutes).
bench: $(SYNCED)
	$(VENV)/bin/python benchmarks/bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(BOOT)
