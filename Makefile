# The two commands a newcomer needs: `make up` and `make test`. Everything else is for developers.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: up test unit lint typecheck proto bench drill clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

## Bring a complete local TDN up on its embedded defaults; Ctrl-C stops it.
up: $(STAMP)
	$(BIN)/tdn up

## Lint, type-check and run every test (unit, integration with real etcd/Toxiproxy, end to end).
test: $(STAMP) lint typecheck
	$(BIN)/python -m pytest -q -p no:cacheprovider

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

lint: $(STAMP)
	$(BIN)/ruff check .

# mypy cannot follow setuptools' folder mapping (topology/ -> tdn.topology), so it checks a
# tree of symlinks laid out as the installed package is.
typecheck: $(STAMP)
	rm -rf .build/typecheck && mkdir -p .build/typecheck
	cp -rs $(CURDIR)/tdn .build/typecheck/tdn
	for d in topology controlplane dataplane chaos; do cp -rs $(CURDIR)/$$d .build/typecheck/tdn/$$d; done
	cd .build/typecheck && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p tdn

## Regenerate tdn/v1 from proto/tdn/v1 (a unit test fails when they differ).
proto: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH scripts/gen_proto.sh

## Print benchmark figures and record them in docs/benchmarks.md (never part of make test).
# The data-plane benchmark drives wrk and compares with HAProxy (Debian packages, installed here
# when missing and root); LiteLLM installs itself into ~/.cache/tdn/bench-litellm on first use.
bench: $(STAMP)
	@if ! command -v wrk >/dev/null 2>&1 || ! command -v haproxy >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk haproxy; \
	  else echo "bench: install wrk and haproxy (Debian: apt-get install wrk haproxy)"; fi; \
	fi
	$(BIN)/python -m bench

## Run every built-in failover drill, full length, against a local TDN behind Toxiproxy; reports
## (JSON, Markdown, SVG) go to .tdn/drills/<time>/, and a failed expectation fails the target.
drill: $(STAMP)
	$(BIN)/tdn drill run --all

clean:
	rm -rf .build build *.egg-info test-artifacts .tdn
