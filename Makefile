# digitgen: `make run` trains and reports; `make test` runs the suite. Both install first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DIGITGEN_DATA_SOURCE ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)

.PHONY: install run quick test test-full lint bench clean server serve deploy worker retrain check-data generate prefect mlflow

# uv (pinned, from PyPI) installs the packages in about 18 s on a 2-core Zen 4 (`make install` 32 s in all), where
# pip took 96 s for the same packages. It reads no pip.conf, so it is handed pip's extra indexes and links (where the
# build machines keep torch's wheels on disk); unsafe-best-match takes the best version found anywhere, as pip does
# (uv then takes the first index's file of it). It compiles no bytecode: compiling all 19,600 installed modules took
# 25 s. Python compiles a module the first time it is imported and keeps the bytecode (the commands here do not pass
# PYTHONDONTWRITEBYTECODE on, which would have every process compile the stack again: about 10 s of a core each), and
# the install imports what the commands use (a third of the modules) in two processes at once: 13 s.
unexport PYTHONDONTWRITEBYTECODE
PIP_SETTING = $$(echo $${PIP_$(1):-$$($(BIN)/pip config get global.$(2) 2>/dev/null)})
UV = UV_EXTRA_INDEX_URL="$(call PIP_SETTING,EXTRA_INDEX_URL,extra-index-url)" \
	UV_FIND_LINKS="$$(echo $(call PIP_SETTING,FIND_LINKS,find-links) | tr ' ' ,)" UV_INDEX_STRATEGY=unsafe-best-match \
	$(BIN)/uv pip install -q --python $(BIN)/python
COMPUTE_SIDE := flows.pipeline, flows.ingest, flows.sweep, tasks.train, tasks.evaluate, tasks.samplers, tasks.latent, \
	tasks.sample, tasks.classifier, tasks.validate, torch._dynamo, torchvision, sklearn
SERVER_SIDE := prefect.server.api.server, mlflow.tracking, great_expectations, pandas, sqlalchemy, alembic

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q uv==0.13.9
	# torch first and pinned: these wheels are on this machine's disk; any other version is a multi-GB download
	$(UV) torch==2.14.1 torchvision==0.29.1
	$(UV) -e '.[dev]'
	$(BIN)/python -c 'import $(COMPUTE_SIDE)' & p=$$!; $(BIN)/python -c 'import $(SERVER_SIDE)' && wait $$p
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/digitgen run $(ARGS)

# A first look in about a minute: one epoch on 5,000 images, then the report (artifacts/<run>/report.md).
quick: $(STAMP)
	$(BIN)/digitgen run --epochs 1 --train-limit 5000 --test-limit 1000 --is-samples 10 --quality-samples 1000 $(ARGS)

# Three pytest workers (pytest-xdist) on two cores, one test module at a time each: many tests wait on processes,
# servers, leases and pollers as much as they compute; a third worker fills those waits (the cores about 90% busy,
# against 2 workers' idle gaps: 814 s against 995 s of pytest on a 2-core Zen 4, 2026-12-04). A fourth only adds
# contention: 584 s against three's 559 s, back to back on a 2-core Zen 4, 2026-12-05.
test: $(STAMP)
	$(BIN)/pytest -q -m "not slow" --durations=15 -n 3 $(ARGS)

test-full: $(STAMP)
	$(BIN)/pytest -q $(ARGS)

# Speed benchmark beside pytorch/examples (about 8 minutes on 2 cores); writes benchmarks/results.md.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_train.py --write $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# A Prefect server (API + UI) on loopback. Its database: SQLite under .prefect/ (the embedded default), or, with
# DB=postgres, the PostgreSQL database that PREFECT_API_DATABASE_CONNECTION_URL names (postgresql+asyncpg://...).
server: $(STAMP)
ifeq ($(DB),postgres)
	@case "$$PREFECT_API_DATABASE_CONNECTION_URL" in postgresql+asyncpg://*) ;; *) echo "make server DB=postgres: set PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://USER:PASSWORD@HOST:5432/DATABASE"; exit 2;; esac
	$(BIN)/prefect server start --host 127.0.0.1 --port $(or $(PORT),4200)
else
	env -u PREFECT_API_DATABASE_CONNECTION_URL $(BIN)/prefect server start --host 127.0.0.1 --port $(or $(PORT),4200)
endif

# Serve the deployments of prefect.yaml from one process (schedules and triggers included), no worker needed.
serve: $(STAMP)
	PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:$(or $(PORT),4200)/api} $(BIN)/digitgen serve

# Register the deployments on the server, then `make worker` (here or on any machine) runs them. Recorded with them:
# where workers clone the code (DIGITGEN_REPO_URL, DIGITGEN_REPO_BRANCH: the checkout's origin and branch, or the
# checkout itself), the absolute data root and output folder every worker shares (DIGITGEN_DATA_ROOT,
# DIGITGEN_OUT), and the team's MLflow server (MLFLOW_TRACKING_URI; unset: <DIGITGEN_OUT>/mlflow.db). Then `digitgen apply`: the global concurrency limits, the crash re-run automation and, with
# DIGITGEN_ALERT_WEBHOOK set, the alerts (failed or crashed runs, rejected models).
deploy: export DIGITGEN_REPO_URL := $(or $(DIGITGEN_REPO_URL),$(shell git remote get-url origin 2>/dev/null),$(CURDIR))
deploy: export DIGITGEN_REPO_BRANCH := $(or $(DIGITGEN_REPO_BRANCH),$(shell git symbolic-ref --short -q HEAD))
deploy: export DIGITGEN_DATA_ROOT := $(abspath $(or $(DIGITGEN_DATA_ROOT),data))
deploy: export DIGITGEN_OUT := $(abspath $(or $(DIGITGEN_OUT),artifacts))
deploy: export MLFLOW_TRACKING_URI := $(MLFLOW_TRACKING_URI)
deploy: $(STAMP)
	@test -n "$$DIGITGEN_REPO_BRANCH" || { echo "make deploy: the checkout is on no branch; set DIGITGEN_REPO_BRANCH"; exit 2; }
	@test -z "$$(git status --porcelain --untracked-files=no 2>/dev/null)" || echo "make deploy: uncommitted changes stay here: workers clone $$DIGITGEN_REPO_URL at $$DIGITGEN_REPO_BRANCH"
	@echo "make deploy: code from $$DIGITGEN_REPO_URL ($$DIGITGEN_REPO_BRANCH); data $$DIGITGEN_DATA_ROOT; runs $$DIGITGEN_OUT"
	export PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:$(or $(PORT),4200)/api}; \
	$(BIN)/prefect work-pool inspect digitgen-process >/dev/null 2>&1 || $(BIN)/prefect work-pool create digitgen-process --type process; \
	$(BIN)/prefect --no-prompt deploy --all && $(BIN)/digitgen apply

# Start a deployment now on the server (`make serve` or `make worker` runs it): make retrain ARGS="-p epochs=20"
retrain: $(STAMP)
	PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:$(or $(PORT),4200)/api} $(BIN)/prefect deployment run 'digit-pipeline/retrain' $(ARGS)

check-data: $(STAMP)
	PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:$(or $(PORT),4200)/api} $(BIN)/prefect deployment run 'check-data/check-data' $(ARGS)

# New images from the champion, drawn on the server: make generate ARGS="-p digit=3 -p n=16"
generate: $(STAMP)
	PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:$(or $(PORT),4200)/api} $(BIN)/prefect deployment run 'generate-digits/generate' $(ARGS)

# Any Prefect command against the project's server and home (.prefect/), as make uses them; a bare `prefect` reads
# ~/.prefect instead: make prefect ARGS="deployment run digit-pipeline/retrain -p resume=/abs/path/artifacts/RUN"
prefect: $(STAMP)
	PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:$(or $(PORT),4200)/api} $(BIN)/prefect $(ARGS)

# MLflow's UI on the runs' local store (<out>/mlflow.db, artifacts in <out>/mlartifacts/): http://127.0.0.1:5000.
# For a team, DB=postgres: `mlflow server` on the PostgreSQL database MLFLOW_BACKEND_STORE_URI names
# (postgresql+psycopg2://USER:PASSWORD@HOST:5432/DATABASE), keeping artifacts in ARTIFACTS (a folder or bucket) and serving
# them to every worker, which then needs only MLFLOW_TRACKING_URI=http://HOST:5000. digitgen runs no MLflow server jobs
# (GenAI scorers, prompt optimization): their consumers, seven processes polling all the time, stay off unless asked for.
MLFLOW_OUT = $(abspath $(or $(DIGITGEN_OUT),artifacts))
mlflow: export MLFLOW_SERVER_ENABLE_JOB_EXECUTION ?= false
mlflow: $(STAMP)
ifeq ($(DB),postgres)
	@case "$$MLFLOW_BACKEND_STORE_URI" in postgresql*) ;; *) echo "make mlflow DB=postgres: set MLFLOW_BACKEND_STORE_URI=postgresql+psycopg2://USER:PASSWORD@HOST:5432/DATABASE"; exit 2;; esac
	$(BIN)/mlflow server --backend-store-uri "$$MLFLOW_BACKEND_STORE_URI" --artifacts-destination $(or $(ARTIFACTS),$(MLFLOW_OUT)/mlartifacts) --host $(or $(HOST),127.0.0.1) --port $(or $(MLFLOW_PORT),5000)
else
	@mkdir -p $(MLFLOW_OUT)
	$(BIN)/mlflow server --backend-store-uri sqlite:///$(MLFLOW_OUT)/mlflow.db --artifacts-destination $(MLFLOW_OUT)/mlartifacts --host 127.0.0.1 --port $(or $(MLFLOW_PORT),5000)
endif

worker: $(STAMP)
	PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:$(or $(PORT),4200)/api} $(BIN)/prefect worker start --pool digitgen-process

clean:
	rm -rf $(VENV) .prefect .pytest_cache
