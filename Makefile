# Every target installs what it needs first (packaging/setup.sh is idempotent).
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: setup demo test lint bench clean interpreters install soak

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

# The daemon on this host: unit, commented default config (kept if present), console
# script linked from this checkout's venv (keep the checkout where it is).
install: $(STAMP)
	install -d -m 0755 /etc/scope-ebpf
	install -d -m 0750 /var/lib/scope-ebpf
	test -e /etc/scope-ebpf/config.toml || install -m 0600 packaging/config.toml /etc/scope-ebpf/config.toml
	install -m 0644 packaging/scope-ebpf.service /etc/systemd/system/scope-ebpf.service
	ln -sf $(abspath $(VENV))/bin/scope-ebpf /usr/local/bin/scope-ebpf
	-systemctl daemon-reload 2>/dev/null
	@echo "installed: systemctl enable --now scope-ebpf (edit /etc/scope-ebpf/config.toml first)"

# Minutes of exe-mode tracing under process and thread churn (SOAK_SECONDS=150),
# then the daemon with 200 processes alive and 10 execs/s, SIGKILLed and restarted
# half way (FLEET_SOAK_SECONDS=300): CPU, RSS, fds and kernel map sizes stay flat,
# rows + counted losses = kernel counters; prints the figures, writes soak*.json.
soak: $(STAMP) interpreters
	@SOAK_RESULTS=$(CURDIR)/soak.json FLEET_SOAK_RESULTS=$(CURDIR)/fleet-soak.json \
		$(PY) -m pytest -q -s -m soak tests/test_soak.py tests/test_fleet_soak.py

lint: $(STAMP)
	@$(PY) -m ruff check scope_ebpf tests bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache scope-demo
