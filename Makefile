# The two commands a newcomer needs: `make up` and `make test`. Everything else is for developers.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: up test unit lint typecheck proto bench clean

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
bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf .build build *.egg-info test-artifacts .tdn
