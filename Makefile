# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PORT   ?= 8080

.PHONY: demo test lint typecheck pytest system-deps asterisk hosts venv bench bench-quick lock clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[widget,dev]'
	touch $@

venv: $(VENV)/.installed

system-deps:
	scripts/system-deps.sh

# Debian's Asterisk 16 and 22 for the real-Asterisk tests and benchmarks, debootstrapped
# once into $$MOR_TEST_CACHE (default /var/cache/mor-regstatus-tests) and reused.
asterisk: system-deps
	$(PYTHON) -m testbed.asterisk build 16 22

# Debian 12 systemd hosts (a bare MOR Asterisk server, a GUI host with Apache and nginx)
# for the Ansible tests over SSH, built once into $$MOR_TEST_CACHE and booted with nspawn.
hosts: system-deps
	$(PYTHON) -m testbed.hosts build collector gui

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check mor_plugin widget tests bench testbed

typecheck: venv
	$(VENV)/bin/mypy

# Two workers, a test file each at a time (a file's tests share their fixtures and run
# in order); TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 2
pytest: venv system-deps asterisk hosts
	$(VENV)/bin/pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: system-deps venv lint typecheck pytest

demo: venv
	$(PY) -m widget.demo --port $(PORT)

# requirements/*.lock: the pinned, hashed dependencies the Ansible roles install
# offline (regenerate after a change of pyproject.toml's dependencies).
lock: venv
	scripts/lock.sh

bench: venv system-deps asterisk
	$(PY) -m bench

bench-quick: venv system-deps
	$(PY) -m bench --quick

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache artifacts
