# Two commands do all the set-up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test clean-demo

setup: $(VENV)/.installed

# pip takes the pinned torch/torchvision from the machine's local wheel store (see pyproject.toml). --no-compile:
# byte-compiling every module of torch and its kin took half the install (3 min 10 s against 1 min 30 s, measured
# 2026-12-02); Python compiles the few thousand a run imports on first use instead.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile -e '.[test]'
	touch $@

demo: setup
	$(BIN)/snakemake --cores all

# Two workers: half of a test's time is one core importing torch while the other idles (see tests/conftest.py).
test: setup
	$(BIN)/pytest -n 2 --dist loadgroup --no-loadscope-reorder

clean-demo:
	rm -rf outputs/demo data/demo
