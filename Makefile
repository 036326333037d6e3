# digitgen: `make run` trains and reports; `make test` runs the suite. Both install first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DIGITGEN_DATA_SOURCE ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)

.PHONY: install run quick test test-full lint bench clean server serve deploy worker retrain check-data

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

# A first look in about a minute: one epoch on 5,000 images, then the report (artifacts/<run>/report.md).
quick: $(STAMP)
	$(BIN)/digitgen run --epochs 1 --train-limit 5000 --test-limit 1000 --is-samples 10 --quality-samples 1000 $(ARGS)

test: $(STAMP)
	$(BIN)/pytest -q -m "not slow" --durations=15 $(ARGS)

test-full: $(STAMP)
	$(BIN)/pytest -q $(ARGS)

# Speed benchmark beside pytorch/examples (about 8 minutes on 2 cores); writes benchmarks/results.md.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_train.py --write $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# A local Prefect server (API + UI) on loopback; its SQLite database lives under .prefect/.
server: $(STAMP)
	$(BIN)/prefect server start --host 127.0.0.1 --port $(or $(PORT),4200)

# Serve the deployments of prefect.yaml from one process (schedules and triggers included), no worker needed.
serve: $(STAMP)
	PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:$(or $(PORT),4200)/api} $(BIN)/digitgen serve

# Register the deployments on the server, then `make worker` runs them. With DIGITGEN_ALERT_WEBHOOK set, `make deploy`
# and `make serve` also apply the alert automations (failed or crashed runs, rejected models).
deploy: $(STAMP)
	export PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:$(or $(PORT),4200)/api}; \
	$(BIN)/prefect work-pool inspect digitgen-process >/dev/null 2>&1 || $(BIN)/prefect work-pool create digitgen-process --type process; \
	$(BIN)/prefect --no-prompt deploy --all && $(BIN)/digitgen alerts --optional

# Start a deployment now on the server (`make serve` or `make worker` runs it): make retrain ARGS="-p epochs=20"
retrain: $(STAMP)
	PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:$(or $(PORT),4200)/api} $(BIN)/prefect deployment run 'digit-pipeline/retrain' $(ARGS)

check-data: $(STAMP)
	PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:$(or $(PORT),4200)/api} $(BIN)/prefect deployment run 'check-data/check-data' $(ARGS)

worker: $(STAMP)
	PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:$(or $(PORT),4200)/api} $(BIN)/prefect worker start --pool digitgen-process

clean:
	rm -rf $(VENV) .prefect .pytest_cache
