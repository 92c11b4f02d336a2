# Two commands do all the set-up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint clean-demo

setup: $(VENV)/.installed

# pip takes the pinned torch/torchvision from the machine's local wheel store (see pyproject.toml). It byte-compiles
# every module (half the install's 3 min): keep it, for where PYTHONDONTWRITEBYTECODE is set (as on these machines)
# nothing caches a module compiled at import, and a suite without the .pyc files took 36 min instead of 18.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: setup
	$(BIN)/snakemake --cores all

# Two workers: half of a test's time is one core importing torch while the other idles (see tests/conftest.py).
# The 15 slowest tests close every run's log: where CI's time goes, without a second run to find out.
test: setup
	$(BIN)/pytest -n 2 --dist loadgroup --no-loadscope-reorder --durations=15

# The rule files as snakefmt formats them, and Snakemake's own linter on the workflow: both take seconds.
lint: setup
	$(BIN)/snakefmt --check Snakefile rules/
	$(BIN)/snakemake --lint

clean-demo:
	rm -rf outputs/demo data/demo
