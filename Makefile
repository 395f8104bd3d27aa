# The two commands: `make demo` and `make test`. Both call `make setup` first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
JVM := .jvm
BIN := $(VENV)/bin
MVN := mvn -q -B
FASHION := /usr/share/datasets/fashion-mnist

.PHONY: setup demo test test-unit test-integration lint bench clean stack-down

setup: $(VENV)/.installed $(JVM)/kafka/.fetched $(JVM)/solr/.fetched $(JVM)/spark/.fetched dataset

# Reinstalls only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "setup: $(PYTHON) not found"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

# Each JVM service gets its own folder (own classpath); re-fetched only when its pom changes.
$(JVM)/%/.fetched: jvm/%/pom.xml
	@command -v mvn >/dev/null || { echo "setup: mvn (Maven) not found"; exit 1; }
	@rm -rf $(JVM)/$*
	cd jvm/$* && $(MVN) dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=$(CURDIR)/$(JVM)/$*
	@touch $@

# Debian's Fashion-MNIST (real data for training and the demo), when we may install it.
dataset:
	@if [ ! -d $(FASHION) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "setup: installing dataset-fashion-mnist"; \
	  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; } || \
	  echo "setup: could not install dataset-fashion-mnist (training on it will be skipped)"; \
	fi

demo: setup
	$(BIN)/python -m imagetag.demo

test: setup
	$(BIN)/python -m pytest tests/unit -q
	$(BIN)/python -m pytest tests/integration tests/e2e -q

test-unit: setup
	$(BIN)/python -m pytest tests/unit -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy imagetag producers streaming batch bench tests

bench: setup
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

stack-down:
	-$(BIN)/imagetag stack down

clean: stack-down
	rm -rf $(VENV) $(JVM) .stack .pytest_cache .mypy_cache .ruff_cache
