# digitgen: `make run` trains and reports; `make test` runs the suite. Both install first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DIGITGEN_DATA_SOURCE ?= $(if $(wildcard ../shared/data/MNIST/raw),$(abspath ../shared/data/MNIST/raw),)

.PHONY: install run test test-full lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: these wheels are on this machine's disk; any other version is a multi-GB download
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/digitgen run $(ARGS)

test: $(STAMP)
	$(BIN)/pytest -q -m "not slow" $(ARGS)

test-full: $(STAMP)
	$(BIN)/pytest -q $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .prefect .pytest_cache
