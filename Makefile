# The two commands: `make demo` and `make test`. Both call `make setup` first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
JVM := .jvm
BIN := $(VENV)/bin
MVN := mvn -q -B
FASHION := /usr/share/datasets/fashion-mnist

.PHONY: setup debian-packages demo test test-unit test-integration lint bench clean stack-down

setup: $(VENV)/.installed $(JVM)/kafka/.fetched $(JVM)/solr/.fetched $(JVM)/spark/.fetched debian-packages

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

# Debian packages the demo and the tests use: Fashion-MNIST (real training data), kcat (an
# independent Kafka client), docker-compose (validates docker-compose.yml without an engine),
# chromium + chromium-driver (the web app's real-browser tests, through Selenium).
# Installed only when missing, and only when we may (root with apt).
DEB_PACKAGES := dataset-fashion-mnist:$(FASHION) kcat:/usr/bin/kcat docker-compose:/usr/bin/docker-compose \
	chromium:/usr/bin/chromium chromium-driver:/usr/bin/chromedriver
debian-packages:
	@missing=""; for entry in $(DEB_PACKAGES); do \
	  [ -e "$${entry#*:}" ] || missing="$$missing $${entry%%:*}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "setup: apt-get install$$missing"; \
	    apt-get install -y -q $$missing >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $$missing >/dev/null; } || \
	    echo "setup: could not install$$missing (the tests that need them will say so)"; \
	  else echo "setup: missing Debian packages:$$missing (install them as root)"; fi; \
	fi

demo: setup
	$(BIN)/python -m imagetag.demo

test: setup
	$(BIN)/python -m pytest tests/unit -q
	$(BIN)/python -m pytest tests/integration tests/e2e -q --durations=15

test-unit: setup
	$(BIN)/python -m pytest tests/unit -q

# lint-imports: the layer contract in pyproject.toml ([tool.importlinter]); no cache folder.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy imagetag producers streaming batch bench tests
	$(BIN)/lint-imports --no-cache

bench: setup
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

stack-down:
	-$(BIN)/imagetag stack down

clean: stack-down
	rm -rf $(VENV) $(JVM) .stack .pytest_cache .mypy_cache .ruff_cache
