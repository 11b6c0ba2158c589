# Two commands do all the set-up on a fresh clone:
#   make demo   - create .venv if missing, then run the main job: a backtest of the
#                 signed example strategies on the bundled sample data
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
	$(BIN)/bastion backtest --source csv:sample

# make bench BENCH_ARGS='--rss-20m --repeat 1' adds the 20M-bar peak RSS (minutes);
# vectorbt joins --compare when installed (.venv/bin/pip install vectorbt: heavy, optional).
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python tests/benchmarks/bench_engine.py --all $(BENCH_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# mypy cannot follow setuptools' editable import hook for a renamed package,
# so it reads a symlinked view of the layout (bastion -> core, bastion.plugins -> plugins).
lint: $(STAMP)
	$(BIN)/ruff check core plugins tests
	$(BIN)/ruff format --check core plugins tests
	rm -rf build/typecheck && mkdir -p build/typecheck/bastion
	ln -s $(CURDIR)/core/*.py $(CURDIR)/core/py.typed build/typecheck/bastion/
	ln -s $(CURDIR)/plugins build/typecheck/bastion/plugins
	cd build/typecheck && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p bastion

clean:
	rm -rf $(VENV) *.egg-info .bastion
