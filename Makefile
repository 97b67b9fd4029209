# The two set-up commands: `make run` and `make test`. Everything else builds on them.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?=

.PHONY: install run test test-slow bench bench-targets fuzz soak clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python setup.py
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	scripts/link_bcc.sh $(VENV)
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/risk-engine serve $(if $(CONFIG),--config $(CONFIG),)

# two pytest processes (the machine's 2 cores: a test mostly waits on an engine or a compile);
# --dist loadfile keeps a module's tests, and so its module-scoped engine, in one process
TEST_JOBS ?= 2

test: install
	$(BIN)/python -m pytest -q -m "not slow" -n $(TEST_JOBS) --dist loadfile tests

# The tests marked `slow` (a wheel built and installed in a fresh venv, the largest kernel
# oracles, engines under load, the cluster end to end, bench smoke runs): each has a cheaper
# sibling in `make test`; .ci/run runs them after `make test`, so CI runs every test. Two
# pytest processes: the cluster modules and the bench smoke runs in one, the rest in the other
# (scripts/test_slow.sh).
test-slow: install
	scripts/test_slow.sh $(BIN)/python

bench: install
	$(BIN)/python -m bench.latency --clients 100 --duration 30 --rounds 3

# issue 22's target lines (docs/BENCH.md): a run of its own, not part of `bench`, whose
# acceptance figures come from bench.latency and whose exit code would stop the second run
bench-targets: install
	$(BIN)/python -m bench.targets

# the admin fuzzer drives a real engine's admin socket: a round trip per input (not an
# in-process decode), so 100,000 inputs take minutes where the decoder does a million
fuzz: install
	$(BIN)/python -m tests.ingress.fuzz_decoder --iterations 1000000
	$(BIN)/python -m tests.engine.fuzz_admin --iterations 100000

soak: install
	$(BIN)/python -m bench.soak --duration 600

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
