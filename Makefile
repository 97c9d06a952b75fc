# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Debian's dataset-fashion-mnist package: the data of the demo, the tests and the smoke profile.
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: install data slurm test test-quick lint demo bench faults clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-install only when the project's metadata changed.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Fashion-MNIST through apt when it is missing and this is root on a machine with apt; otherwise say what to do.
data:
	@if [ -z "$$HARNESS_DATA_ROOT" ] && [ ! -f $(FMNIST) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's dataset-fashion-mnist"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null \
	      || (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null); \
	  else \
	    echo "Fashion-MNIST is missing: apt-get install dataset-fashion-mnist, or set HARNESS_DATA_ROOT (see README)"; \
	  fi; \
	fi

# ruff, then the import layers of pyproject.toml's [tool.importlinter] (one-way packages, no torch in planning).
lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports

# A one-node SLURM cluster on this machine (root; installs slurm-wlm and munge with apt when missing).
slurm:
	bash scripts/slurm-local.sh up

# The SLURM tests need a cluster: as root, with apt or SLURM installed, start the local one first. Elsewhere they
# skip, and a failed start only warns, unless HARNESS_REQUIRE_SLURM=1 (CI): then either one fails `make test`.
test: lint data
	@if [ "$$(id -u)" = 0 ] && { command -v apt-get >/dev/null || command -v sbatch >/dev/null; }; then \
	  bash scripts/slurm-local.sh up || { \
	    if [ "$$HARNESS_REQUIRE_SLURM" = 1 ]; then echo "SLURM did not come up (HARNESS_REQUIRE_SLURM=1)" >&2; exit 1; fi; \
	    echo "warning: SLURM did not come up; the SLURM tests will be skipped" >&2; }; \
	fi
	$(PY) -m pytest -q

# The same lint and tests without the ones marked slow (the paper's smoke sweep, the SLURM end-to-end runs, local
# training jobs) and without bringing SLURM up: a minute or two while editing. `make test` still runs everything.
test-quick: lint data
	$(PY) -m pytest -q -m "not slow"

# The fault-injection suite's full counts (tests/faults: 20 training kills, 10+ launcher kills, every corruption and
# bad input; ~5 minutes on 2 cores); `make test` runs its quick variant. Brings SLURM up where it can, as `test` does.
faults: install data
	@if [ "$$(id -u)" = 0 ] && command -v sbatch >/dev/null; then bash scripts/slurm-local.sh up || true; fi
	$(PY) -m tests.faults --full

demo: install data
	$(PY) -m harness.demo

# The benchmarks at their CPU settings (a few minutes on 2 cores): training steps against the FLOP model, the data
# pipelines per worker, plan / status / report. Each prints met / MISSED beside its targets and writes JSON to
# $$HARNESS_RESULTS/bench or /tmp/splitmask-bench (bench/__init__.py). On a GPU: bash bench/gpu_check.sh.
bench: install data
	$(PY) -m bench step
	$(PY) -m bench data
	$(PY) -m bench harness

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .grimp_cache .import_linter_cache *.egg-info
