# hybridslm — the two commands a newcomer needs: `make demo` and `make test`.
#
# torch is installed first and pinned, so pip never pulls a multi-GB CUDA build by accident.
# On a CUDA machine choose your own build, e.g.
#   make demo TORCH_SPEC="torch==2.11.0" TORCH_INDEX=https://download.pytorch.org/whl/cu130
PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.hybridslm-core
STAMP_ALL   := $(VENV)/.hybridslm-all
DEMO_OUT    ?= papermill_runs/demo
DEMO_ARGS   ?=
PYTEST_ARGS ?= -q -n 2

.PHONY: install install-all demo test test-nb test-py test-gpu lab export readme clean

# the demo needs the core + papermill; the tests need every optional extra (deepspeed, lm-eval, peft, onnx, server)
install: $(STAMP)
install-all: $(STAMP_ALL)

$(STAMP): settings.ini setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel setuptools
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

$(STAMP_ALL): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[dev,all]"
	touch $(STAMP_ALL)

demo: install
	mkdir -p $(DEMO_OUT)
	$(BIN)/papermill experiments/train.ipynb $(DEMO_OUT)/train.ipynb -k python3 \
	    -p preset demo -p run_name demo -p out_dir $(DEMO_OUT) $(DEMO_ARGS)
	@echo "demo finished: see $(DEMO_OUT)/ (executed notebook, loss.png, metrics.json, checkpoint/)"

test: install-all test-nb test-py

# Tests run two notebooks / two pytest workers at once on a 2-core box: one BLAS/OpenMP thread each, since
# oversubscribed OpenMP threads spin against each other and were measured 10-20x slower here.
TEST_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

test-nb: install-all
	$(TEST_ENV) $(BIN)/nbdev_test --n_workers 2 --timing

test-py: install-all
	$(TEST_ENV) $(BIN)/python -m pytest $(PYTEST_ARGS) tests

# On the GPU machine: run the cells flagged `#| gpu` and `#| slow` as well.
test-gpu:
	nbdev_test --flags "gpu slow" --n_workers 1

# JupyterLab on the project's venv; flags go in LAB_ARGS, e.g. make lab LAB_ARGS="--no-browser --port 8899 --ip 0.0.0.0".
# Jupyter refuses to start as root unless told: inside a container (where one often is root) --allow-root is added.
LAB_ARGS ?=
lab: install
	$(BIN)/python -m pip install -q jupyterlab
	$(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

export: install
	$(BIN)/nbdev_clean && $(BIN)/nbdev_export && $(BIN)/python tools/make_readme.py

readme:
	$(PYTHON) tools/make_readme.py

clean:
	rm -rf $(VENV) _proc _docs build dist *.egg-info
