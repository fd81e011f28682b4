# Every target installs what it needs first (packaging/setup.sh is idempotent).
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: setup demo test lint bench clean interpreters

setup $(STAMP): pyproject.toml packaging/setup.sh
	@bash packaging/setup.sh

demo: $(STAMP)
	@$(PY) -m scope_ebpf.demo

# Debian sid root with python3.13/3.14/3.15 for the version tests (under a minute).
interpreters: $(STAMP)
	@bash packaging/interpreters.sh

test: $(STAMP) interpreters
	@$(PY) -m ruff check scope_ebpf tests bench
	@$(PY) -m pytest -q tests

# scope-ebpf against the uprobe floor and bcc's pythoncalls: prints a table, writes
# bench/results.json (a few minutes; `make bench ARGS=--quick` for a sub-minute check).
bench: $(STAMP)
	@$(PY) bench/bench.py $(ARGS)

lint: $(STAMP)
	@$(PY) -m ruff check scope_ebpf tests bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache scope-demo
