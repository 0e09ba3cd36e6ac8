# The two commands of the README:
#   make demo   set up (virtualenv) and run the workflow on the synthetic demo plate
#   make test   set up (virtualenv + system packages + CellProfiler venv) and run the whole test suite
# and, beside them, make test-unit: the unit tests only (virtualenv and real fields; no Snakemake,
# no system services), under 3 minutes on 2 cores.
VENV ?= .venv
PYTHON ?= python3
CORES ?= 2
PY := $(VENV)/bin/python

.PHONY: demo test test-unit setup system-deps lint bench-env cellprofiler-env real-fields

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	$(VENV)/bin/pip install --quiet --no-deps -e .
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/snakemake --cores $(CORES)

system-deps:
	bash tests/install_system_deps.sh

test: setup system-deps cellprofiler-env real-fields
	$(PY) -m pytest -ra

# Unit tests: every test not marked slow nor for Snakemake, the S3 server, SLURM, Chromium or CellProfiler
# (markers: pyproject.toml; tests/conftest.py). One reads the real fields, so they are fetched first.
UNIT_TESTS := not (slow or workflow or s3 or slurm or browser or cellprofiler)
test-unit: setup real-fields
	$(PY) -m pytest -ra -m "$(UNIT_TESTS)"

lint: setup
	$(VENV)/bin/snakemake --lint

# Benchmarks compare against CAREamics and BM3D in a separate venv (see benchmarks/requirements-bench.txt).
BENCH_VENV ?= .venv-bench
$(BENCH_VENV)/.installed: benchmarks/requirements-bench.txt pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet torch==2.13.0
	$(BENCH_VENV)/bin/pip install --quiet --no-deps careamics==0.3.5
	echo torch==2.13.0 > $(BENCH_VENV)/torch-pin.txt
	$(BENCH_VENV)/bin/pip install --quiet -c $(BENCH_VENV)/torch-pin.txt -r benchmarks/requirements-bench.txt
	$(BENCH_VENV)/bin/pip install --quiet --no-deps -e .
	touch $@

bench-env: $(BENCH_VENV)/.installed

# The CellProfiler test (tests/test_cellprofiler.py) runs real CellProfiler 5 headless from its own venv
# (it needs numpy < 2 and scipy < 1.11, which has wheels up to Python 3.11); made once, remade only
# when its requirements change.
CP_VENV := .venv-cellprofiler
$(CP_VENV)/.installed: tests/cellprofiler/requirements.txt
	$(PYTHON) -m venv $(CP_VENV)
	$(CP_VENV)/bin/pip install --quiet -r tests/cellprofiler/requirements.txt
	$(CP_VENV)/bin/pip install --quiet --no-deps CellProfiler-nightly==5.0.0.dev784
	touch $@

cellprofiler-env: $(CP_VENV)/.installed

# The real Opera Phenix sites of the pe2loaddata 0.2.0 sdist (tests/real_fields.py), fetched once into tests/.cache.
real-fields: setup
	PYTHON=$(abspath $(PY)) bash tests/fetch_real_fields.sh
