# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Debian's dataset-fashion-mnist package: the data of the demo, the tests and the smoke profile.
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: install data test lint demo clean

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

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint data
	$(PY) -m pytest -q

demo: install data
	$(PY) -m harness.demo

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
