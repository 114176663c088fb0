# The two commands of README.rst: `make demo` (set up, run the main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CODE   := relayd migrations tests $(wildcard benchmarks)

.PHONY: demo test lint setup clean man

$(BIN)/relayd-sendmail: pyproject.toml
	@# relayd/migrations/ moved to migrations/: bytecode left in a checkout from before the move
	@# would make relayd/migrations a namespace package that hides the installed mapping.
	rm -rf relayd/migrations/__pycache__ relayd/migrations/versions/__pycache__
	rmdir relayd/migrations/versions relayd/migrations 2>/dev/null || true
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(BIN)/relayd-sendmail

demo: setup
	$(BIN)/python -m relayd.cli.demo

lint: setup
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)
	$(BIN)/mypy $(CODE)

test: lint
	$(BIN)/pytest -q

# relayd.toml(5), from CONFIGURATION.rst (docutils, a dev dependency): man -l man/relayd.toml.5
man: man/relayd.toml.5

man/relayd.toml.5: man/relayd.toml.5.rst CONFIGURATION.rst setup
	$(BIN)/python -m docutils --writer=manpage --halt=warning $< $@

clean:
	rm -f man/relayd.toml.5
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
