# tbkd — two commands: `make reproduce` and `make test`. Each builds .venv first if needed.
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PROFILE ?= quick
TBKD_DATA_DIR ?=
export TBKD_DATA_DIR
WEIGHTS ?=
STAMP   := $(VENV)/.tbkd-installed
# nbval: lax mode compares only cells marked "# NBVAL_CHECK_OUTPUT"; the kernel is this venv.
NBVAL   := --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg

.PHONY: setup reproduce test test-unit test-notebooks notebooks lab bench clean help

help:
	@echo "make reproduce [PROFILE=quick|real|full] [TBKD_DATA_DIR=...] [WEIGHTS=random|imagenet|cxr]  run every notebook headlessly into runs/<profile>/"
	@echo "make test        unit tests + notebook regression tests (nbval)"
	@echo "make lab         JupyterLab on notebooks/ with the project's kernel"
	@echo "make notebooks   re-execute the committed notebooks in place (quick profile)"
	@echo "make bench       benchmark scripts (ratios measured side by side)"
	@echo "make clean       remove generated files (never the committed notebooks)"

# The environment: created when missing, refreshed when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	@touch $@

setup: $(STAMP)

reproduce: $(STAMP)
	$(VENV)/bin/tbkd reproduce --profile $(PROFILE) $(if $(TBKD_DATA_DIR),--data-dir $(TBKD_DATA_DIR),) $(if $(WEIGHTS),--weights $(WEIGHTS),)

test: $(STAMP)
	$(PY) -m pytest -q -ra --durations=15 tests notebooks $(NBVAL)

test-unit: $(STAMP)
	$(PY) -m pytest -q -ra tests

test-notebooks: $(STAMP)
	$(PY) -m pytest -q -ra notebooks $(NBVAL)

notebooks: $(STAMP)
	$(PY) tools/execute_notebook.py notebooks/*.ipynb

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf artifacts runs results/*/figures results/quick benchmarks/out .pytest_cache build dist *.egg-info
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
	find notebooks -name .ipynb_checkpoints -prune -exec rm -rf {} +
