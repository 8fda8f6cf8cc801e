# Set-up is part of every target: a fresh clone needs only python3, pip and make.
SHELL := /bin/bash
PYTHON ?= python3
UV := $(PYTHON) -m uv
VENV := .venv
RUN := $(VENV)/bin/python
STORE := sqlite:///$(CURDIR)/mlruns/mlflow.db
PORT ?= 5000
SERVER_PORT ?= 5050

.PHONY: setup train test sweep bench ui server slurm lint clean

setup: $(VENV)/.installed

# uv installs the locked stack (uv.lock); bytecode is compiled once here so that every
# later start of Python is fast even where PYTHONDONTWRITEBYTECODE is set.
$(VENV)/.installed: pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv \
		|| $(PYTHON) -m pip install --quiet --user --break-system-packages uv
	$(UV) sync --frozen --compile-bytecode
	@touch $@

train: setup
	$(RUN) train.py $(ARGS)

# One pytest worker per core (pytest-xdist); a test file's tests stay on one worker, so that
# its module fixtures (one training run read by several tests) are made once.
test: setup
	$(RUN) -m pytest -n auto --dist loadfile $(ARGS)

sweep: setup
	$(RUN) train.py -m experiment=optimizer_comparison $(ARGS)

bench: setup
	$(RUN) scripts/bench.py $(ARGS)

# One worker and no job runner (MLflow's GenAI jobs): a UI for one person starts in seconds.
# Its first line is the address of the training runs (MLflow 3 opens an experiment on GenAI's
# Overview tab, empty here): pipeline/cli/ui.py.
ui: setup
	@$(RUN) -m pipeline.cli.ui --store $(STORE) --port $(PORT)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui --backend-store-uri $(STORE) \
		--host 127.0.0.1 --port $(PORT) --workers 1

# A shared tracking server: PostgreSQL + artifacts through the server, on 127.0.0.1 (docs/tracking-server.md).
server: setup
	$(RUN) scripts/server.py --port $(SERVER_PORT) $(ARGS)

# A one-node SLURM cluster on this machine, as root (docs/slurm.md): make slurm, make slurm
# ARGS=stop, make slurm ARGS=status. System daemons only: no Python set-up needed.
slurm:
	bash scripts/slurm.sh $(or $(ARGS),start)

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf outputs .pytest_cache
