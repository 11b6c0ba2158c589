# Two commands do all the set-up on a fresh clone:
#   make demo   - create .venv if missing, then run the main job
#   make test   - create .venv if missing, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/bastion verify
	$(BIN)/bastion strategies

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check core plugins tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) *.egg-info .bastion
