# Every target sets up .venv on first use, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CONFIG ?= configs/adult.yaml
# the tests run on every core, a test file per worker (its module fixtures built once)
PYTEST_ARGS ?= -n auto --dist loadfile
STAMP  := $(VENV)/.installed

.PHONY: audit test bench bench-audit bench-scale bench-monitoring lint format validate clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,pdf,dask,mlflow]'
	touch $(STAMP)

audit: $(STAMP)
	$(PY) -m audit run $(CONFIG) $(ARGS)

validate: $(STAMP)
	$(PY) -m audit validate $(CONFIG)

test: $(STAMP)
	$(PY) -m ruff check audit tests bench
	$(PY) -m ruff format --check audit tests bench
	$(VENV)/bin/lint-imports
	$(PY) -m pytest $(PYTEST_ARGS)

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,pdf,dask,mlflow,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) bench/run.py $(ARGS)

# The default Adult audit end to end, 3 fresh processes: wall, stages, imports against issue 17's targets
bench-audit: $(STAMP)
	$(PY) bench/audit_run.py $(ARGS)

# Large data: 100k, 1M and 5M rows (generated once into bench/.data); ARGS="--sizes 100000,1000000" for fewer
bench-scale: $(BENCH_STAMP)
	$(PY) bench/scale.py $(ARGS)

# A year of monthly reports on Adult with a known slow drift: reports/adult_monthly/index.html, bench/monitoring_trend.png
bench-monitoring: $(STAMP)
	$(PY) bench/monitoring.py $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check audit tests bench
	$(PY) -m ruff format --check audit tests bench
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(PY) -m ruff format audit tests bench

clean-venv:
	rm -rf $(VENV)
