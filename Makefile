# The two commands of the README:
#   make demo   set up (virtualenv) and run the workflow on the synthetic demo plate
#   make test   set up (virtualenv + system packages) and run the whole test suite
VENV ?= .venv
PYTHON ?= python3
CORES ?= 2
PY := $(VENV)/bin/python

.PHONY: demo test setup system-deps lint bench-env

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

test: setup system-deps
	$(PY) -m pytest -ra

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
