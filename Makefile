# Every entry point a person types. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install run replay-openrtb test test-unit lint worker beat flower web \
	train train-budget weights ope-validate pacing-report bench bench-agents bench-dqn \
	bench-web redis-start redis-stop clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | \
		awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the project with dev tools

run: $(STAMP) ## main job: replay 10,000 OBD requests through the agents (ARGS=...)
	$(VENV)/bin/adorch run $(ARGS)

replay-openrtb: $(STAMP) ## feed the OpenRTB examples through the service
	$(VENV)/bin/adorch replay-openrtb $(ARGS)

test: $(STAMP) ## all tests: unit and integration (real Redis, real workers)
	$(PY) -m pytest $(ARGS)

test-unit: $(STAMP) ## only the tests that need no worker
	$(PY) -m pytest -m "not integration" $(ARGS)

lint: $(STAMP) ## ruff (format and checks) and mypy
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy ad_orchestrator tasks policies rl

worker: $(STAMP) ## a Celery worker for the agents, task events on, metrics on :9808
	$(VENV)/bin/adorch worker $(ARGS)

beat: $(STAMP) ## Celery beat: reservation release and periodic retrain
	$(VENV)/bin/adorch beat $(ARGS)

flower: $(STAMP) ## Flower on the configured broker, basic auth from settings
	$(VENV)/bin/adorch flower $(ARGS)

web: $(STAMP) ## the FastAPI web backend example on 127.0.0.1:8000
	$(PY) -m uvicorn examples.web.app:app --host 127.0.0.1 --port 8000 $(ARGS)

train: $(STAMP) ## train, evaluate off-policy, promote behind the gate (AGENT=content)
	$(VENV)/bin/adorch train --agent $(or $(AGENT),content) $(ARGS)

train-budget: $(STAMP) ## train the Budget pacing DQN and publish it
	$(VENV)/bin/adorch train --agent budget $(ARGS)

weights: $(STAMP) ## list stored weights versions of the learned agents
	$(VENV)/bin/adorch weights list --agent content $(ARGS)
	$(VENV)/bin/adorch weights list --agent budget $(ARGS)

ope-validate: $(STAMP) ## OBP's protocol: estimate BTS from random logs, errors
	$(PY) -m rl.ope_validation $(ARGS)

pacing-report: $(STAMP) ## iPinYou 2997: linear vs PID vs DQN pacing, PNG and tables
	$(PY) -m rl.pacing_report $(ARGS)

bench: $(STAMP) ## decision latency vs the Celery floor, decisions/s by batch size
	$(PY) -m benchmarks.pipeline $(ARGS)

bench-agents: $(STAMP) ## agents' decide() on a 256-request batch, cold and cached
	$(PY) -m benchmarks.agents $(ARGS)

bench-dqn: $(STAMP) ## DQN training throughput vs a plain reference loop
	$(PY) -m benchmarks.dqn_throughput $(ARGS)

bench-web: $(STAMP) ## 1,000 sequential web requests, worker up and down
	$(PY) -m benchmarks.web_latency $(ARGS)

redis-start: $(STAMP) ## start the embedded Redis (used when none answers)
	$(VENV)/bin/adorch redis start

redis-stop: $(STAMP) ## stop the embedded Redis
	$(VENV)/bin/adorch redis stop

clean: ## remove build outputs, caches and artifacts (keeps .venv)
	-$(VENV)/bin/adorch redis stop 2>/dev/null
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache artifacts \
		.adorch
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
