# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PORT   ?= 8080

.PHONY: demo test lint typecheck pytest system-deps venv bench bench-quick clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[widget,dev]'
	touch $@

venv: $(VENV)/.installed

system-deps:
	scripts/system-deps.sh

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check mor_plugin widget tests bench

typecheck: venv
	$(VENV)/bin/mypy

pytest: venv system-deps
	$(VENV)/bin/pytest

test: system-deps venv lint typecheck pytest

demo: venv
	$(PY) -m widget.demo --port $(PORT)

bench: venv system-deps
	$(PY) -m bench

bench-quick: venv system-deps
	$(PY) -m bench --quick

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache artifacts
