# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both bootstrap the virtual environment (and, as root with apt, the Debian packages).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.stamp-install

.PHONY: demo test lint typecheck pytest bench system clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Debian packages for the eBPF transport and its tests; a no-op when not root or without apt.
system:
	@bash scripts/bootstrap-system.sh

-include bpf/bpf.mk

demo: $(STAMP) system
	$(PY) -m gossip demo

lint: $(STAMP)
	$(VENV)/bin/ruff check gossip tests bench
	$(VENV)/bin/ruff format --check gossip tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict gossip tests bench

# One random test order per run (pytest-randomly), a fresh seed each time;
# `make test TEST_SEED=N` replays the order of the run that printed N.
ifndef TEST_SEED
TEST_SEED := $(shell od -An -N4 -tu4 /dev/urandom | tr -d ' ')
endif

pytest: $(STAMP) system bpf-object
	@echo "pytest: random order, seed $(TEST_SEED) (replay: make test TEST_SEED=$(TEST_SEED))"
	HYPOTHESIS_PROFILE=ci $(PY) -m pytest -q -p no:cacheprovider -p randomly \
		--randomly-seed=$(TEST_SEED)

test: lint typecheck pytest

bench: $(STAMP)
	$(PY) -m bench.crypto_cost
	$(PY) -m bench.fuzz_decode
	$(PY) -m bench.transport_cost
	$(PY) -m bench.memory_cluster
	$(PY) -m bench.ebpf_fanout

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
