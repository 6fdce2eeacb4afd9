# recbench developer commands. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build of PyTorch by default; GPU users: make install TORCH="torch --index-url https://download.pytorch.org/whl/cu128"
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
ARGS ?=
# bench-ttq-recbole: RecBole (not a recbench dependency) lives in its own venv that also sees .venv's packages
EXT_VENV ?= .venv-ext
EXT_STAMP := $(EXT_VENV)/.installed
RECBOLE ?= recbole==1.2.1

.DEFAULT_GOAL := help
.PHONY: help install run test test-slow lint format mlflow-ui bench bench-method-cost bench-crossover bench-ttq bench-ttq-recbole reproduce-small clean

help: ## list the commands
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install recbench with its dev tools (CPU PyTorch by default)

run: $(STAMP) ## run the main job on the defaults (synthetic data, GMF, full embeddings); ARGS="..." adds overrides
	$(PY) -m recbench.run $(ARGS)

test: $(STAMP) ## run the test suite (slow tests excluded)
	$(PY) -m pytest -q $(ARGS)

test-slow: $(STAMP) ## run only the slow tests (real data in RECBENCH_DATA, long trainings)
	$(PY) -m pytest -q -m slow $(ARGS)

lint: $(STAMP) ## check style with ruff (lint rules and formatting)
	$(VENV)/bin/ruff check recbench tests scripts
	$(VENV)/bin/ruff format --check recbench tests scripts

format: $(STAMP) ## format with ruff
	$(VENV)/bin/ruff format recbench tests scripts

mlflow-ui: $(STAMP) ## browse recorded runs at http://127.0.0.1:5000
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/outputs/mlflow.db --host 127.0.0.1 --port 5000

reproduce-small: $(STAMP) ## reduced mgqe_table3 (ml-100k if RECBENCH_DATA has it, else synthetic) + report
	@if [ -f "$${RECBENCH_DATA:-data}/ml-100k/u.data" ]; then DS=ml-100k; else DS=synthetic; \
	  echo "ml-100k not found under $${RECBENCH_DATA:-data}: using the synthetic dataset"; fi; \
	$(PY) -m recbench.run -m +experiment=mgqe_table3_small dataset=$$DS train.progress=false $(ARGS) && \
	$(PY) -m recbench.report --experiment mgqe_table3_small --name mgqe_table3_small --popularity $$DS

bench: $(STAMP) ## training/evaluation throughput table (scripts/bench_throughput.py; ARGS="--help")
	$(PY) scripts/bench_throughput.py $(ARGS)

bench-method-cost: $(STAMP) ## per-method training/eval cost vs full at leaderboard budgets, GMF ml-100k size (scripts/bench_method_cost.py; ARGS="--help")
	OMP_NUM_THREADS=1 $(PY) scripts/bench_method_cost.py --threads 1 $(ARGS)

bench-crossover: $(STAMP) ## dense vs sparse embedding updates across vocabulary sizes (scripts/bench_sparse_crossover.py)
	$(PY) scripts/bench_sparse_crossover.py $(ARGS)

bench-ttq: $(STAMP) ## wall time to reach 95 % of a reference validation NDCG@10 (scripts/bench_time_to_quality.py; ARGS="--help")
	$(PY) scripts/bench_time_to_quality.py $(ARGS)

$(EXT_STAMP): $(STAMP)
	$(PY) -m venv $(EXT_VENV)
	echo "import site; site.addsitedir('$$($(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")')" \
	  > "$$($(EXT_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/recbench_venv.pth"
	$(EXT_VENV)/bin/python -m pip install --quiet $(RECBOLE)
	@touch $(EXT_STAMP)

bench-ttq-recbole: $(EXT_STAMP) ## recbench's GMF against RecBole's on ml-100k, side by side (RecBole goes into .venv-ext only)
	OMP_NUM_THREADS=1 $(EXT_VENV)/bin/python scripts/bench_time_to_quality.py --common "dataset=ml-100k model=gmf" \
	  --variant "recbench=method=full" --external "recbole=ext_recbole:train_gmf" --reference-variant recbole \
	  --fraction 1 --max-epochs 300 --patience 30 --threads 1 --out outputs/bench/ttq_recbole.csv $(ARGS)

clean: ## remove caches and everything under outputs/ (keeps .venv)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache
	find outputs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
