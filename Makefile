# Every target installs what it needs first (packaging/setup.sh is idempotent).
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

setup $(STAMP): pyproject.toml packaging/setup.sh
	@bash packaging/setup.sh

demo: $(STAMP)
	@$(PY) -m scope_ebpf.demo

test: $(STAMP)
	@$(PY) -m ruff check scope_ebpf tests
	@$(PY) -m pytest -q tests

lint: $(STAMP)
	@$(PY) -m ruff check scope_ebpf tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache scope-demo
