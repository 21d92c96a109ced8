# Reproducible compendium of He et al. 2024. Two commands on a fresh machine:
#   make paper   - build the virtualenv from requirements.lock (first use only), compute, render
#   make test    - lint and the test suite (what CI runs through .ci/run)
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTHON := $(BIN)/python
RUN := $(PYTHON) -m analysis

.DEFAULT_GOAL := help
.PHONY: help venv results paper test lint validate bench nightly regen lock clean clean-venv archive verify

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(PYTHON):
	$(PY) -m venv $(VENV)

$(STAMP): requirements.lock pyproject.toml | $(PYTHON)
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(PYTHON) -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $@

venv: $(STAMP) ## create .venv from the lock file (done automatically on first use)

results: $(STAMP) ## compute every stage into results/ (valid cached stages are reused)
	$(RUN) run

paper: results ## compute and render the manuscript into _manuscript/ (Quarto if installed, else pandoc + Typst)
	$(RUN) render

test: $(STAMP) ## lint and run the test suite (no Quarto, no network)
	$(BIN)/ruff check analysis tests
	$(BIN)/pytest

validate: $(STAMP) ## engine validation (public SDM-PSI run, simulations); manuscript in headless Chromium (slow)
	@# validate-sdm runs inside tests/test_sdm_validation.py (with its floors), once
	$(BIN)/pytest -m slow -p no:cacheprovider

bench: $(STAMP) ## speed and memory benchmarks, as ratios measured in the same run
	$(RUN) bench
	$(BIN)/pytest -m bench -s

nightly: validate bench ## everything heavy

regen: $(STAMP) ## regenerate the golden files on purpose (explain why in the commit)
	@# Pass 1 rewrites the golden files; pytest-regressions fails every test whose file it
	@# rewrote or created, so pass 1 may fail, but only for that reason: any other failure
	@# (or an error, an interruption) stops here with pass 1's output. Pass 2 must pass.
	@log=$$(mktemp); \
	COLUMNS=1000 $(BIN)/pytest --force-regen -p no:cacheprovider -q -rfE --tb=short > $$log 2>&1; rc=$$?; \
	other=$$(grep -E '^(FAILED|ERROR) ' $$log | grep -v -e 'Files differ and --force-regen set' \
	  -e 'File not found in data directory, created'); \
	if [ $$rc -gt 1 ] || { [ $$rc -eq 1 ] && [ -n "$$other" ]; }; then \
	  cat $$log; rm -f $$log; \
	  echo "make regen: pass 1 failed (exit $$rc) for another reason than a rewritten golden file"; \
	  [ -z "$$other" ] || echo "$$other"; exit 1; \
	fi; \
	grep -E '^FAILED ' $$log | sed 's/ - .*//; s/^FAILED/rewrote the golden file of/'; rm -f $$log
	$(BIN)/pytest
	@echo "golden files regenerated: review 'git diff tests/' and say why in the commit"

lock: $(STAMP) ## re-resolve requirements.in into the hashed requirements.lock
	$(BIN)/pip install --quiet uv
	$(BIN)/uv pip compile requirements.in --generate-hashes --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 -o requirements.lock

archive: $(STAMP) ## deterministic zip in dist/ (source, datasets, results, manuscript, RO-Crate); clean tree only
	$(RUN) archive

verify: $(STAMP) ## rebuild ARCHIVE=dist/....zip offline and compare its results (VERIFY_FLAGS=--quick ...)
	@test -n "$(ARCHIVE)" || { echo "usage: make verify ARCHIVE=dist/painemp-compendium-<version>.zip"; exit 2; }
	$(RUN) verify $(VERIFY_FLAGS) --python $(PYTHON) $(ARCHIVE)

clean: ## remove generated results and the rendered manuscript
	rm -rf results _manuscript

clean-venv: ## remove the virtualenv
	rm -rf $(VENV)
